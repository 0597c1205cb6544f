#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: fleet_snapshot
short_description: Snapshot, roll back or clean up every selected VM of a hypervisor in one task
version_added: 1.0.0
description:
  - Works the snapshots of every selected VM of the host in one module run, a bounded number of VMs
    at once (O(concurrency)), each VM isolated from the others. The roles C(vmfleet.kvm.pre_upgrade_snapshot),
    C(vmfleet.kvm.snapshot_rollback) and C(vmfleet.kvm.snapshot_cleanup) are built on it.
  - O(state=present) (running VMs) snapshots the disks of each VM that can hold one (writable qcow2; a raw
    varstore-like disk is left out and the record says why), with the RAM state on the first, checks the snapshot
    is on every one of them, then deletes the snapshots carrying O(prefix) beyond the newest O(keep).
    A snapshot that already exists on those disks is left as it is, unless it is older than O(max_age),
    in which case the VM fails, naming its age.
  - O(state=reverted) (running or paused VMs) reverts each VM to the snapshot, whichever O(mode) took it,
    and checks the VM shows the state it had before.
  - O(state=absent) (running, paused or shut-off VMs) deletes the named snapshot and those carrying
    O(prefix) beyond the newest O(keep). A snapshot whose name lacks O(prefix) is never deleted.
  - Each VM's record in RV(vms) says what was done, how long it took and how long the guest was paused.
extends_documentation_fragment:
  - vmfleet.kvm.fleet
attributes:
  check_mode:
    description: Predicts what would be snapshotted, reverted or deleted on each VM; touches nothing.
options:
  state:
    description:
      - V(present) snapshots and applies retention, V(reverted) rolls back, V(absent) deletes.
    type: str
    choices: [present, reverted, absent]
    default: present
  name:
    description:
      - Name of the snapshot; O(prefix) is put in front unless it is there already.
      - Required with O(state=present) and O(state=reverted). With O(state=absent) it may be left out
        when O(keep) applies retention alone.
    type: str
  prefix:
    description:
      - The prefix of every snapshot this workflow makes; retention only ever deletes names carrying it.
    type: str
    default: vmfleet-
  mode:
    description:
      - How O(state=present) takes the snapshot; see M(vmfleet.kvm.snapshot). Reverts and deletions find
        the mode each snapshot was taken in by themselves.
      - V(auto) takes an internal snapshot of a VM's qcow2 disks where it can, and an external one (qcow2
        overlays) of a VM with no qcow2 disk or whose firmware refuses internal snapshots; each VM's report
        says which mode it got and why (C(mode), C(mode_reason)).
    type: str
    choices: [auto, internal, instant, external]
    default: auto
  keep:
    description:
      - How many snapshots carrying O(prefix) to keep on each VM, newest first (the one just taken counts).
        V(0) keeps them all.
    type: int
    default: 0
  memory_dir:
    description:
      - Directory of the memory files of instant and external snapshots (created 0700 unless O(mode=internal)).
    type: path
    default: /var/lib/vmfleet/snapshots
  max_age:
    description:
      - With O(state=present), how many seconds old a snapshot of the same name may be for this run to take
        it as its own (and report it unchanged, as a re-run does). An older one is an earlier run's rollback
        point, so the VM fails, naming its age, and nothing is taken over it. Give each run a name of its own,
        or delete the old snapshot first.
      - V(0) takes a snapshot of that name as this run's whatever its age.
    type: int
    default: 0
    version_added: 1.1.0
seealso:
  - module: vmfleet.kvm.snapshot
  - module: vmfleet.kvm.fleet_progress
  - ref: ansible_collections.vmfleet.kvm.docsite.snapshot_modes
    description: Choosing a snapshot mode (auto, internal, instant or external).
'''

EXAMPLES = r'''
- name: Snapshot every running VM before an upgrade, keeping the newest three of ours
  vmfleet.kvm.fleet_snapshot:
    name: pre-upgrade-2026-12
    mode: instant
    keep: 3
    concurrency: 8

