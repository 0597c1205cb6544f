# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Save a VM's RAM and device state to disk over several channels, and bring
it back (seed 002). The fastest path the host has is chosen and named:

- ``mapped-ram``: raw QEMU, no compression: QEMU writes RAM at fixed offsets
  of one sparse file, over ``channels`` multifd threads (``file:`` URI).
- ``multifd-stream``: raw QEMU with compression: multifd over sockets, one
  file per channel, written by our ChannelSink.
- ``libvirt-sparse``: libvirt's saveParams with parallel channels and the
  sparse (mapped-ram) format.
- ``libvirt-compressed``: libvirt's saveParams with a compressed image format
  (one stream: libvirt compresses through a pipe).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import socket
import subprocess
import tempfile
import threading
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils import migration, save_image
from ansible_collections.vmfleet.kvm.plugins.module_utils.exceptions import (
    CapabilityMissing, ConnectionFailed, InvalidArgument, OperationTimeout, VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.waiter import Deadline

MIB = 1024.0 * 1024.0
LIBVIRT_FORMATS = {'zstd': 'zstd', 'zlib': 'gzip'}


def choose_path(backend, caps, channels, compression, libvirt_parallel=False):
    """(path_used, why) or a clear error when the host cannot do what was asked."""
    if backend == 'libvirt':
        if compression != 'none':
            return 'libvirt-compressed', ("compression asked: libvirt compresses the image in one %s stream "
                                          "(its parallel save needs the uncompressed sparse format)" % compression)
        if not libvirt_parallel:
            raise CapabilityMissing("this libvirt cannot save over parallel channels",
                                    hint="libvirt >= 11.2 and libvirt-python >= 12.1 are needed")
        return 'libvirt-sparse', "no compression: libvirt's sparse (mapped-ram) format over %d channel(s)" % channels
    if compression == 'none' and 'mapped-ram' in caps:
        return 'mapped-ram', "no compression: QEMU writes RAM to one sparse file over %d channel(s)" % channels
    if 'multifd' not in caps:
        raise CapabilityMissing("this QEMU has neither mapped-ram nor multifd", hint="QEMU >= 9.0 is needed")
    why = "compression asked (%s): mapped-ram allows none" % compression if compression != 'none' \
        else "QEMU lacks mapped-ram"
    return 'multifd-stream', why + "; multifd over sockets, one file per channel"


def qemu_argv(pid):
    """The command line of a running QEMU, so restore can start it again."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise VmfleetError("cannot read the command line of QEMU pid %d: %s" % (pid, e.strerror))
    return [a.decode('utf-8', 'surrogateescape') for a in raw.split(b'\0') if a]


def check_relaunchable(vm, argv):
    """A relaunch runs ``argv`` again, so it must name every image the VM
    runs on now. After drive_mirror switched a disk, the command line still
    names the old image: relaunching it would pair this RAM with that disk."""
    text = '\0'.join(argv)
    moved = [d for d in vm.disks() if d.file and d.file.startswith('/') and d.file not in text]
    if moved:
        d = moved[0]
        raise VmfleetError(
            "disk %s of VM '%s' runs on %s, which its QEMU command line does not name (moved by drive_mirror?): "
            "a relaunch from that command line would bring back the old image" % (d.name, vm.name, d.file),
            hint="nothing was touched; restart the VM from a command line that names its current images first")


def qmp_socket_of(argv):
    """The path of the first ``-qmp unix:PATH,...`` monitor in ``argv``."""
    for i, a in enumerate(argv[:-1]):
        if a in ('-qmp', '--qmp') and argv[i + 1].startswith('unix:'):
            return argv[i + 1][len('unix:'):].split(',')[0]
    return None


def incoming_argv(argv):
    """``argv`` with any -incoming replaced by ``-incoming defer``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ('-incoming', '--incoming'):
            skip = True
            continue
        out.append(a)
    return out + ['-incoming', 'defer']


def _rate(nbytes, seconds):
    return round(nbytes / MIB / seconds, 1) if seconds > 0 else None


class Saver(object):
    def __init__(self, module, vm, path, channels, compression, keep_running, verify, timeout):
        self.module = module
        self.vm = vm
        self.path = path
        self.channels = channels
        self.compression = compression
        self.keep_running = keep_running
        self.verify = verify
        self.deadline = Deadline(timeout)
        self.why = None
        self.direct_io = False

    def _log(self, msg):
        if self.module._verbosity >= 3:
            self.module.log('vmfleet.kvm.vm_save: %s' % msg)

    def _progress(self, info):
        ram = info.get('ram', {})
        if ram.get('total'):
            self._log('%s %.0f%% (%d/%d bytes, %s MiB/s)' % (
                info.get('status'), 100.0 * ram.get('transferred', 0) / ram['total'],
                ram.get('transferred', 0), ram['total'], ram.get('mbps', 0) / 8.0))

    # -- raw QEMU --
    def save_qemu(self, path_used):
        vm = self.vm
        pid = vm.pid()
        argv = qemu_argv(pid) if pid else None
        if argv:
            check_relaunchable(vm, argv)
        state = vm.state()
        was_running = state == 'running'
        t0 = time.monotonic()
        stopped_at = None
        partials = []
        sink = None
        try:
            if not self.keep_running and was_running:
                # Paused first, RAM is written once: no dirty pages to send again.
                vm.qmp('stop')
                stopped_at = time.monotonic()
            multifd = self.channels > 1 or path_used == 'multifd-stream'
            caps = {'multifd': multifd}
            if 'mapped-ram' in vm.migrate_caps():
                caps['mapped-ram'] = path_used == 'mapped-ram'
            params = {'multifd-channels': self.channels, 'multifd-compression': self.compression} if multifd else {}
            direct = False
            if path_used == 'mapped-ram':
                tmp = self.path + save_image.PARTIAL
                save_image.create_private(tmp)
                partials.append(tmp)
                # A 4 GiB guest saved in 1.8 s with O_DIRECT and in 4 to 6.5 s through the page cache, where
                # the kernel throttles the writers once dirty pages pile up (1 GiB: no difference).
                direct = multifd and save_image.opens_direct(tmp)
            self.direct_io = migration.configure(vm, caps, params, direct_io=direct)
            if path_used == 'mapped-ram':
                kinds = ['mapped-ram']
                vm.qmp('migrate', uri='file:%s' % tmp)
                info = migration.wait(vm, self.deadline, "saving VM '%s'" % vm.name, self._progress)
            else:
                from ansible_collections.vmfleet.kvm.plugins.module_utils.multifd_stream import ChannelSink
                sockdir = tempfile.mkdtemp(prefix='vmfleet-save-')
                sock = os.path.join(sockdir, 'sink.sock')
                # QEMU opens the main channel plus one per multifd channel.
                sink = ChannelSink(sock, os.path.dirname(self.path), os.path.basename(self.path) + save_image.PARTIAL,
                                   1 + self.channels)
                vm.qmp('migrate', uri='unix:%s' % sock)
                info = migration.wait(vm, self.deadline, "saving VM '%s'" % vm.name, self._progress)
                written = sink.finish(self.deadline.remaining(30.0))
                sink = None
                os.rmdir(sockdir)
                # Keep the channel order QEMU opened them in: main first.
                for i, w in enumerate(written):
                    final = '%s.ch%d%s' % (self.path, i, save_image.PARTIAL)
                    os.rename(w['file'], final)
                    partials.append(final)
                kinds = [w['kind'] for w in written]
            for p in partials:
                durable.fsync_path(p)
            written_at = time.monotonic()
            finals = [p[:-len(save_image.PARTIAL)] for p in partials]
            manifest = self._manifest(path_used, argv, state, info)
            manifest['files'] = save_image.describe_files(partials, kinds, self.verify)
            for f in manifest['files']:
                f['file'] = f['file'][:-len(save_image.PARTIAL)]
            old = [p for p in save_image.existing_files(self.path)
                   if p not in finals and p not in partials and p != save_image.manifest_path(self.path)]
            manifest = save_image.commit(partials, manifest, self.path)
            partials = []
            save_image.remove(old)  # an overwritten image's leftovers, now the new one is whole
        except Exception:
            if sink is not None:
                sink.abort()
            migration.cancel(vm)
            save_image.remove(partials)
            if was_running:
                try:
                    vm.qmp('cont')
                except VmfleetError:
                    pass
            raise
        if self.keep_running:
            if was_running:
                vm.qmp('cont')
            downtime = info.get('downtime')
        else:
            downtime = round((written_at - stopped_at) * 1000.0, 1) if stopped_at else 0
            try:
                vm.qmp('quit')
            except VmfleetError:
                pass  # QEMU closes the monitor as it quits
        return manifest, written_at - t0, downtime

    def _manifest(self, path_used, argv, state, info):
        vm = self.vm
        return dict(vm=dict(name=vm.name, backend=vm.backend,
                            qmp_socket=getattr(vm, 'socket_path', None),
                            uuid=vm.uuid() if vm.backend == 'libvirt' else None,
                            uri=getattr(vm, 'uri', None)),
                    path_used=path_used, why=self.why, channels=self.channels, compression=self.compression,
                    saved_state=state, keep_running=self.keep_running,
                    qemu=dict(argv=argv, version=vm.qemu_version() if vm.backend == 'qemu' else None),
                    ram_bytes=(info or {}).get('ram', {}).get('total'))

    # -- libvirt --
    def save_libvirt(self, path_used):
        import libvirt
        vm = self.vm
        state = vm.state()
        if self.keep_running:
            raise InvalidArgument("keep_running is not available for libvirt domain '%s'" % vm.name,
                                  hint="libvirt's save stops the domain; use vmfleet.kvm.snapshot for a checkpoint "
                                       "that keeps it running")
        tmp = self.path + save_image.PARTIAL
        params = {libvirt.VIR_DOMAIN_SAVE_PARAM_FILE: tmp}
        if path_used == 'libvirt-sparse':
            params[libvirt.VIR_DOMAIN_SAVE_PARAM_IMAGE_FORMAT] = 'sparse'
            params[libvirt.VIR_DOMAIN_SAVE_PARAM_PARALLEL_CHANNELS] = self.channels
        else:
            params[libvirt.VIR_DOMAIN_SAVE_PARAM_IMAGE_FORMAT] = LIBVIRT_FORMATS[self.compression]
        flags = 0
        save_image.remove([tmp])  # an interrupted save's
        if path_used == 'libvirt-sparse' and save_image.opens_direct(tmp, create=True):
            # A domain restored with O_DIRECT (virsh restore --bypass-cache) keeps QEMU's direct-io on, and
            # libvirt 11.3's next save without O_DIRECT crashes QEMU 10.0: the guest is lost. With it the save
            # is safe either way and does not flood the page cache. The price, measured on a 4 GiB guest: the
            # save ~7% slower, a restore through the page cache 4.7 s instead of 3.7 s (with O_DIRECT: 2.5-2.9 s).
            flags |= libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE
        self.direct_io = bool(flags)
        t0 = time.monotonic()
        try:
            run_blocking(lambda: vm.dom.saveParams(params, flags), self.deadline,
                         "saving libvirt domain '%s'" % vm.name, on_timeout=vm.dom.abortJob)
            durable.fsync_path(tmp)  # libvirt leaves the sparse format unflushed
            dt = time.monotonic() - t0
            manifest = self._manifest(path_used, None, state, None)
            manifest['files'] = save_image.describe_files([tmp], [path_used], self.verify)
            manifest['files'][0]['file'] = os.path.basename(self.path)
            manifest = save_image.commit([tmp], manifest, self.path)
        except Exception:
            save_image.remove([tmp])
            raise
        return manifest, dt, round(dt * 1000.0, 1)


def run_blocking(fn, deadline, what, on_timeout=None):
    """Run a blocking libvirt call in a thread so the deadline holds."""
    box = {}

    def target():
        try:
            box['result'] = fn()
        except Exception as e:  # handed to the caller's thread
            box['error'] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(deadline.remaining())
    if t.is_alive():
        if on_timeout:
            try:
                on_timeout()
            except Exception:
                pass
        t.join(60)
        raise OperationTimeout("%s did not finish within %gs%s" % (
            what, deadline.timeout, "; it was aborted" if on_timeout else "; libvirt is still working on it"))
    if 'error' in box:
        e = box['error']
        msg = e.get_error_message() if hasattr(e, 'get_error_message') else str(e)
        raise VmfleetError("%s failed: %s" % (what, msg))
    return box.get('result')


def wait_for_socket(path, proc, deadline, daemonizes=False):
    while not deadline.expired():
        # A daemonizing QEMU's first process exits once the daemon runs.
        if not daemonizes and proc.poll() is not None and not os.path.exists(path):
            raise VmfleetError("the restored QEMU exited (code %s) before opening %s" % (proc.returncode, path))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()
    raise OperationTimeout("the restored QEMU did not open its QMP socket %s in time" % path)


def launch_qemu(argv, log_path):
    """Start QEMU detached from this module: it must outlive the Ansible task."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)
    finally:
        os.close(log)


def socket_alive(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def relaunch_incoming(module, argv, sock, log_path, deadline, load, state):
    """Start QEMU again from ``argv`` with ``-incoming defer``, let ``load(vm)``
    feed it its state, then ``cont`` if ``state`` is running. On any failure
    the new QEMU is stopped: a half-loaded QEMU is no VM."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.qmp_backend import QmpVm
    save_image.remove([sock])  # stale socket file of the QEMU that quit
    proc = launch_qemu(incoming_argv(argv), log_path)
    vm = None
    try:
        wait_for_socket(sock, proc, deadline, daemonizes='-daemonize' in argv)
        vm = QmpVm.open(module, sock, deadline.remaining(5.0))
        load(vm)
        migration.clear_stream_caps(vm)
        if state == 'running':
            vm.qmp('cont')
        return dict(pid=vm.pid(), qmp_socket=sock, state=vm.state())
    except Exception:
        if vm is not None:
            try:
                vm.qmp('quit')
            except VmfleetError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise
    finally:
        if vm is not None:
            vm.close()


# Threads that read a mapped-ram image back, at least. Its layout does not
# depend on how many wrote it, so a 1- or 2-channel image loads as fast as a
# 4-channel one. Measured with a 3 GiB image on this project's 2-core host,
# O_DIRECT: 1 thread 600, 2 threads 950, 4 threads 1800-2200 MiB/s; 8 and 16
# no faster than 4.
LOAD_CHANNELS = 4


def load_channels(manifest, asked=None):
    """How many threads read ``manifest``'s image: ``asked``, or the saved
    count but at least LOAD_CHANNELS. A multifd stream image has one file per
    channel and is read by exactly that many; libvirt reads its compressed
    image as one stream."""
    if manifest['path_used'] not in ('mapped-ram', 'libvirt-sparse'):
        streams = manifest['channels'] if manifest['path_used'] == 'multifd-stream' else 1
        if asked not in (None, streams):
            raise InvalidArgument("the %s image holds %d stream(s) and is read over as many channels, not %d"
                                  % (manifest['path_used'], streams, asked), hint="leave channels unset")
        return streams
    saved = manifest['channels']
    if asked is not None:
        if asked < 1 or asked > 64:
            raise InvalidArgument("channels must be between 1 and 64, not %d" % asked)
        return asked
    return max(saved, LOAD_CHANNELS)


def restore_qemu(module, manifest, path, qmp_socket, state, deadline, channels, direct_io=True):
    """``channels``: as load_channels() decided."""
    argv = manifest['qemu']['argv']
    if not argv:
        raise VmfleetError("the save image %s records no QEMU command line" % path)
    sock = qmp_socket_of(argv)
    if qmp_socket and qmp_socket != sock:
        argv = argv + ['-qmp', 'unix:%s,server=on,wait=off' % qmp_socket]
        sock = qmp_socket
    if not sock:
        raise InvalidArgument("the saved QEMU had no QMP UNIX socket", hint="give qmp_socket for the restored VM")
    if socket_alive(sock):
        raise ConnectionFailed("a QEMU already answers on %s" % sock,
                               hint="stop that VM first; restoring would run the saved VM twice")

    used = {'channels': channels}

    def load(vm):
        multifd = used['channels'] > 1 or manifest['path_used'] == 'multifd-stream'
        caps = {'multifd': multifd}
        if manifest['path_used'] == 'mapped-ram':
            caps['mapped-ram'] = True
        files = save_image.data_files(path, manifest)
        # Measured with a 3 GiB image: 4 threads reading with O_DIRECT straight
        # into guest RAM load ~3x faster than through the page cache.
        direct = direct_io and multifd and manifest['path_used'] == 'mapped-ram' and save_image.opens_direct(files[0])
        params = {'multifd-channels': used['channels'],
                  'multifd-compression': manifest['compression']} if multifd else {}
        used['direct_io'] = migration.configure(vm, caps, params, direct_io=direct)
        t0 = time.monotonic()
        if manifest['path_used'] == 'mapped-ram':
            vm.qmp('migrate-incoming', uri='file:%s' % files[0])
            migration.wait(vm, deadline, "restoring from %s" % path)
        else:
            from ansible_collections.vmfleet.kvm.plugins.module_utils.multifd_stream import ChannelSource
            sockdir = tempfile.mkdtemp(prefix='vmfleet-restore-')
            insock = os.path.join(sockdir, 'in.sock')
            try:
                vm.qmp('migrate-incoming', uri='unix:%s' % insock)
                source = ChannelSource(files, insock)
                migration.wait(vm, deadline, "restoring from %s" % path)
                source.finish(deadline.remaining(30.0))
            finally:
                save_image.remove([insock])
                os.rmdir(sockdir)
        used['load_s'] = round(time.monotonic() - t0, 3)

    restored = relaunch_incoming(module, argv, sock, path + '.restore.log', deadline, load, state)
    return dict(restored, direct_io=used['direct_io'], load_s=used['load_s'], channels=used['channels'])
