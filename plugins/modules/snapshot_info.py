#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: snapshot_info
short_description: List the internal snapshots of QEMU/KVM VMs
version_added: 1.0.0
description:
  - Lists the internal snapshots of one VM (O(domain) or O(qmp_socket)) or of every libvirt
    domain on O(uri), read from the disk images themselves, so snapshots made through QEMU's
    snapshot jobs (which libvirt's snapshot list does not show) are listed too.
  - Says for each snapshot which disks hold it, where its RAM state is, and whether it is
    one consistent moment across its disks.
extends_documentation_fragment:
  - vmfleet.kvm.connection
attributes:
  check_mode:
    description: The module never changes anything.
  diff_mode:
    support: none
    description: Nothing to compare.
options:
  name:
    description: Only the snapshot of this exact name.
    type: str
  name_prefix:
    description: Only snapshots whose name starts with this (retention of a role's own snapshots).
    type: str
  memory_dir:
    description:
      - Directory of the memory files and manifests of instant snapshots (see M(vmfleet.kvm.snapshot), option O(vmfleet.kvm.snapshot#module:mode)).
      - Their disk snapshots are listed with RV(snapshots[].mode=instant) and their memory file.
    type: path
    default: /var/lib/vmfleet/snapshots
seealso:
  - module: vmfleet.kvm.snapshot
  - module: vmfleet.kvm.vm_info
'''

EXAMPLES = r'''
- name: Snapshots a role made on every VM of the host, oldest first
  vmfleet.kvm.snapshot_info:
    name_prefix: vmfleet-pre-upgrade-
  register: ours

- name: Is the pre-upgrade snapshot of web01 whole?
  vmfleet.kvm.snapshot_info:
    domain: web01
    name: pre-upgrade
  register: snap
  failed_when: snap.snapshots | length != 1 or not snap.snapshots[0].consistent
'''

RETURN = r'''
snapshots:
  description: One entry per snapshot per VM, oldest first within a VM.
  returned: always
  type: list
  elements: dict
  contains:
    vm:
      description: The VM's name.
      type: str
      sample: web01
    backend:
      description: C(libvirt) or C(qemu).
      type: str
      sample: libvirt
    name:
      description: Snapshot name.
      type: str
      sample: pre-upgrade
    mode:
      description:
        - C(internal) (qcow2 internal snapshot), C(instant) (disk-only internal snapshots plus a memory file) or
          C(external) (qcow2 overlays over the disks' images, plus a memory file when it has RAM state).
      type: str
      sample: internal
    disks:
      description: Disks whose images hold the snapshot.
      type: list
      elements: str
      sample: [vda, vdb]
    vmstate_disk:
      description: Disk holding the RAM state; null for a disk-only snapshot.
      type: str
      sample: vda
    vm_state_size:
      description: Bytes of RAM state saved.
      type: int
      sample: 268435456
    date:
      description: When it was taken (ISO 8601, UTC).
      type: str
      sample: "2026-11-23T10:00:00+00:00"
    vm_clock_sec:
      description: The guest's clock (seconds it had run) at the snapshot.
      type: float
      sample: 812.5
    consistent:
      description:
        - The same moment on every disk that holds it, with RAM state in at most one, and held by every disk it was
          taken on (as libvirt's snapshot metadata or the instant snapshot's manifest recorded them).
        - A snapshot missing on a disk it was taken on (a storage move that carried no snapshot) is not, and cannot be
          reverted (the revert fails before anything stops).
      type: bool
      sample: true
    missing_disks:
      description:
        - Disks the snapshot was taken on whose image no longer holds it; absent when none.
        - Known for snapshots in libvirt's metadata and instant snapshots; a snapshot taken through QEMU's jobs
          records its disks only in the images.
      type: list
      elements: str
      returned: when a disk lost the snapshot
      sample: [vda]
    in_libvirt:
      description: libvirt's snapshot metadata knows it (made through libvirt's API).
      type: bool
      sample: false
    memory_file:
      description: The memory file of an instant snapshot, or of an external snapshot with RAM state (null without).
      type: str
      sample: /var/lib/vmfleet/snapshots/db01.pre-upgrade.vmstate
    overlays:
      description: The qcow2 overlay each disk of an external snapshot runs on since it was taken (disk -> file).
      type: dict
      returned: for external snapshots
      sample: {vda: /var/lib/libvirt/images/db01.pre-upgrade.qcow2}
    bases:
      description: The image under each overlay of an external snapshot (disk -> file), which holds the snapshot's moment.
      type: dict
      returned: for external snapshots
      sample: {vda: /var/lib/libvirt/images/db01.raw}
    parent:
      description: The external snapshot this one was taken on top of (a chain), or null.
      type: str
      returned: for external snapshots
      sample: null
    nvram_copy:
      description: The copy of a UEFI VM's NVRAM an external snapshot keeps, put back on revert (null without).
      type: str
      returned: for external snapshots
      sample: /var/lib/vmfleet/snapshots/db01.pre-upgrade.nvram
    problem:
      description: Why an external snapshot is not consistent.
      type: str
      returned: for an external snapshot that is not consistent
      sample: overlay /var/lib/libvirt/images/db01.pre-upgrade.qcow2 is missing
    paused_ms:
      description: How long the guest was paused when the instant snapshot was taken.
      type: float
      sample: 3.2
error:
  description: The failure's class, one of R(the error classes,ansible_collections.vmfleet.kvm.docsite.error_classes); absent when the failure is a bug.
  returned: failed
  type: str
  sample: VmNotFound
'''

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import backend_of, open_vms
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmGone
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import DEFAULT_MEMORY_DIR
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import run_module, vmfleet_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.listing import list_snapshots


def work(module):
    p = module.params
    snaps = []
    with open_vms(module) as (vms, host):
        for vm in vms:
            try:
                snaps.extend(list_snapshots(vm, p['memory_dir'], p['name'], p['name_prefix']))
            except VmGone:
                if backend_of(p) is not None:
                    raise
    return dict(changed=False, snapshots=snaps)


def main():
    run_module(vmfleet_module(dict(
        name=dict(type='str'),
        name_prefix=dict(type='str'),
        memory_dir=dict(type='path', default=DEFAULT_MEMORY_DIR),
    ), mutually_exclusive=[('name', 'name_prefix')], needs_vm=False), work)


if __name__ == '__main__':
    main()