- name: Roll two VMs back
  vmfleet.kvm.fleet_snapshot:
    state: reverted
    name: pre-upgrade-2026-12
    vms: [web01, /run/qemu/db01.qmp]
'''

RETURN = r'''
vms:
  description:
    - One record per VM the selection named or found, in order (missing and skipped VMs first).
    - C(status) is V(ok), V(failed) (with C(msg)) or V(skipped) (with C(reason)).
    - C(wall_s) is the VM's whole pipeline in seconds; C(started_at) and C(ended_at) when it began and ended (epoch seconds).
  returned: always
  type: list
  elements: dict
  sample:
    - vm: web01
      backend: libvirt
      status: ok
      changed: true
      snapshot: vmfleet-pre-upgrade
      mode: instant
      route: qmp
      paused_ms: 41.2
      duration_s: 0.52
      deleted: [vmfleet-2026-09]
      disks: [vda]
      left_out: [{disk: vdb, reason: raw image cannot hold snapshots (varstore-like disk, left as it is)}]
      state_before: running
      state_after: running
      wall_s: 0.93
      started_at: 1790000000.125
      ended_at: 1790000001.055
failed_vms:
  description: Names of the VMs that failed; the module fails when there is any.
  returned: always
  type: list
  elements: str
  sample: []
snapshot:
  description: The snapshot name as written, with the prefix.
  returned: when O(name) is set
  type: str
  sample: vmfleet-pre-upgrade
duration_s:
  description: Seconds the whole run took.
  returned: always
  type: float
  sample: 1.7
error:
  description: C(FleetFailed) when some VMs failed (each one's record in RV(vms)), else R(another class,ansible_collections.vmfleet.kvm.docsite.error_classes).
  returned: failed
  type: str
  sample: FleetFailed
'''

import os

from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import workflows as wf
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.run import FleetRun
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.policy import prefixed
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import DEFAULT_MEMORY_DIR
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import fleet_module, run_module

# state -> (the VM states it acts on, the pipeline of one VM)
STATES = {
    'present': (('running',), wf.snapshot_present),
    'reverted': (('running', 'paused'), wf.snapshot_reverted),
    # a shut-off VM's snapshots are deleted from its images
    'absent': (('running', 'paused', 'shutoff'), wf.snapshot_absent),
}


def work(module):
    p = module.params
    if p['state'] == 'absent' and not p['name'] and p['keep'] < 1:
        raise InvalidArgument("nothing to delete: name no snapshot and keep no number of them",
                              hint="set name (a snapshot to delete), keep (retention), or both")
    if not p['prefix']:
        raise InvalidArgument("prefix is empty", hint="retention must never touch snapshots it did not make")
    if p['state'] == 'present' and p['mode'] != 'internal' and not module.check_mode and not os.path.isdir(p['memory_dir']):
        os.makedirs(p['memory_dir'], 0o700)
    states, pipeline = STATES[p['state']]
    run = FleetRun(module, 'snapshot ' + p['state'], p)
    targets, records = run.select(states)
    run.run(targets, pipeline, records)
    extra = dict(snapshot=prefixed(p['name'], p['prefix'])) if p['name'] else {}
    return run.result(**extra)


def main():
    run_module(fleet_module(dict(
        state=dict(type='str', choices=['present', 'reverted', 'absent'], default='present'),
        name=dict(type='str'),
        prefix=dict(type='str', default='vmfleet-'),
        mode=dict(type='str', choices=['auto', 'internal', 'instant', 'external'], default='auto'),
        keep=dict(type='int', default=0),
        memory_dir=dict(type='path', default=DEFAULT_MEMORY_DIR),
        max_age=dict(type='int', default=0),
    ), required_if=[('state', 'present', ['name']), ('state', 'reverted', ['name'])]), work)


if __name__ == '__main__':
    main()
