# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""External (overlay) snapshots: each chosen disk, whatever its format (raw
file, block device, qcow2), goes on running on a new qcow2 overlay while the
image under it keeps the snapshot's moment. A revert drops the overlays' writes,
a delete commits them into the image under them. The backend does the work
(libvirt's own external snapshots, or QMP blockdev steps on a raw QEMU); this
file is what both share: names, disks, overlay paths, idempotence, check mode."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    InvalidArgument, SnapshotInconsistent, SnapshotNotFound,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot import quiesce
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.internal import validate_name

KIND = 'external'
OVERLAY_SUFFIX = '.qcow2'


def overlay_path(disk, name, overlay_dir):
    """Where disk ``disk``'s overlay for snapshot ``name`` goes: ``overlay_dir``,
    else the directory of the disk's image; a block device has no directory of
    its own to put a file in, nor has a network disk."""
    base = os.path.basename(disk.file or disk.name)
    stem = base.rsplit('.', 1)[0] if '.' in base else base
    if overlay_dir is None:
        if not disk.file or not os.path.isfile(disk.file):
            raise InvalidArgument(
                "disk '%s' is %s, not a file (a block device?): its overlay needs a directory" % (disk.name, disk.file),
                hint="set overlay_dir to a directory on a filesystem with room for the guest's writes")
        overlay_dir = os.path.dirname(disk.file)
    if not os.path.isdir(overlay_dir):
        raise InvalidArgument("overlay_dir %s is not a directory" % overlay_dir, hint="create it first")
    return os.path.join(overlay_dir, '%s.%s%s' % (stem, name.replace('/', '_'), OVERLAY_SUFFIX))


def select_disks(vm, disks, names):
    """The disks an external snapshot covers: the named ones, else every writable disk."""
    if names:
        out = []
        for n in names:
            d = vm.disk(n, disks)
            if d.read_only:
                raise InvalidArgument("disk '%s' of VM '%s' is read-only" % (d.name, vm.name),
                                      hint="leave it out of 'disks'")
            if d not in out:
                out.append(d)
        return out
    out = [d for d in disks if not d.read_only]
    if not out:
        raise InvalidArgument("VM '%s' has no writable disk to snapshot" % vm.name)
    return out


def find(vm, name):
    for s in vm.external_snapshots():
        if s['name'] == name:
            return s
    return None


class ExternalSnapshots(object):
    """The three operations of mode: external; each returns (module result, snapshot before)."""

    def __init__(self, vm, timeout, memory_dir, overlay_dir=None, quiesce=False, check_mode=False):
        self.vm = vm
        self.deadline = Deadline(timeout)
        self.memory_dir = memory_dir
        self.overlay_dir = overlay_dir
        self.quiesce = quiesce
        self.check_mode = check_mode

    def present(self, name, disk_names, memory, overwrite):
        validate_name(name)
        before = find(self.vm, name)
        result = dict(changed=False, route=None, paused_ms=0, actions=[])
        if before and not overwrite:
            result['snapshot'] = before
            return result, before
        disks = self.vm.disks()
        selected = select_disks(self.vm, disks, disk_names)
        overlays = dict((d.name, overlay_path(d, name, self.overlay_dir)) for d in selected)
        for d, path in ((d, overlays[d.name]) for d in selected):
            if os.path.lexists(path) and not before:
                raise InvalidArgument(
                    "overlay %s for disk '%s' of VM '%s' exists already" % (path, d.name, self.vm.name),
                    hint="nothing was changed; remove it if nothing uses it, or pick another name or overlay_dir")
        memory = bool(memory) and self.vm.is_running()
        # before anything changes: the backend can do it (libvirt version, agent for quiesce, ...)
        self.vm.check_external_snapshot(selected, memory, self.quiesce)
        freeze = quiesce.wanted(self.vm, self.quiesce, memory)
        if before:
            result['actions'].append(dict(action='delete', disks=before['disks']))
        result['actions'].append(dict(action='create', disks=[d.name for d in selected],
                                      overlays=overlays, memory=memory, quiesce=self.quiesce))
        result['changed'] = True
        if self.check_mode:
            result['snapshot'] = dict(name=name, mode=KIND, disks=[d.name for d in selected],
                                      overlays=overlays, memory=memory)
            return result, before
        if before:
            self.vm.external_snapshot_delete(before, self.memory_dir, self.deadline)
        t0 = time.monotonic()
        # a backend whose snapshot freezes by itself (libvirt's QUIESCE flag) is asked to; the others are frozen around it
        with quiesce.quiesced(self.vm, freeze and not self.vm.freezes_in_snapshot, self.deadline) as frozen:
            out = self.vm.external_snapshot_create(name, selected, overlays, memory, freeze and self.vm.freezes_in_snapshot,
                                                   self.memory_dir, self.deadline)
        result.update(out)
        if frozen:
            result['quiesced'] = frozen
        result.setdefault('paused_ms', round((time.monotonic() - t0) * 1000.0, 1))
        result['snapshot'] = find(self.vm, name)
        return result, before

    def absent(self, name):
        validate_name(name)
        before = find(self.vm, name)
        result = dict(changed=False, route=None, actions=[])
        if not before:
            return result, None
        result.update(changed=True, snapshot=before,
                      actions=[dict(action='commit', disks=before['disks'], overlays=before.get('overlays'))])
        if not self.check_mode:
            result.update(self.vm.external_snapshot_delete(before, self.memory_dir, self.deadline) or {})
        return result, before

    def reverted(self, name):
        validate_name(name)
        snap = find(self.vm, name)
        if not snap:
            known = [s['name'] for s in self.vm.external_snapshots()]
            raise SnapshotNotFound("VM '%s' has no external snapshot '%s'" % (self.vm.name, name),
                                   hint="its external snapshots are: %s" % (", ".join(known) or "none"))
        if not snap.get('consistent', True):
            raise SnapshotInconsistent(
                "external snapshot '%s' of VM '%s' is inconsistent: %s" % (name, self.vm.name, snap.get('problem')),
                hint="nothing was changed; it cannot be reverted, remove it (state: absent)")
        result = dict(changed=True, snapshot=snap, route=None, paused_ms=0,
                      actions=[dict(action='revert', disks=snap['disks'])])
        if self.check_mode:
            return result, snap
        result.update(self.vm.external_snapshot_revert(snap, self.memory_dir, self.deadline) or {})
        result['state'] = self.vm.state()
        return result, snap
