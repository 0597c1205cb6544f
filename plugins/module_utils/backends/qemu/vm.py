# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The raw QEMU backend: a VM that no libvirt manages and only its QMP
socket reaches. Every step that differs from libvirt is a method here (or,
for saving to files and restoring them, in save_restore.py): reverting by
relaunching the recorded command line, the guest agent, the mirror driver."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import signal
import stat
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import capabilities
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import guest_agent
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import memory_load
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import qemu_img
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import qmp_migration as migration
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.save_restore import QemuSaveRestore, check_record, load_file
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


class QemuVm(QemuSaveRestore, VmHandle):
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

    def external_snapshot_moved(self, disk, old, new, memory_dir):
        return self._external(memory_dir).moved(disk, old, new)

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
        pages = self.prepare_memory(memory_file, memory_format)
        self.quit(min(30.0, deadline.remaining(5.0)))
        exited_at = time.monotonic()
        for f in images:
            qemu_img.snapshot(self.module, '-a', name, f,
                              hint="VM '%s' is stopped; its command line is in %s"
                                   % (self.name, manifest_store.manifest_path(memory_file)))
        loaded = {}

        def load_state(vm):
            loaded.update(self.load_memory(vm, memory_file, memory_format, deadline, load, exited_at, pages))
        sock = proc.qmp_socket_of(record['argv'])
        # QEMU's own output, next to its QMP socket: the VM's place, not the snapshot's
        return dict(self.relaunch(self.module, record, sock, sock + '.log', deadline, load_state, state),
                    route='qemu-relaunch', **loaded)

    @staticmethod
    def prepare_memory(memory_file, memory_format):
        """Before the VM stops: a mapped-ram memory file read and its page bitmap written, for
        QEMU's own loader (memory_load.fill_bitmap); how many pages hold data. None for a stream."""
        return memory_load.fill_bitmap(memory_file) if memory_format == memory_load.FORMAT else None

    @staticmethod
    def load_memory(vm, memory_file, memory_format, deadline, load='full', exited_at=None, pages=None):
        """Feed the memory file (written as ``memory_format``; prepare_memory called on it, ``pages``
        what it gave) to ``vm``, a QEMU started with ``-incoming defer``; what the load reports for
        the module's result."""
        if memory_format == memory_load.FORMAT and load == 'full':
            return memory_load.load_in_full(vm, memory_file, deadline, pages)
        if memory_format == memory_load.FORMAT:
            return memory_load.load_in_background(vm, memory_file, deadline, exited_at or time.monotonic())
        load_file(vm, memory_file, vm.owner_uid(), deadline, "loading memory file %s" % memory_file)
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
