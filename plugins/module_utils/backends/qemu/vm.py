# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The raw QEMU backend: a VM that no libvirt manages and only its QMP
socket reaches. Every step that differs from libvirt is a method here:
saving through QEMU's migration to files, restoring and reverting by
relaunching the recorded command line, the mirror driver."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import capabilities
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import guest_agent
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import memory_load
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import qemu_img
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import qmp_migration as migration
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk, ImageSnapshot
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.vm_handle import VmHandle
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.qmp_client import (
    HAS_QMP, QMP_IMPORT_ERROR, QmpClient,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    CapabilityMissing, ConnectionFailed, InvalidArgument, OperationTimeout, VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qmp_jobs import mirror_job_id
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline

# a guest agent answers at once when it runs; a thaw (no flush) is quick too
AGENT_CHECK_S = 10.0
AGENT_THAW_S = 30.0

# QMP RunState -> the state names libvirt users know.
_STATES = {
    'running': 'running', 'paused': 'paused', 'prelaunch': 'paused',
    'inmigrate': 'paused', 'postmigrate': 'paused', 'finish-migrate': 'paused',
    'save-vm': 'paused', 'restore-vm': 'paused', 'suspended': 'paused',
    'shutdown': 'shutoff', 'guest-panicked': 'crashed', 'internal-error': 'crashed',
    'io-error': 'paused', 'watchdog': 'paused', 'debug': 'paused', 'colo': 'running',
}


def choose_save_path(caps, channels, compression):
    """(path_used, why) of a raw QEMU save, or a clear error when this QEMU cannot do it."""
    if compression == 'none' and 'mapped-ram' in caps:
        return 'mapped-ram', "no compression: QEMU writes RAM to one sparse file over %d channel(s)" % channels
    if 'multifd' not in caps:
        raise CapabilityMissing("this QEMU has neither mapped-ram nor multifd", hint="QEMU >= 9.0 is needed")
    why = "compression asked (%s): mapped-ram allows none" % compression if compression != 'none' \
        else "QEMU lacks mapped-ram"
    return 'multifd-stream', why + "; multifd over sockets, one file per channel"


def check_record(record, allow_exec_options):
    """A recorded relaunch (process.relaunch_record, from a trusted manifest) may still run:
    its binary is a QEMU of root's or of its user's, its options run no program. A record
    from before the collection noted the binary and user names the binary by argv[0] and ran as root."""
    argv = record.get('argv') or []
    exe = record.get('exe') or (argv and shutil.which(argv[0])) or (argv and argv[0]) or ''
    proc.check_argv(argv, exe, record.get('uid', 0), allow_exec_options)


def qdev_disk_name(dev):
    """qdev id of the device (``/machine/peripheral/<id>/...``), else the legacy
    drive id, else the node name: the name an operator gave the disk."""
    qdev = dev.get('qdev') or ''
    parts = qdev.strip('/').split('/')
    if len(parts) >= 3 and parts[1] == 'peripheral':
        return parts[2]
    if qdev and not qdev.startswith('/'):
        return qdev
    return dev.get('device') or dev['inserted'].get('node-name')


@contextlib.contextmanager
def lent(path, uid):
    """``path`` (root's image or memory file) readable by the QEMU running as
    ``uid`` while it loads it; root's alone again afterwards."""
    proc.give_to(path, uid)
    try:
        yield
    finally:
        if uid not in (None, os.geteuid()):
            os.chown(path, os.geteuid(), -1)


class QemuVm(VmHandle):
    backend = 'qemu'
    restored_reach = ('pid', 'qmp_socket')

    def __init__(self, module, socket_path, client):
        super(QemuVm, self).__init__(module, None)
        self.socket_path = socket_path
        self.client = client
        self.name = self._vm_name()

    @classmethod
    def open(cls, module, params):
        return cls.connect(module, params['qmp_socket'], params['timeout'])

    @classmethod
    def connect(cls, module, socket_path, timeout):
        if not HAS_QMP:
            from ansible.module_utils.basic import missing_required_lib
            raise CapabilityMissing(missing_required_lib('qemu.qmp'), exception=QMP_IMPORT_ERROR)
        try:
            mode = os.stat(socket_path).st_mode
        except OSError as e:
            raise ConnectionFailed(
                "QMP socket %s does not exist (%s)" % (socket_path, e.strerror),
                hint="check the path and that the QEMU process is running")
        if not stat.S_ISSOCK(mode):
            raise ConnectionFailed("%s is not a UNIX socket" % socket_path,
                                   hint="qmp_socket must be the path given to QEMU's '-qmp unix:PATH,server=on'")
        client = QmpClient('vmfleet').connect(socket_path, min(float(timeout), 30.0))
        return cls(module, socket_path, client)

    def _vm_name(self):
        try:
            name = self.client.execute('query-name').get('name')
        except Exception:
            name = None
        # An unnamed QEMU is known by its socket.
        return name or os.path.basename(self.socket_path)

    def close(self):
        self.client.close()

    def qmp(self, command, _timeout=60.0, **args):
        return self.client.execute(command, args, timeout=_timeout)

    def wait_event(self, timeout):
        return self.client.wait_event(timeout)

    def drain_events(self):
        return self.client.drain_events()

    def identity(self):
        return dict(name=self.name, backend=self.backend, qmp_socket=self.socket_path, uuid=None, uri=None)

    def memory_bytes(self):
        return self.qmp('query-memory-size-summary')['base-memory']

    @classmethod
    def migrator_class(cls):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.migrator import QemuMigrator
        return QemuMigrator

    def connection(self):
        return dict(qmp_socket=self.socket_path)

    def host_facts(self, timeout):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt import vm as libvirt_vm
        return capabilities.host_facts(capabilities.qmp_facts(self.qmp), *libvirt_vm.library_facts())

    def state(self):
        return _STATES.get(self.qmp('query-status')['status'], 'unknown')

    def holds_no_guest(self):
        return self.qmp('query-status')['status'] == 'inmigrate'

    def disks(self):
        out = []
        for dev in self.qmp('query-block'):
            ins = dev.get('inserted')
            if not ins:
                continue
            image = ins.get('image', {})
            out.append(Disk(
                name=qdev_disk_name(dev), node_name=ins.get('node-name'), file=ins.get('file'),
                fmt=ins.get('drv'), virtual_size=image.get('virtual-size'), read_only=ins.get('ro', False),
                snapshots=[ImageSnapshot.from_qemu(s) for s in image.get('snapshots', [])]))
        return out

    def block_jobs(self):
        # QEMU names a blockdev job by its job id, not by the disk: drive_mirror's ids
        # (vmfleet-mirror-<disk>) lead back to the disk, a node or device name is the disk
        names = {}
        for d in self.disks():
            names.update({d.node_name: d.name, d.name: d.name, mirror_job_id(d.name): d.name})
        return [dict(disk=names.get(j.get('device'), j.get('device')), job=j.get('device'), type=j.get('type'),
                     status=j.get('status'), bytes_total=j.get('len'), bytes_done=j.get('offset'),
                     speed=j.get('speed'), ready=j.get('ready'))
                for j in self.qmp('query-block-jobs')]

    def qemu_version(self):
        v = self.qmp('query-version')['qemu']
        return "%d.%d.%d" % (v['major'], v['minor'], v['micro'])

    def pid(self):
        # asked once per connection: each ask is a connection QEMU does not accept while it
        # serves ours, and once its listen backlog is full the next one would wait for good
        if getattr(self, '_pid', None) is None:
            self._pid = proc.peer_pid(self.socket_path)
        return self._pid

    def disk_aliases(self):
        pid = self.pid()
        return proc.disk_aliases(proc.qemu_argv(pid)) if pid else {}

    def mirror_driver(self):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.mirror import QemuMirrorDriver
        return QemuMirrorDriver(self)

    def check_instant_snapshots(self):
        pass

    def guest_agent(self):
        """The client of this VM's guest agent: on ``guest_agent_socket`` when the task gives it,
        else on the socket QEMU's command line connects to the agent's port."""
        if getattr(self, '_agent', None) is None:
            given = (getattr(self.module, 'params', None) or {}).get('guest_agent_socket')
            if given:
                if not os.path.exists(given):
                    raise CapabilityMissing("the QEMU guest agent socket %s of VM '%s' does not exist" % (given, self.name),
                                            hint=guest_agent.HOW_TO_ADD)
                path = given
            else:
                pid = self.pid()
                path = guest_agent.socket_from_argv(proc.qemu_argv(pid)) if pid else None
                if not path:
                    raise CapabilityMissing(
                        "VM '%s' has no QEMU guest agent: its QEMU command line connects no unix socket to a "
                        "virtserialport named %s" % (self.name, guest_agent.PORT_NAME), hint=guest_agent.HOW_TO_ADD)
            self._agent = guest_agent.GuestAgent(path)
        return self._agent

    def check_guest_agent(self):
        agent = self.guest_agent()
        try:
            agent.check(AGENT_CHECK_S)
        except (guest_agent.AgentError, OperationTimeout) as e:
            raise CapabilityMissing("the QEMU guest agent of VM '%s' on %s does not answer: %s"
                                    % (self.name, agent.socket_path, e.msg), hint=guest_agent.HOW_TO_ADD)

    def fs_freeze(self, deadline):
        return self.guest_agent().freeze(deadline.remaining(5.0))

    def fs_thaw(self):
        return self.guest_agent().thaw(AGENT_THAW_S)

    def thaw_spec(self):
        return dict(backend=self.backend, socket=self.guest_agent().socket_path)

    @classmethod
    def thawer(cls, spec):
        agent = guest_agent.GuestAgent(spec['socket'])
        return lambda: agent.thaw(AGENT_THAW_S)

    def owner_uid(self):
        pid = self.pid()
        return proc.process_owner(pid)[0] if pid else None

    def allow_exec_options(self):
        return bool(self.module.params.get('allow_exec_options'))

    def start_memory_write(self, path, fd, was_running):
        # QEMU opens the file itself (the same inode: the caller's lock holds), as its own user
        proc.give_to(path, self.owner_uid())
        self.qmp('migrate', uri='file:%s' % path)

    def relaunchable(self):
        """What a restore or revert starts again (process.relaunch_record: the checked
        command line, binary and user): it must name every image the VM runs on now,
        or the relaunch would pair this RAM with an old disk. None without a process."""
        pid = self.pid()
        if not pid:
            return None
        record = proc.relaunch_record(pid, self.allow_exec_options())
        argv = record['argv']
        moved = proc.moved_disks(argv, self.disks())
        if moved:
            followed = proc.follow_moves(argv, moved)
            if followed is None:
                d = moved[0]
                raise VmfleetError(
                    "disk %s of VM '%s' runs on %s, which its QEMU command line does not name, and the option naming "
                    "its old image was not found: a relaunch from that command line would bring back the old image"
                    % (d.name, self.name, d.file),
                    hint="nothing was touched; restart the VM from a command line that names its current images first")
            # drive_mirror switched these disks: the relaunch names the images they run on now
            record['argv'] = followed
        return record

    def quit(self, timeout=30.0):
        """Make QEMU exit, and wait until it has (killed if it will not)."""
        pid = self.pid()
        try:
            self.qmp('quit')
        except VmfleetError:
            pass  # QEMU closes the monitor as it quits
        self.close()
        self._pid = None
        proc.wait_exit(pid, timeout)

    def relaunch_record(self):
        """What a revert needs to start this QEMU again: its command line (with a QMP socket) and version."""
        record = self.relaunchable()
        if not record or not proc.qmp_socket_of(record['argv']):
            raise InvalidArgument("cannot read the command line and QMP socket of VM '%s' (pid %s)"
                                  % (self.name, self.pid()),
                                  hint="a revert relaunches QEMU with it; run the module on the VM's host")
        return dict(record, version=self.qemu_version())

    def check_relaunch(self, record, what):
        """Before anything stops: ``record`` (relaunch_record) can start this VM again."""
        argv = record['argv']
        sock = proc.qmp_socket_of(argv)
        if sock != self.socket_path:
            raise InvalidArgument("%s was taken of the QEMU on %s, not %s" % (what, sock, self.socket_path),
                                  hint="nothing was changed")
        # the process on the socket now is the QEMU it replaces (not a stand-in) ...
        pid = self.pid()
        if not pid:
            raise InvalidArgument("no process serves %s" % self.socket_path, hint="nothing was changed")
        now = proc.relaunch_record(pid, self.allow_exec_options())
        # ... and the recorded command line may still be run, as the user of the QEMU it replaces
        # (not the one recorded: never with more privilege than the VM has now)
        record.update((k, now[k]) for k in ('uid', 'gid', 'groups'))
        check_record(record, self.allow_exec_options())

    # -- external snapshots: backends/qemu/external_snapshot.py --
    def _external(self, memory_dir=None):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.external_snapshot import QemuExternal
        return QemuExternal(self, memory_dir)

    def external_snapshots(self):
        return self._external().snapshots()

    def check_external_snapshot(self, disks, memory, quiesce):
        self._external().check(disks, memory, quiesce)

    def external_snapshot_create(self, name, disks, overlays, memory, quiesce, memory_dir, deadline):
        return self._external(memory_dir).create(name, disks, overlays, memory, deadline)

    def external_snapshot_revert(self, snap, memory_dir, deadline):
        return self._external(memory_dir).revert(snap, deadline)

    def external_snapshot_delete(self, snap, memory_dir, deadline):
        return self._external(memory_dir).delete(snap, deadline)

    def instant_memory_caps(self):
        # page-addressable: such a snapshot can be reverted with its RAM loaded in the background
        return {memory_load.FORMAT: True} if memory_load.FORMAT in self.migrate_caps() else {}

    def background_load_refusal(self, memory_format):
        if memory_format == memory_load.FORMAT:
            return None
        return ("its memory file is one stream, not page-addressable (mapped-ram)%s"
                % ("" if self.instant_memory_caps() else "; this VM's QEMU lacks mapped-ram (QEMU >= 9.0)"),
                "take the snapshot again")

    def revert_to_memory(self, record, name, images, memory_file, state, deadline, memory_format=None, load='full'):
        """Stop QEMU, apply snapshot ``name`` to each image, relaunch ``record``
        and load ``memory_file``: the VM as it was at the snapshot."""
        self.quit(min(30.0, deadline.remaining(5.0)))
        exited_at = time.monotonic()
        for f in images:
            qemu_img.snapshot(self.module, '-a', name, f,
                              hint="VM '%s' is stopped; its command line is in %s"
                                   % (self.name, manifest_store.manifest_path(memory_file)))
        loaded = {}

        def load_file(vm):
            loaded.update(self.load_memory(vm, memory_file, memory_format, deadline, load, exited_at))
        sock = proc.qmp_socket_of(record['argv'])
        # QEMU's own output, next to its QMP socket: the VM's place, not the snapshot's
        return dict(self.relaunch(self.module, record, sock, sock + '.log', deadline, load_file, state),
                    route='qemu-relaunch', **loaded)

    @staticmethod
    def load_memory(vm, memory_file, memory_format, deadline, load='full', exited_at=None):
        """Feed the memory file (written as ``memory_format``) to ``vm``, a QEMU started
        with ``-incoming defer``; what the load reports for the module's result."""
        if memory_format == memory_load.FORMAT:
            return memory_load.load(vm, memory_file, deadline, load == 'background', exited_at or time.monotonic())
        with lent(memory_file, vm.owner_uid()):
            vm.qmp('migrate-incoming', uri='file:%s' % memory_file)
            migration.wait(vm, deadline, "loading memory file %s" % memory_file)
        return {}

    @classmethod
    def relaunch(cls, module, record, sock, log_path, deadline, load, state, cold=False):
        """Start QEMU again from ``record`` (its argv, binary and user) with ``-incoming defer``, let ``load(vm)``
        feed it its state, then ``cont`` if ``state`` is running. ``cold``: started with ``-S`` instead
        (no state to load: ``load`` prepares it, the guest boots on ``cont``). On any failure
        the new QEMU is stopped: a half-loaded QEMU is no VM. Unless the error says
        ``keep_vm`` (a failed postcopy load): a QEMU waiting for a load is left on
        the socket, so that the revert can run again."""
        argv = record['argv']
        manifest_store.remove([sock])  # stale socket file of the QEMU that quit
        child = proc.launch(proc.cold_argv(argv) if cold else proc.incoming_argv(argv), log_path, record)
        vm = None
        try:
            proc.wait_for_socket(sock, child, deadline, daemonizes='-daemonize' in argv)
            vm = cls.connect(module, sock, deadline.remaining(5.0))
            load(vm)
            migration.clear_stream_caps(vm)
            if state == 'running':
                vm.qmp('cont')
            return dict(pid=vm.pid(), qmp_socket=sock, state=vm.state())
        except Exception as e:
            if getattr(e, 'keep_vm', False):
                cls._waiting_in_place_of(vm.pid() if vm is not None else None, child, record, sock, log_path)
                raise
            if vm is not None:
                try:
                    vm.qmp('quit')
                except VmfleetError:
                    pass
            if child.poll() is None:
                child.kill()
            child.wait()
            raise
        finally:
            if vm is not None:
                vm.close()

    @staticmethod
    def _waiting_in_place_of(pid, child, record, sock, log_path):
        """The guest of a failed postcopy load is frozen for good (pages it never got cannot be
        made up), and its QEMU may never answer QMP again: a vCPU waiting for such a page can
        hold QEMU's big lock (seen under TCG). A QEMU waiting for a load takes its place on the
        same socket, where a revert run again finds the VM."""
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # gone already
        if child.poll() is None:
            child.kill()
        child.wait()
        proc.wait_exit(pid, 30.0)
        manifest_store.remove([sock])
        waiting = proc.launch(proc.incoming_argv(record['argv']), log_path, record)
        proc.wait_for_socket(sock, waiting, Deadline(60.0), daemonizes='-daemonize' in record['argv'])

    # -- save and restore: QEMU's migration to files --
    def save_route(self, channels, compression):
        return choose_save_path(self.migrate_caps(), channels, compression)

    def save(self, saver, path_used):
        record = self.relaunchable()
        uid = record['uid'] if record else None
        state = self.state()
        was_running = state == 'running'
        t0 = time.monotonic()
        stopped_at = None
        partials = []
        sink = None
        try:
            if not saver.keep_running and was_running:
                # Paused first, RAM is written once: no dirty pages to send again.
                self.qmp('stop')
                stopped_at = time.monotonic()
            multifd = saver.channels > 1 or path_used == 'multifd-stream'
            caps = {'multifd': multifd}
            if 'mapped-ram' in self.migrate_caps():
                caps['mapped-ram'] = path_used == 'mapped-ram'
            params = {'multifd-channels': saver.channels, 'multifd-compression': saver.compression} \
                if multifd else {}
            direct = False
            if path_used == 'mapped-ram':
                tmp = saver.path + manifest_store.PARTIAL
                manifest_store.create_private(tmp)
                partials.append(tmp)
                proc.give_to(tmp, uid)  # QEMU opens it as its own user
                # A 4 GiB guest saved in 1.8 s with O_DIRECT and in 4 to 6.5 s through the page cache, where
                # the kernel throttles the writers once dirty pages pile up (1 GiB: no difference).
                direct = multifd and manifest_store.opens_direct(tmp)
            saver.direct_io = migration.configure(self, caps, params, direct_io=direct)
            what = "saving VM '%s'" % self.name
            if path_used == 'mapped-ram':
                kinds = ['mapped-ram']
                self.qmp('migrate', uri='file:%s' % tmp)
                info = migration.wait(self, saver.deadline, what, saver.progress)
            else:
                from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.multifd_stream import ChannelSink
                sockdir = tempfile.mkdtemp(prefix='vmfleet-save-')
                proc.give_to(sockdir, uid)  # QEMU connects as its own user
                sock = os.path.join(sockdir, 'sink.sock')
                # QEMU opens the main channel plus one per multifd channel.
                sink = ChannelSink(sock, os.path.dirname(saver.path),
                                   os.path.basename(saver.path) + manifest_store.PARTIAL, 1 + saver.channels)
                proc.give_to(sock, uid)  # connecting to a socket takes write permission on it
                self.qmp('migrate', uri='unix:%s' % sock)
                info = migration.wait(self, saver.deadline, what, saver.progress)
                written = sink.finish(saver.deadline.remaining(30.0))
                sink = None
                os.rmdir(sockdir)
                # Keep the channel order QEMU opened them in: main first.
                for i, w in enumerate(written):
                    final = '%s.ch%d%s' % (saver.path, i, manifest_store.PARTIAL)
                    os.rename(w['file'], final)
                    partials.append(final)
                kinds = [w['kind'] for w in written]
            for p in partials:
                durable.fsync_path(p)
            written_at = time.monotonic()
            manifest = saver.manifest(path_used, state, info,
                                      qemu=dict(record or dict(argv=None), version=self.qemu_version()))
            manifest = saver.commit(partials, kinds, manifest)
            partials = []
        except Exception:
            if sink is not None:
                sink.abort()
            migration.cancel(self)
            manifest_store.remove(partials)
            if was_running:
                try:
                    self.qmp('cont')
                except VmfleetError:
                    pass
            raise
        if saver.keep_running:
            if was_running:
                self.qmp('cont')
            downtime = info.get('downtime')
        else:
            downtime = round((written_at - stopped_at) * 1000.0, 1) if stopped_at else 0
            try:
                self.qmp('quit')
            except VmfleetError:
                pass  # QEMU closes the monitor as it quits
        return manifest, written_at - t0, downtime

    @classmethod
    def image_streams(cls, manifest):
        # a multifd stream image has one file per channel
        return None if manifest['path_used'] == 'mapped-ram' else manifest['channels']

    @classmethod
    def saved_and_gone(cls, module, saved_vm, params):
        """True when the task names the QEMU ``saved_vm`` records and it no longer runs."""
        sock = params.get('qmp_socket')
        return bool(sock) and saved_vm.get('qmp_socket') == sock and not proc.socket_alive(sock)

    @classmethod
    def running_from(cls, module, manifest, params):
        """The restore ``manifest`` records, when that very QEMU still runs."""
        done = manifest['restored']
        sock = done['qmp_socket']
        if proc.socket_alive(sock) and proc.peer_pid(sock) == done['pid']:
            return done
        return None

    @classmethod
    def restore(cls, module, manifest, path, params, deadline, channels):
        """Relaunch the recorded command line and load the image; ``channels`` as load_channels() decided."""
        record = dict(manifest['qemu'])
        argv = record['argv']
        if not argv:
            raise VmfleetError("the save image %s records no QEMU command line" % path)
        check_record(record, params.get('allow_exec_options'))
        sock = proc.qmp_socket_of(argv)
        if params.get('qmp_socket') and params['qmp_socket'] != sock:
            sock = params['qmp_socket']
            argv = record['argv'] = argv + ['-qmp', 'unix:%s,server=on,wait=off' % sock]
        if not sock:
            raise InvalidArgument("the saved QEMU had no QMP UNIX socket", hint="give qmp_socket for the restored VM")
        if proc.socket_alive(sock):
            raise ConnectionFailed("a QEMU already answers on %s" % sock,
                                   hint="stop that VM first; restoring would run the saved VM twice")
        direct_io = params['direct_io'] is not False
        used = {}

        def load(vm):
            multifd = channels > 1 or manifest['path_used'] == 'multifd-stream'
            caps = {'multifd': multifd}
            if manifest['path_used'] == 'mapped-ram':
                caps['mapped-ram'] = True
            files = manifest_store.data_files(path, manifest)
            # Measured with a 3 GiB image: 4 threads reading with O_DIRECT straight
            # into guest RAM load ~3x faster than through the page cache.
            direct = direct_io and multifd and manifest['path_used'] == 'mapped-ram' and \
                manifest_store.opens_direct(files[0])
            mparams = {'multifd-channels': channels,
                       'multifd-compression': manifest['compression']} if multifd else {}
            used['direct_io'] = migration.configure(vm, caps, mparams, direct_io=direct)
            t0 = time.monotonic()
            if manifest['path_used'] == 'mapped-ram':
                with lent(files[0], record.get('uid')):
                    vm.qmp('migrate-incoming', uri='file:%s' % files[0])
                    migration.wait(vm, deadline, "restoring from %s" % path)
            else:
                from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.multifd_stream import ChannelSource
                sockdir = tempfile.mkdtemp(prefix='vmfleet-restore-')
                proc.give_to(sockdir, record.get('uid'))  # QEMU listens there as its own user
                insock = os.path.join(sockdir, 'in.sock')
                try:
                    vm.qmp('migrate-incoming', uri='unix:%s' % insock)
                    source = ChannelSource(files, insock)
                    migration.wait(vm, deadline, "restoring from %s" % path)
                    source.finish(deadline.remaining(30.0))
                finally:
                    manifest_store.remove([insock])
                    os.rmdir(sockdir)
            used['load_s'] = round(time.monotonic() - t0, 3)

        restored = cls.relaunch(module, record, sock, path + '.restore.log', deadline, load, params['state'])
        return dict(restored, direct_io=used['direct_io'], load_s=used['load_s'], channels=channels)
