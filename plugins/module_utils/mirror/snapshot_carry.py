# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a drive_mirror does with the snapshots of the disk it moves (issue 30): an
external chain's top overlay is copied shallow and its snapshot pointed at the copy;
internal snapshots, which a block copy cannot carry, are refused before anything
changes, or dropped on purpose (``snapshots: drop``)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.journal import same_file
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument, VmfleetError
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.task import snapshot_task


class SnapshotCarry(object):
    """The snapshot steps of mirror.drive_mirror.DriveMirror, which inherits them: they use its
    VM, disk, target, journal, parameters, check mode and action log."""

    def _snapshots_guard(self, job=None):
        """The internal snapshots of the source image cannot ride a block copy
        (the copy carries the active data only): never move them silently.
        Refused before anything changes, naming each one; with snapshots: drop,
        each is deleted from the VM (every disk, libvirt's metadata, an instant
        snapshot's memory file) before the switch, so none is left half."""
        self._external_guard(job)
        held = sorted(set(s.name for s in self.vm.disk(self.disk.name).snapshots))
        if not held:
            return
        if self.p['snapshots'] != 'drop':
            raise InvalidArgument(
                "disk '%s' of VM '%s' holds snapshot%s %s, which a live copy to %s cannot carry (qcow2 internal "
                "snapshots stay in the source image)" % (
                    self.disk.name, self.vm.name, 's' if len(held) > 1 else '', ", ".join("'%s'" % n for n in held),
                    self.target),
                hint=("nothing was changed%s; delete them first (vmfleet.kvm.snapshot state: absent), or set "
                      "snapshots: drop to delete them with the move" % (
                          " (the copy job %s is left running; cancel it with state: cancelled)" % job['id']
                          if job else "")),
                **self._result(self.disk, self.journal, False))
        for name in held:
            self._act('drop_snapshot', name=name)
            if not self.check:
                snapshot_task(self.vm, dict(state='absent', name=name, mode='internal', disks=None, vmstate_disk=None,
                                            memory=True, overwrite=False, memory_dir=self.p['memory_dir'],
                                            load='full', timeout=self.deadline.remaining(1.0)), False)
            self.dropped.append(name)

    def _external_guard(self, job):
        """A disk on the top overlay of an external chain is copied shallow (``sync: top``, as
        ``virsh blockcopy --shallow``): the copy is a new top over the same backing image, which
        stays where it is, and the snapshot is pointed at the copy after the switch (_carry).
        What cannot be carried is refused before anything changes, naming the snapshots."""
        chain = [s for s in self.vm.external_snapshots() if self.disk.name in s['disks']]
        if not chain:
            return
        names = ", ".join("'%s'" % s['name'] for s in chain)
        left = " (the copy job %s is left running; cancel it with state: cancelled)" % job['id'] if job else ""
        what = "disk '%s' of VM '%s' runs on the overlay chain of external snapshot%s %s" % (
            self.disk.name, self.vm.name, 's' if len(chain) > 1 else '', names)
        broken = [s for s in chain if not s.get('consistent', True)]
        if broken:
            raise InvalidArgument(
                "%s; '%s' is inconsistent (%s): it cannot be carried to %s"
                % (what, broken[0]['name'], broken[0].get('problem'), self.target),
                hint="nothing was changed%s; delete it first (vmfleet.kvm.snapshot state: absent)" % left,
                **self._result(self.disk, self.journal, False))
        top = [s for s in chain if same_file(s['overlays'].get(self.disk.name), self.disk.file)]
        if not top:
            raise InvalidArgument(
                "%s, but it runs on %s, which is none of their overlays: only a chain's top overlay can be copied "
                "alone (shallow) with its snapshot pointed at the copy" % (what, self.disk.file),
                hint="nothing was changed%s; delete the snapshots first (vmfleet.kvm.snapshot state: absent commits "
                     "each overlay into the image under it)" % left,
                **self._result(self.disk, self.journal, False))
        fmt = self.p['target_format'] or self.disk.format
        if fmt != 'qcow2':
            raise InvalidArgument(
                "%s: its copy to %s must be a qcow2 image to keep the image under it as its backing file, not %s"
                % (what, self.target, fmt),
                hint="nothing was changed%s; leave target_format unset (or qcow2)" % left,
                **self._result(self.disk, self.journal, False))
        self.sync = 'top'
        self.carrying = top[0]['name']

    def _carry(self, journal):
        """After the switch: the snapshot whose overlay was the source names the copy. Also on a
        re-run (the VM found on the target): a run killed before it did this finishes it here."""
        source = journal.get('source') if journal.exists and same_file(journal.get('target'), self.target) else None
        if not source or self.check:
            return
        try:
            names = self.vm.external_snapshot_moved(self.disk, source, self.target, self.p['memory_dir'])
        except VmfleetError as e:
            raise VmfleetError(
                "disk '%s' of VM '%s' runs on %s, but its external snapshot still names the overlay %s: %s"
                % (self.disk.name, self.vm.name, self.target, source, e.msg),
                hint="re-run to retry; do not remove %s meanwhile" % source,
                **self._result(self.disk, journal, True))
        for name in names:
            self._act('carry_snapshot', name=name, overlay=self.target)
            self.carried.append(name)
