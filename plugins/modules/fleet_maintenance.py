#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: fleet_maintenance
short_description: Save every selected running VM of a hypervisor before maintenance, or restore them after, in one task
version_added: 1.0.0
description:
  - O(phase=save) saves every selected running VM with M(vmfleet.kvm.vm_save)'s engine to
    C(<save_dir>/<vm>.vmstate) (replacing an older image of that VM), and records each VM in
    C(<save_dir>/saved-vms.json) the moment its save is complete, so that a restore finds it whatever happens next.
    VMs an earlier save run recorded and that no longer run are reported as done.
  - O(phase=restore) restores exactly the VMs that record names with M(vmfleet.kvm.vm_restore)'s engine and checks
    each runs; the record then keeps only the VMs still to restore, and is removed once every VM runs again.
  - At most O(concurrency) VMs are saved or restored at once, each isolated from the others.
  - The role C(vmfleet.kvm.host_maintenance) is built on it.
extends_documentation_fragment:
  - vmfleet.kvm.fleet
attributes:
  check_mode:
    description: Predicts each VM's save or restore; writes nothing.
options:
  phase:
    description:
      - V(save) before the maintenance, V(restore) after it.
    type: str
    choices: [save, restore]
    required: true
  save_dir:
    description:
      - Directory of the save images and of C(saved-vms.json) (created 0700 by the save phase).
    type: path
    default: /var/lib/vmfleet/save
  channels:
    description:
      - Parallel channels of each save; see M(vmfleet.kvm.vm_save).
    type: int
    default: 4
  compression:
    description:
      - Compression of each save; see M(vmfleet.kvm.vm_save).
    type: str
    choices: [none, zstd, zlib]
    default: none
  verify:
    description:
      - Checksum each image when saving, and check it before restoring.
    type: bool
    default: true
  direct_io:
    description:
      - See M(vmfleet.kvm.vm_restore); unset lets each restore choose.
    type: bool
seealso:
  - module: vmfleet.kvm.vm_save
  - module: vmfleet.kvm.vm_restore
  - module: vmfleet.kvm.fleet_progress
  - ref: ansible_collections.vmfleet.kvm.docsite.host_maintenance
    description: Saving and restoring the VMs of a host around its maintenance.
'''

EXAMPLES = r'''
- name: Save every running VM before the host reboots
  vmfleet.kvm.fleet_maintenance:
    phase: save
    save_dir: /var/lib/vmfleet/save

- name: Bring them back
  vmfleet.kvm.fleet_maintenance:
    phase: restore
'''

RETURN = r'''
vms:
  description:
    - One record per VM. A save's record has C(image), C(path_used), C(bytes), C(rate_mib_s) and C(downtime_ms);
      a restore's C(image), C(rate_mib_s) and C(duration_s).
  returned: always
  type: list
  elements: dict
  sample:
    - vm: web01
      backend: libvirt
      status: ok
      changed: true
      image: /var/lib/vmfleet/save/web01.vmstate
      path_used: libvirt-sparse
      bytes: 268435456
      rate_mib_s: 1200.5
      downtime_ms: 310.0
      state_before: running
      state_after: shutoff
      wall_s: 0.9
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
  sample: 3.2
error:
  description:
    - When the module failed, the class of the error, for a playbook to branch on without parsing C(msg).
      C(FleetFailed) when some VMs failed (every VM's record is in RV(vms)), C(InvalidArgument) for options it
      cannot work with (an invalid O(name_pattern), O(concurrency) below 1 and the like).
    - Absent from a failure that is a bug of the collection (C(msg) then starts with C(vmfleet.kvm internal error)).
  returned: failed
  type: str
  sample: FleetFailed
'''

import os

from ansible_collections.vmfleet.kvm.plugins.module_utils import fleet_workflows as wf
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import FleetRun
from ansible_collections.vmfleet.kvm.plugins.module_utils.runner import fleet_module, run_module


def work(module):
    p = module.params
    run = FleetRun(module, 'maintenance ' + p['phase'], p)
    if p['phase'] == 'save':
        if not module.check_mode and not os.path.isdir(p['save_dir']):
            os.makedirs(p['save_dir'], 0o700)
        run.saved = wf.SavedVms(p['save_dir'], run.lock)
        targets, records = run.select()
        run.run(targets, wf.save_vm_state, wf.earlier_saves(run.saved, targets, records))
    else:
        saved = wf.SavedVms(p['save_dir'], run.lock)
        run.run(wf.saved_entries_as_targets(saved), wf.restore_vm_state)
        if not module.check_mode:
            saved.keep_only([r['vm'] for r in run.records if r['status'] != 'ok'])
    return run.result()


def main():
    run_module(fleet_module(dict(
        phase=dict(type='str', choices=['save', 'restore'], required=True),
        save_dir=dict(type='path', default='/var/lib/vmfleet/save'),
        channels=dict(type='int', default=4),
        compression=dict(type='str', choices=['none', 'zstd', 'zlib'], default='none'),
        verify=dict(type='bool', default=True),
        direct_io=dict(type='bool'),
    )), work)


if __name__ == '__main__':
    main()
