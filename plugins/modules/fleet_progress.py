#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: fleet_progress
short_description: Follow a fleet module running in the background, VM by VM
version_added: 1.0.0
description:
  - Reads the O(path) a fleet module (M(vmfleet.kvm.fleet_snapshot), M(vmfleet.kvm.fleet_storage_migration),
    M(vmfleet.kvm.fleet_maintenance)) started with C(async) rewrites as each VM is done, and returns how far it got.
  - Answers when the run ended, or after O(wait) seconds with how far it got, so that a loop of it with
    C(loop_control.break_when) prints a line every O(wait) seconds, with each VM's outcome at C(-v), and ends
    as soon as the run does.
  - With O(jid), the background job's own status counts too, so a fleet module that failed before it wrote any
    progress (a bad option) ends the following at once; and its result comes back in RV(result).
  - A run whose process is gone without having finished (killed) is reported as finished, with RV(msg) saying so.
author:
  - vmfleet.kvm contributors (@vmfleet)
attributes:
  check_mode:
    support: full
    description: Only reads.
  diff_mode:
    support: none
    description: No diff; each record says what changed.
  platform:
    support: full
    platforms: posix
    description: Runs on a Linux hypervisor host (the target of the task), next to QEMU and libvirtd.
options:
  path:
    description:
      - The progress file given to the fleet module as its C(progress_file).
    type: path
    required: true
  jid:
    description:
      - The C(ansible_job_id) of the fleet module's C(async) task.
    type: str
  async_dir:
    description:
      - Where Ansible keeps the status of background jobs on this host (its C(async_dir) setting).
    type: path
    default: ~/.ansible_async
  wait:
    description:
      - Seconds to wait for a change before answering.
    type: float
    default: 10.0
seealso:
  - module: vmfleet.kvm.fleet_snapshot
  - module: vmfleet.kvm.fleet_storage_migration
  - module: vmfleet.kvm.fleet_maintenance
'''

EXAMPLES = r'''
- name: Snapshot every VM in the background
  vmfleet.kvm.fleet_snapshot:
    name: pre-upgrade
    progress_file: /var/lib/vmfleet/reports/snapshot.progress.json
  async: 3600
  poll: 0
  register: job

- name: Follow it (-v shows each VM as it is done)
  vmfleet.kvm.fleet_progress:
    path: /var/lib/vmfleet/reports/snapshot.progress.json
    jid: "{{ job.ansible_job_id }}"
  loop: "{{ range(360) | list }}"
  loop_control:
    break_when: [progress.finished]
  register: progress
'''

RETURN = r'''
finished:
  description: Whether the run ended (every VM done, or its process gone).
  returned: always
  type: bool
  sample: false
done:
  description: VMs done so far.
  returned: always
  type: int
  sample: 3
total:
  description: VMs the run works.
  returned: always
  type: int
  sample: 8
vms:
  description: Each VM done so far, in the order they ended (C(vm), C(status), C(changed), C(wall_s), C(msg)).
  returned: always
  type: list
  elements: dict
  sample: [{vm: web01, status: ok, changed: true, wall_s: 0.6, msg: null}]
result:
  description:
    - The fleet module's own result (its C(vms) records, C(changed), C(failed), C(msg)) once the job ended,
      as C(ansible.builtin.async_status) would return it; so no further task is needed to collect it.
  returned: when O(jid) is given and the job ended
  type: dict
  sample: {changed: true, failed_vms: [], vms: []}
msg:
  description: One line saying how far the run got.
  returned: always
  type: str
  sample: "snapshot present: 3 of 8 VMs done (web01 ok 0.6 s, web02 ok 0.7 s, db01 failed 0.2 s)"
'''

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmfleetError
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import run_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # not written yet, or being replaced


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _job_result(p):
    """The background job's result once Ansible's status of it says it ended (as async_status reads it)."""
    if not p['jid']:
        return None
    job = _read(os.path.join(p['async_dir'], p['jid']))
    if job is None or ('started' in job and not job.get('finished')):
        return None
    job.pop('invocation', None)
    return job


def work(module):
    p = module.params
    ended = {}

    def ended_or_none():
        # with a job id the job's own end counts (its result is then ready for async_status at once)
        ended['job'] = _job_result(p)
        state = _read(p['path'])
        if ended['job'] is not None:
            return state or dict(total=0, done=0, vms=[], finished=True, workflow='the run')
        if not p['jid'] and state and (state.get('finished') or not _alive(state.get('pid', 0))):
            return state
        return None
    try:
        state = poll_until(ended_or_none, Deadline(p['wait']), interval=0.2, on_timeout=lambda: VmfleetError('going on'))
    except VmfleetError:
        state = _read(p['path']) or dict(total=0, done=0, vms=[], finished=False, workflow='the run')
    gone = not ended.get('job') and not state.get('finished') and state.get('pid') and not _alive(state['pid'])
    finished = bool(ended.get('job')) or bool(state.get('finished')) and not p['jid'] or bool(gone)
    msg = "%s: %d of %d VMs done" % (state.get('workflow'), state.get('done', 0), state.get('total', 0))
    if state.get('vms'):
        msg += " (%s)" % ", ".join("%s %s %.1f s" % (v['vm'], v['status'], v.get('wall_s') or 0) for v in state['vms'])
    if gone:
        msg += "; its process %d ended without finishing (killed?)" % state['pid']
    result = dict(changed=False, finished=finished, done=state.get('done', 0), total=state.get('total', 0),
                  vms=state.get('vms', []), msg=msg)
    if ended.get('job'):
        result['result'] = ended['job']
    return result


def main():
    run_module(AnsibleModule(argument_spec=dict(
        path=dict(type='path', required=True),
        jid=dict(type='str'),
        async_dir=dict(type='path', default='~/.ansible_async'),
        wait=dict(type='float', default=10.0),
    ), supports_check_mode=True), work)


if __name__ == '__main__':
    main()
