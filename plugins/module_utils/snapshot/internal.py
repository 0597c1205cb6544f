# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal (qcow2) snapshots: create, delete, revert, on a running VM through
QEMU's snapshot jobs (seed 000: the caller picks the disks and the disk that
holds the RAM state, so a raw varstore no longer blocks snapshots), through
libvirt's snapshot API where libvirt can do it, and on a shut-off VM with
qemu-img on the images."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import qemu_img
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot import quiesce
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import SNAPSHOT_FORMATS
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    InvalidArgument, JobFailed, OperationTimeout, SnapshotInconsistent, SnapshotNotFound, VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qmp_jobs import (
    paused_ms, start_job, wait_job,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qmp_migration import clear_stream_caps
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline

NAME_MAX = 128
# After a timeout, how long we wait for QEMU's job to end so we can undo it.
UNDO_GRACE_S = 120.0


def validate_name(name):
    if not name or not name.strip():
        raise InvalidArgument("snapshot name is empty", hint="give 'name' a non-empty value")
    if name != name.strip() or len(name) > NAME_MAX or not name.isprintable():
        raise InvalidArgument("snapshot name %r is invalid" % name,
                              hint="use up to %d printable characters, no leading or trailing spaces" % NAME_MAX)
    if name.isdigit():
        # qcow2 looks snapshots up by ID as well as by name: '3' could hit snapshot ID 3.
        raise InvalidArgument("snapshot name %r is all digits" % name,
                              hint="qcow2 would confuse it with a snapshot ID; add a letter")


def select_disks(vm, disks, names, vmstate_name, memory):
    """The disks to snapshot and the one for the RAM state, or a clear error
    before anything is touched."""
    if names:
        selected = []
        for n in names:
            d = vm.disk(n, disks)
            if d.read_only:
                raise InvalidArgument("disk '%s' of VM '%s' is read-only" % (d.name, vm.name),
                                      hint="leave it out of 'disks'")
            if d.format not in SNAPSHOT_FORMATS:
                raise InvalidArgument(
                    "disk '%s' of VM '%s' is %s, which cannot hold internal snapshots" % (d.name, vm.name, d.format),
                    hint="leave it out of 'disks' (the snapshot then does not cover it), or convert it to qcow2")
            if d not in selected:
                selected.append(d)
    else:
        selected = [d for d in disks if d.can_snapshot]
        if not selected:
            raise InvalidArgument("VM '%s' has no writable qcow2 disk to snapshot" % vm.name,
                                  hint="internal snapshots need qcow2 images")
    vmstate = None
    if vmstate_name:
        if not memory:
            raise InvalidArgument("vmstate_disk is set but memory is false",
                                  hint="drop vmstate_disk, or set memory: true")
        vmstate = vm.disk(vmstate_name, disks)
        if vmstate not in selected:
            raise InvalidArgument("vmstate_disk '%s' is not one of the disks being snapshotted (%s)"
                                  % (vmstate.name, ", ".join(d.name for d in selected)),
                                  hint="add it to 'disks' or pick one of those")
    elif memory:
        vmstate = selected[0]
    return selected, vmstate


def _find(vm, name, disks):
    for s in vm.snapshots(disks):
        if s['name'] == name:
            return s
    return None


class Snapshots(object):
    """The three operations; each returns the module result (without diff)."""

    def __init__(self, vm, timeout, check_mode=False, quiesce=False):
        self.vm = vm
        self.deadline = Deadline(timeout)
        self.check_mode = check_mode
        self.quiesce = quiesce

    # -- routes --
    def _running(self):
        return self.vm.is_running()

    def _native_knows(self, name):
        return name in self.vm.native_snapshot_names()

    def _native_revert(self, name):
        """The backend's own revert (libvirt's); its length bounds the guest's pause, in ms."""
        t0 = time.monotonic()
        self.vm.native_snapshot_revert(name)
        return round((time.monotonic() - t0) * 1000.0, 1)

    def _qemu_img(self, action, name, disks):
        for d in disks:
            qemu_img.snapshot(self.vm.module, action, name, d.file)

    def _job(self, command, args, what):
        """Run a snapshot job; return the guest pause in ms (None when unknown)."""
        t0 = time.monotonic()
        job_id = start_job(self.vm, command, args)
        try:
            events = wait_job(self.vm, job_id, self.deadline, what)
        except OperationTimeout as e:
            e.result['job_started'] = job_id
            raise
        measured = paused_ms(events)
        # libvirt's passthrough gives us no events: the job's length bounds the pause.
        return measured if measured is not None else round((time.monotonic() - t0) * 1000.0, 1)

    # -- present --
    def present(self, name, disk_names, vmstate_name, memory, overwrite):
        validate_name(name)
        disks = self.vm.disks()
        selected, vmstate = select_disks(self.vm, disks, disk_names, vmstate_name, memory)
        before = _find(self.vm, name, disks)
        holders = set(before['disks']) if before else set()
        missing = [d.name for d in selected if d.name not in holders]
        result = dict(changed=False, route=None, paused_ms=0, actions=[])
        if before and not missing and not overwrite:
            result['snapshot'] = before
            return result, before
        if before and missing and not overwrite:
            raise SnapshotInconsistent(
                "snapshot '%s' of VM '%s' exists on %s but not on %s" % (
                    name, self.vm.name, ", ".join(sorted(holders)), ", ".join(missing)),
                hint="nothing was changed; delete it (state: absent) or replace it (overwrite: true)")
        running = self._running()
        if not running and memory and not self.vm.offline_snapshots:
            raise InvalidArgument("VM '%s' is not running" % self.vm.name)
        freeze = quiesce.wanted(self.vm, self.quiesce, memory)
        if before:
            result['actions'].append(dict(action='delete', disks=sorted(holders)))
        result['actions'].append(dict(action='create', disks=[d.name for d in selected],
                                      vmstate_disk=vmstate.name if (vmstate and running) else None))
        result['changed'] = True
        if self.check_mode:
            result['snapshot'] = dict(name=name, disks=[d.name for d in selected],
                                      vmstate_disk=vmstate.name if (vmstate and running) else None)
            return result, before
        if before:
            self._delete(name, before, disks)
            disks = self.vm.disks()
        with quiesce.quiesced(self.vm, freeze, self.deadline) as frozen:
            result['route'], result['paused_ms'] = self._create(name, selected, vmstate if running else None, disks)
        if frozen:
            result['quiesced'] = frozen
        result['snapshot'] = _find(self.vm, name, self.vm.disks())
        return result, before

    def _create(self, name, selected, vmstate, all_disks):
        vm = self.vm
        if not self._running():
            self._qemu_img('-c', name, selected)
            return 'qemu-img', 0
        clear_stream_caps(vm)
        writable = [d for d in all_disks if not d.read_only]
        # (not where the backend refuses it beyond the disks' format: libvirt with a UEFI domain's raw
        # NVRAM; QEMU's snapshot-save below leaves the NVRAM out, and its RAM state holds the pflash contents)
        if (vm.native_snapshots and vmstate is not None and set(selected) == set(writable)
                and vmstate is selected[0] and not vm.internal_snapshot_refusal(selected)):
            # every writable disk and the RAM: what libvirt's own snapshot API can take, and list
            t0 = time.monotonic()
            vm.native_snapshot_create(name, [d.name for d in selected])
            return vm.backend, round((time.monotonic() - t0) * 1000.0, 1)
        if vmstate is None:
            # Disk-only, crash-consistent: every disk at one instant, no RAM state.
            t0 = time.monotonic()
            vm.qmp('transaction', actions=[
                {'type': 'blockdev-snapshot-internal-sync', 'data': {'device': d.node_name, 'name': name}}
                for d in selected])
            return 'qmp', round((time.monotonic() - t0) * 1000.0, 1)
        args = {'tag': name, 'vmstate': vmstate.node_name, 'devices': [d.node_name for d in selected]}
        what = "snapshot-save '%s' of VM '%s'" % (name, vm.name)
        if self.deadline.expired():
            raise OperationTimeout("%s did not start: the timeout of %gs ran out first; nothing changed"
                                   % (what, self.deadline.timeout), hint="raise 'timeout'")
        try:
            paused = self._job('snapshot-save', args, what)
        except OperationTimeout as e:
            self._undo_timed_out_save(name, e, e.result.get('job_started'))
            raise
        if self.deadline.expired():
            # QEMU answers no QMP while it saves, so a save can end past the deadline.
            err = OperationTimeout("%s did not finish within %gs" % (what, self.deadline.timeout))
            self._undo_timed_out_save(name, err)
            raise err
        return 'qmp', paused

    def _undo_timed_out_save(self, name, err, job_id=None):
        """A save that outran the timeout must not leave a snapshot behind."""
        if job_id:
            try:
                wait_job(self.vm, job_id, Deadline(UNDO_GRACE_S), 'snapshot-save')
            except VmfleetError:
                pass
        disks = self.vm.disks()
        made = _find(self.vm, name, disks)
        if made:
            self._delete(name, made, disks, deadline=Deadline(UNDO_GRACE_S))
        err.msg += "; the snapshot it was making has been removed, nothing changed"
        err.hint = "raise 'timeout' (the save writes all guest RAM while the guest is paused)"

    # -- absent --
    def absent(self, name):
        validate_name(name)
        disks = self.vm.disks()
        before = _find(self.vm, name, disks)
        result = dict(changed=False, route=None, actions=[])
        if not before:
            if self._native_knows(name) and not self.check_mode:
                self.vm.native_snapshot_delete(name, metadata_only=True)
                result.update(changed=True, route=self.vm.backend)
            return result, None
        result.update(changed=True, snapshot=before, actions=[dict(action='delete', disks=before['disks'])])
        if not self.check_mode:
            result['route'] = self._delete(name, before, disks)
        return result, before

    def _delete(self, name, snap, disks, deadline=None):
        holders = [d for d in disks if d.name in snap['disks']]
        known = self._native_knows(name)
        if known and not snap.get('missing_disks'):
            self.vm.native_snapshot_delete(name)
            return self.vm.backend
        if known:
            # a disk lost it: the backend's delete would fail on that disk; the images that
            # hold it are cleared first, then the backend's record of it
            self._delete_from_images(name, holders, deadline)
            self.vm.native_snapshot_delete(name, metadata_only=True)
            return self.vm.backend
        return self._delete_from_images(name, holders, deadline)

    def _delete_from_images(self, name, holders, deadline):
        if not self._running():
            self._qemu_img('-d', name, holders)
            return 'qemu-img'
        saved, self.deadline = self.deadline, deadline or self.deadline
        try:
            self._job('snapshot-delete', {'tag': name, 'devices': [d.node_name for d in holders]},
                      "snapshot-delete '%s' of VM '%s'" % (name, self.vm.name))
        finally:
            self.deadline = saved
        return 'qmp'

    # -- reverted --
    def reverted(self, name):
        validate_name(name)
        disks = self.vm.disks()
        snap = _find(self.vm, name, disks)
        if not snap:
            known = [s['name'] for s in self.vm.snapshots(disks)]
            raise SnapshotNotFound("VM '%s' has no snapshot '%s'" % (self.vm.name, name),
                                   hint="its snapshots are: %s" % (", ".join(known) or "none"))
        if snap.get('missing_disks'):
            raise SnapshotInconsistent(
                "snapshot '%s' of VM '%s' is missing on disk %s (it was taken on %s): the image there no longer "
                "holds it" % (name, self.vm.name, ", ".join(snap['missing_disks']),
                              ", ".join(sorted(snap['disks'] + snap['missing_disks']))),
                hint="nothing was changed; the snapshot cannot be reverted, remove it (state: absent)")
        if not snap['consistent']:
            raise SnapshotInconsistent(
                "snapshot '%s' of VM '%s' is not one moment across its disks (%s)"
                % (name, self.vm.name, ", ".join(snap['disks'])),
                hint="nothing was changed; revert it disk by disk with qemu-img if you are sure")
        running = self._running()
        if running and not snap['vmstate_disk']:
            raise InvalidArgument(
                "snapshot '%s' of VM '%s' is disk-only and the VM is running" % (name, self.vm.name),
                hint="a disk-only snapshot is reverted offline: shut the VM down, then revert")
        result = dict(changed=True, snapshot=snap, route=None, paused_ms=0,
                      actions=[dict(action='revert', disks=snap['disks'], vmstate_disk=snap['vmstate_disk'])])
        if self.check_mode:
            return result, snap
        holders = [d for d in disks if d.name in snap['disks']]
        if running:
            clear_stream_caps(self.vm)
        if not running:
            self._qemu_img('-a', name, holders)
            result['route'] = 'qemu-img'
        elif self._native_knows(name) and self.vm.native_snapshot_can_revert():
            result.update(route=self.vm.backend, paused_ms=self._native_revert(name))
        else:
            vmstate = self.vm.disk(snap['vmstate_disk'], disks)
            try:
                result['paused_ms'] = self._job('snapshot-load', {
                    'tag': name, 'vmstate': vmstate.node_name, 'devices': [d.node_name for d in holders]},
                    "snapshot-load '%s' of VM '%s'" % (name, self.vm.name))
                result['route'] = 'qmp'
            except JobFailed as e:
                if not self._native_knows(name):
                    raise
                # QEMU 10 refuses the load in a process whose outgoing migration was cancelled mid-stream
                # ("Error -22 while loading VM state"); libvirt's own revert still takes the domain back
                try:
                    took = self._native_revert(name)
                except VmfleetError as again:
                    e.msg += "; libvirt's own revert failed too: %s" % again.msg
                    raise e
                result.update(route=self.vm.backend, paused_ms=took, qmp_refused=e.msg)
        result['state'] = self.vm.state()
        return result, snap
