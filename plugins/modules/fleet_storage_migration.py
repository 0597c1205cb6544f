#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: fleet_storage_migration
short_description: Move the disks of every selected running VM of a hypervisor to new storage, in one task
version_added: 1.0.0
description:
  - Copies the writable file-backed disks of every selected running VM to O(target_dir) with
    M(vmfleet.kvm.drive_mirror)'s engine and switches each VM to its copies while it runs. Read-only
    disks and disks already under O(target_dir) (or outside O(source_dir)) stay where they are.
  - Each VM moves one disk at a time; at most O(concurrency) VMs copy at once, each isolated from the others.
  - Every disk's copy is journaled in O(journal_dir), so a re-run after an interruption carries on.
  - After its copies, each VM's disks are read back and each moved disk is checked to run on its target.
  - Old images are removed only with O(remove_sources=true), and then only the disks whose switch was verified
    (O(verify=true)) and checked to run on the target, and never one that still holds a snapshot or that an external
    snapshot still uses (it is kept and the VM's record says why). The top overlay of an external snapshot chain
    moves with its snapshot (see M(vmfleet.kvm.drive_mirror)), so it is removed; the image under it never is.
  - The role C(vmfleet.kvm.storage_migration) is built on it.
extends_documentation_fragment:
  - vmfleet.kvm.fleet
attributes:
  check_mode:
    description: Predicts each VM's copies; creates no directory and starts no copy.
options:
  target_dir:
    description:
      - Absolute directory the disks move to; each image keeps its file name. Created (0755, so that
        libvirt's QEMU reaches its images) if missing.
    type: path
    required: true
  source_dir:
    description:
      - Only move disks whose image is under this directory. Unset moves every writable file-backed disk
        not already under O(target_dir).
    type: path
  per_vm_dir:
    description:
      - Put each VM's disks in C(<target_dir>/<vm>/). Without it, two disks that would land on the same
        path fail their VMs.
    type: bool
    default: false
  copy_mode:
    description:
      - See M(vmfleet.kvm.drive_mirror).
    type: str
    choices: [background, write-blocking]
    default: write-blocking
  verify:
    description:
      - Compare source and target while the guest is paused, just before each switch.
    type: bool
    default: true
  remove_sources:
    description:
      - Delete each old image whose switch was verified and checked.
    type: bool
    default: false
  journal_dir:
    description:
      - Directory of the per-disk journals; keep it the same across runs.
    type: path
    default: /var/lib/vmfleet/journal
  snapshots:
    description:
      - What happens to snapshots the moved disks hold, which a live copy cannot carry (see
        O(vmfleet.kvm.drive_mirror#module:snapshots)).
      - V(keep) fails the VM before anything of it changes, naming each snapshot; V(drop) deletes them from the VM
        before its disk switches.
      - External snapshots move with the disk whatever this says (their top overlay copied shallow).
    type: str
    choices: [keep, drop]
    default: keep
    version_added: 1.2.0
  memory_dir:
    description:
      - Directory of the instant snapshots' memory files and manifests, for O(snapshots=drop), and of a raw QEMU's
        external snapshot records, pointed at a moved overlay.
    type: path
    default: /var/lib/vmfleet/snapshots
    version_added: 1.2.0
seealso:
  - module: vmfleet.kvm.drive_mirror
  - module: vmfleet.kvm.fleet_progress
  - ref: ansible_collections.vmfleet.kvm.docsite.storage_migration
    description: Moving the disks of running VMs to new storage.
'''

EXAMPLES = r'''
- name: Move every VM off the old array, four VMs at once
  vmfleet.kvm.fleet_storage_migration:
    source_dir: /srv/old
    target_dir: /srv/fast
    per_vm_dir: true
    concurrency: 4
    timeout: 7200
'''

RETURN = r'''
vms:
  description:
    - One record per VM; C(moved) lists each disk copied (C(disk), C(source), C(target), C(changed),
      C(on_target), C(verified), C(bytes_total), C(rate_mib_s), C(paused_ms), C(snapshots_dropped),
      C(snapshots_carried) (the external snapshots whose top overlay moved with the disk), and C(source_kept) when
      O(remove_sources) kept an old image that holds a snapshot or that an external snapshot still uses, saying which);
      C(sources_removed) the images deleted.
    - C(wall_s) is the VM's whole pipeline in seconds; C(started_at) and C(ended_at) when it began and ended (epoch seconds).
  returned: always
  type: list
  elements: dict
  sample:
    - vm: web01
      backend: libvirt
      status: ok
      changed: true
      moved: [{disk: vda, source: /srv/old/web01.qcow2, target: /srv/fast/web01.qcow2, changed: true,
               on_target: true, verified: true, bytes_total: 1073741824, rate_mib_s: 410.2, paused_ms: 35.0}]
      sources_removed: []
      state_before: running
      state_after: running
      wall_s: 3.1
      started_at: 1790000000.125
      ended_at: 1790000001.055
failed_vms:
  description: Names of the VMs that failed; the module fails when there is any.
  returned: always
  type: list
  elements: str
  sample: []
duration_s:
  description: Seconds the whole run took.
  returned: always
  type: float
  sample: 12.5
error:
  description: C(FleetFailed) when some VMs failed (each one's record in RV(vms)), else R(another class,ansible_collections.vmfleet.kvm.docsite.error_classes).
  returned: failed
  type: str
  sample: FleetFailed
'''

from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import workflows as wf
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.run import FleetRun
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import fleet_module, run_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import DEFAULT_MEMORY_DIR


def work(module):
    p = module.params
    run = FleetRun(module, 'storage migration', p)
    targets, records = run.select()
    run.run(wf.plan_moves(targets, p), wf.migrate_storage, records)
    return run.result()


def main():
    run_module(fleet_module(dict(
        target_dir=dict(type='path', required=True),
        source_dir=dict(type='path'),
        per_vm_dir=dict(type='bool', default=False),
        copy_mode=dict(type='str', choices=['background', 'write-blocking'], default='write-blocking'),
        verify=dict(type='bool', default=True),
        remove_sources=dict(type='bool', default=False),
        journal_dir=dict(type='path', default='/var/lib/vmfleet/journal'),
        snapshots=dict(type='str', choices=['keep', 'drop'], default='keep'),
        memory_dir=dict(type='path', default=DEFAULT_MEMORY_DIR),
    )), work)


if __name__ == '__main__':
    main()
