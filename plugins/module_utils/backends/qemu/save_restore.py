# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Saving a raw QEMU VM to files and restoring it: QEMU's migration to one
mapped-ram file or to one file per multifd channel, and the relaunch of the
recorded command line that loads them again."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import os
import shutil
import tempfile
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import qmp_migration as migration
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing, ConnectionFailed, InvalidArgument, VmfleetError


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


def load_file(vm, path, uid, deadline, what):
    """QEMU's own loader of the migration file ``path`` into ``vm`` (started with -incoming defer,
    its capabilities set), lent to the QEMU's user ``uid`` while it reads; until it is done."""
    with lent(path, uid):
        vm.qmp('migrate-incoming', uri='file:%s' % path)
        migration.wait(vm, deadline, what)


class QemuSaveRestore(object):
    """The save and restore steps of QemuVm (which these methods are part of)."""

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
                load_file(vm, files[0], record.get('uid'), deadline, "restoring from %s" % path)
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
