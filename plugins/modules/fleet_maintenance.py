#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: fleet_maintenance
short_description: Save or evacuate every selected running VM of a hypervisor before maintenance, bring them back after
version_added: 1.0.0
description:
  - O(phase=save) saves every selected running VM with M(vmfleet.kvm.vm_save)'s engine to
    C(<save_dir>/<vm>.vmstate) (replacing an older image of that VM), and records each VM in
    C(<save_dir>/saved-vms.json) the moment its save is complete, so that a restore finds it whatever happens next.
    VMs an earlier save run recorded and that no longer run are reported as done.
  - O(phase=restore) restores exactly the VMs that record names with M(vmfleet.kvm.vm_restore)'s engine and checks
    each runs; the record then keeps only the VMs still to restore, and is removed once every VM runs again.
  - O(phase=evacuate) moves every selected running VM live to another hypervisor of O(destinations)
    (M(vmfleet.kvm.vm_migrate)'s engine) - the largest VM first, each to the destination with the most free
    memory left after O(reserve_mib) (read over SSH from its C(/proc/meminfo) unless given). Each VM is recorded
    in C(<save_dir>/evacuated-vms.json) the moment it runs at its destination. A VM no destination has room
    for, or whose migration failed while it runs on here, is saved instead as O(phase=save) does
    (O(fallback=save)), its record saying why (C(saved_instead) in RV(vms)).
  - O(phase=send_back) runs on a host holding evacuated VMs (delegated to it; a raw QEMU VM can only be moved
    from the host it runs on) and moves the entries of O(evacuated) back home, each under its old QMP socket path.
  - O(phase=return) runs on the evacuated host once the VMs were sent back - each VM of C(evacuated-vms.json)
    must run here again (then the record forgets it), and the VMs the evacuation saved are restored as
    O(phase=restore) does.
  - At most O(concurrency) VMs are saved, restored or moved at once, each isolated from the others.
  - The role C(vmfleet.kvm.host_maintenance) is built on it.
extends_documentation_fragment:
  - vmfleet.kvm.fleet
attributes:
  check_mode:
    description: Predicts each VM's save, restore or move (a move checks its destination); writes nothing.
options:
  phase:
    description:
      - V(save) before the maintenance, V(restore) after it.
      - V(evacuate) before it, then V(send_back) on each host holding its VMs and V(return) on it after.
    type: str
    choices: [save, restore, evacuate, send_back, return]
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
  destinations:
    description:
      - With O(phase=evacuate), the hypervisors the VMs may go to (at least one).
    type: list
    elements: dict
    version_added: 1.1.0
    suboptions: &host
      name:
        description: The host's name (its inventory name, which O(phase=send_back) is delegated to).
        type: str
        required: true
      address:
        description:
          - Its address as this host reaches it, a DNS name or an IPv4/IPv6 address. Default - O(destinations[].name).
        type: str
      user:
        description:
          - The SSH user this host's root reaches it as (see M(vmfleet.kvm.vm_migrate)); a plain user name
            (letters, digits, V(.), V(_), V(-), not starting with V(-)).
        type: str
      libvirt_uri:
        description:
          - Its libvirt URI, for domains, with no query string or fragment. Default - C(qemu+ssh://USER@ADDRESS/system).
        type: str
      ssh_uri:
        description:
          - Its SSH address, for raw QEMU VMs and reading its free memory, with no query string or fragment.
            Default - C(ssh://USER@ADDRESS).
        type: str
      free_mib:
        description: Memory it has free for VMs, in MiB. Default - C(MemAvailable) of its C(/proc/meminfo), over SSH.
        type: int
  home:
    description:
      - With O(phase=evacuate), this host as the destinations reach it, recorded with each VM for
        O(phase=send_back) (its O(home.free_mib) is not used).
    type: dict
    version_added: 1.1.0
    suboptions: *host
  reserve_mib:
    description: Memory in MiB each destination keeps free for itself when VMs are spread over them.
    type: int
    default: 1024
    version_added: 1.1.0
  fallback:
    description:
      - What becomes of a VM that cannot move (no destination with room, or its migration failed and it runs on here).
      - V(save) - it is saved as O(phase=save) does and restored by O(phase=return); V(none) - it fails and keeps running.
    type: str
    choices: [save, none]
    default: save
    version_added: 1.1.0
  destination_qmp_dir:
    description:
      - Directory at the destination of a moved raw QEMU VM's QMP socket (same file name). Default - the socket's own
        directory. It must exist there.
    type: path
    version_added: 1.1.0
  storage:
    description: See M(vmfleet.kvm.vm_migrate).
    type: str
    choices: [shared, copy]
    default: shared
    version_added: 1.1.0
  destination_dir:
    description: See M(vmfleet.kvm.vm_migrate).
    type: path
    version_added: 1.1.0
  bandwidth_mib_s:
    description: See M(vmfleet.kvm.vm_migrate).
    type: int
    default: 0
    version_added: 1.1.0
  max_downtime_ms:
    description: See M(vmfleet.kvm.vm_migrate).
    type: int
    default: 0
    version_added: 1.1.0
  parallel_connections:
    description: See M(vmfleet.kvm.vm_migrate).
    type: int
    default: 1
    version_added: 1.1.0
  auto_converge:
    description: See M(vmfleet.kvm.vm_migrate).
    type: bool
    default: false
    version_added: 1.1.0
  postcopy:
    description: See M(vmfleet.kvm.vm_migrate).
    type: bool
    default: false
    version_added: 1.1.0
  tls:
    description: See M(vmfleet.kvm.vm_migrate).
    type: bool
    default: false
    version_added: 1.2.0
  tls_dir:
    description: See M(vmfleet.kvm.vm_migrate).
    type: path
    version_added: 1.2.0
  evacuated:
    description:
      - With O(phase=send_back), the entries of the evacuated host's C(evacuated-vms.json) whose VMs run on this host.
    type: list
    elements: dict
    default: []
    version_added: 1.1.0
  sent_back:
    description:
      - With O(phase=return), the results of the O(phase=send_back) tasks (a loop's C(results)), for the report
        of a VM that did not come back.
    type: list
    elements: dict
    default: []
    version_added: 1.1.0
seealso:
  - module: vmfleet.kvm.vm_save
  - module: vmfleet.kvm.vm_restore
  - module: vmfleet.kvm.vm_migrate
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

- name: Or move them live to the other hypervisors instead
  vmfleet.kvm.fleet_maintenance:
    phase: evacuate
    home: {name: hv1, address: 192.0.2.11, user: vmfleet}
    destinations:
      - {name: hv2, address: 192.0.2.12, user: vmfleet}
      - {name: hv3, address: 192.0.2.13, user: vmfleet}
    parallel_connections: 2
'''

RETURN = r'''
vms:
  description:
    - One record per VM. A save's record has C(image), C(path_used), C(bytes), C(rate_mib_s) and C(downtime_ms);
      a restore's C(image), C(rate_mib_s) and C(duration_s).
    - A move's (O(phase=evacuate), O(phase=send_back)) has C(destination), and the migration's C(route), C(mode),
      C(why), C(downtime_ms), C(bytes), C(duration_s) and C(rate_mib_s); a VM saved instead has C(saved_instead)
      (why it did not move) and a save's keys.
    - C(wall_s) is the VM's whole pipeline in seconds; C(started_at) and C(ended_at) when it began and ended (epoch seconds).
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
      started_at: 1790000000.125
      ended_at: 1790000001.055
destinations:
  description: With O(phase=evacuate), each destination with the free memory it was found with, or why it took no VM.
  returned: when O(phase=evacuate)
  type: list
  elements: dict
  sample: [{name: hv2, free_mib: 20480, error: null}]
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
  description: C(FleetFailed) when some VMs failed (each one's record in RV(vms)), else R(another class,ansible_collections.vmfleet.kvm.docsite.error_classes).
  returned: failed
  type: str
  sample: FleetFailed
'''

import os

from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import evacuation as ev
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import workflows as wf
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.run import FleetRun
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import fleet_module, run_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.vm_migration import ignore_hangup

HOST = dict(name=dict(type='str', required=True), address=dict(type='str'), user=dict(type='str'),
            libvirt_uri=dict(type='str'), ssh_uri=dict(type='str'), free_mib=dict(type='int'))


def _save_dir(module):
    if not module.check_mode and not os.path.isdir(module.params['save_dir']):
        os.makedirs(module.params['save_dir'], 0o700)


def _not_ok(records):
    return [r['vm'] for r in records if r['status'] != 'ok']


def work(module):
    p = module.params
    phase = p['phase']
    run = FleetRun(module, 'maintenance ' + phase, p)
    if phase == 'save':
        _save_dir(module)
        run.saved = wf.VmsAway(p['save_dir'], run.lock)
        targets, records = run.select()
        run.run(targets, wf.save_vm_state, wf.earlier_saves(run.saved, targets, records))
    elif phase == 'restore':
        saved = wf.VmsAway(p['save_dir'], run.lock)
        run.run(wf.saved_entries_as_targets(saved), wf.restore_vm_state)
        if not module.check_mode:
            saved.keep_only(_not_ok(run.records))
    elif phase == 'evacuate':
        if not p['destinations'] or not p['home']:
            raise InvalidArgument("phase evacuate needs destinations (the hosts the VMs may go to) and home "
                                  "(this host as they reach it)")
        ignore_hangup()
        _save_dir(module)
        run.saved = wf.VmsAway(p['save_dir'], run.lock)
        run.evacuated = wf.VmsAway(p['save_dir'], run.lock, ev.EVACUATED_VMS)
        return ev.evacuate_host(run)
    elif phase == 'send_back':
        ignore_hangup()
        run.run(ev.evacuated_as_targets(p['evacuated']), ev.send_back_vm)
    else:
        run.evacuated = wf.VmsAway(p['save_dir'], run.lock, ev.EVACUATED_VMS)
        saved = wf.VmsAway(p['save_dir'], run.lock)
        run.sent_back = ev.sent_back_outcomes(p['sent_back'])
        back = run.run(ev.evacuated_entries_as_targets(run.evacuated), ev.returned_vm)
        run.run(wf.saved_entries_as_targets(saved), wf.restore_vm_state, back)
        if not module.check_mode:
            run.evacuated.keep_only(_not_ok(back))
            saved.keep_only(_not_ok(run.records[len(back):]))
    return run.result()


def main():
    run_module(fleet_module(dict(
        phase=dict(type='str', choices=['save', 'restore', 'evacuate', 'send_back', 'return'], required=True),
        save_dir=dict(type='path', default='/var/lib/vmfleet/save'),
        channels=dict(type='int', default=4),
        compression=dict(type='str', choices=['none', 'zstd', 'zlib'], default='none'),
        verify=dict(type='bool', default=True),
        direct_io=dict(type='bool'),
        destinations=dict(type='list', elements='dict', options=HOST),
        home=dict(type='dict', options=HOST),
        reserve_mib=dict(type='int', default=1024),
        fallback=dict(type='str', choices=['save', 'none'], default='save'),
        destination_qmp_dir=dict(type='path'),
        storage=dict(type='str', choices=['shared', 'copy'], default='shared'),
        destination_dir=dict(type='path'),
        bandwidth_mib_s=dict(type='int', default=0),
        max_downtime_ms=dict(type='int', default=0),
        parallel_connections=dict(type='int', default=1),
        auto_converge=dict(type='bool', default=False),
        postcopy=dict(type='bool', default=False),
        tls=dict(type='bool', default=False),
        tls_dir=dict(type='path'),
        evacuated=dict(type='list', elements='dict', default=[]),
        sent_back=dict(type='list', elements='dict', default=[]),
    )), work)


if __name__ == '__main__':
    main()
