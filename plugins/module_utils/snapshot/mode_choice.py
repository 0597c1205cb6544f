# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mode: auto - which mode a new snapshot of a VM is taken in, and why: internal
where every chosen disk can hold one and the firmware allows it, external
otherwise. Without ``disks`` the chosen disks are those mode: internal takes,
every writable qcow2 disk, so a VM on qcow2 with a raw varstore beside it is
snapshotted as before auto existed (seed 000); a VM with no qcow2 disk at all
gets an external snapshot of every writable disk."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import SNAPSHOT_FORMATS
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.external import KIND as EXTERNAL


def choose_mode(vm, disk_names):
    """(mode, why) for a new snapshot of ``disk_names`` (None: every writable disk)."""
    chain = vm.external_snapshots()
    if chain:
        return EXTERNAL, "the VM runs on the overlays of external snapshot '%s'" % chain[-1]['name']
    disks = vm.disks()
    writable = [d for d in disks if not d.read_only]
    selected = [vm.disk(n, disks) for n in disk_names] if disk_names else [d for d in writable if d.can_snapshot]
    if not selected:
        return EXTERNAL, "no writable disk is qcow2 (%s)" % ", ".join(
            "%s: %s" % (d.name, d.format) for d in writable)
    other = [d for d in selected if d.format not in SNAPSHOT_FORMATS]
    if other:
        return EXTERNAL, "disk %s is %s, which cannot hold internal snapshots" % (other[0].name, other[0].format)
    refusal = vm.internal_snapshot_refusal(selected)
    if refusal:
        return EXTERNAL, refusal
    left = [d.name for d in writable if d not in selected]
    return 'internal', "every chosen disk is qcow2" + (
        " (%s left out, as mode: internal does; name it in disks with mode: external to cover it)"
        % ", ".join(left) if left else "")
