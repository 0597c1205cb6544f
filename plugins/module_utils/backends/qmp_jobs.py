# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU's job framework: start a job, wait for it on events and polls within
the deadline, read its error, dismiss it."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re
import uuid

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    JobFailed, OperationTimeout, QmpCommandError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import poll_until

POLL_S = 0.25


def mirror_job_id(disk_name):
    """The id of drive_mirror's job on a disk: the same on every run, so a re-run finds it."""
    return 'vmfleet-mirror-%s' % re.sub(r'[^A-Za-z0-9_-]', '_', disk_name)


def _find(vm, job_id, deadline):
    # A job such as snapshot-save holds QEMU's main loop while it runs, so
    # even query-jobs waits for it: the call itself must respect the deadline.
    for job in vm.qmp('query-jobs', _timeout=deadline.remaining(0.05)):
        if job['id'] == job_id:
            return job
    return None


def start_job(vm, command, args):
    job_id = 'vmfleet-%s-%s' % (command, uuid.uuid4().hex[:8])
    args = dict(args)
    args['job-id'] = job_id
    vm.qmp(command, **args)
    return job_id


def wait_job(vm, job_id, deadline, what):
    """Wait until ``job_id`` concludes. Returns the QMP events seen meanwhile
    (STOP/RESUME tell how long the guest was paused)."""
    events = []
    seen = {}

    def probe():
        try:
            job = _find(vm, job_id, deadline)
        except OperationTimeout:
            job = dict(status='running (QEMU busy)')
        if job is None:
            raise JobFailed("%s: QEMU job %s vanished before it concluded" % (what, job_id))
        seen['job'] = job
        if job.get('status') != 'concluded':
            return None
        try:
            vm.qmp('job-dismiss', id=job_id)
        except QmpCommandError:
            pass  # auto-dismissed
        if job.get('error'):
            raise JobFailed("%s failed: %s" % (what, job['error']), job_id=job_id)
        return events

    def wait(seconds):
        ev = vm.wait_event(seconds)
        if ev:
            events.append(ev)

    def timed_out():
        status = seen['job']['status']
        return OperationTimeout("%s did not finish within %gs; QEMU job %s is still %s"
                                % (what, deadline.timeout, job_id, status), job_id=job_id, job_status=status)

    return poll_until(probe, deadline, timed_out, interval=POLL_S, wait=wait)


def paused_ms(events):
    """Guest pause from the STOP and RESUME events' own timestamps."""
    def ts(ev):
        t = ev.get('timestamp', {})
        return t.get('seconds', 0) + t.get('microseconds', 0) / 1e6
    stop = next((ts(e) for e in events if e.get('event') == 'STOP'), None)
    resume = next((ts(e) for e in events if e.get('event') == 'RESUME'), None)
    if stop is None or resume is None:
        return None
    return round((resume - stop) * 1000.0, 1)
