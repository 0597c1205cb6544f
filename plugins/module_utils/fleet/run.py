# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One fleet workflow over the VMs of one hypervisor, inside one module run:
select the VMs, then run each VM's pipeline (act, verify, retain, read its
state after) in a bounded pool of threads, under one shared deadline.

Ansible's cost per host is then a constant handful of tasks however many
VMs the host holds, where a task per VM and step cost seconds each. Each VM
is isolated: its failure is caught into its own record and the others go
on; the run fails at the end, naming every VM that failed and why. Each
thread opens its own handle (its own libvirt connection or QMP client)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import threading
import time
import traceback

from concurrent.futures import ThreadPoolExecutor

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import open_vm, open_vms, reached_alone, shared_connections
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    ConnectionFailed, FleetFailed, InvalidArgument, OperationTimeout, VmfleetError, VmGone,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.policy import fleet_record, fleet_select
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.vm_lock import held_for_change
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline

# How long selecting may spend on one raw QEMU socket that does not answer.
SOCKET_TIMEOUT = 30.0
# the states a VM has while its QEMU runs; one may turn into the other under another run's hands
LIVE_STATES = ('running', 'paused')


# VMs described at once while a host is listed
DESCRIBE_AT_ONCE = 4


def _description(vm, detail=True):
    """What a fleet selects ``vm`` by; ``detail``: its disks and snapshots too (vm_info's
    description, read with qemu-img), which only the snapshot workflows need."""
    if not detail:
        return dict(name=vm.name, backend=vm.backend, state=vm.state(), connection=vm.connection())
    return dict(vm.describe(), connection=vm.connection())


def _described(vm, detail=True):
    """_description, or None for a domain shut down and undefined while the host was listed."""
    try:
        return _description(vm, detail)
    except VmGone:
        return None


class FleetRun(object):
    """``work(run, target, record)`` acts on one VM: it fills ``record`` as it
    goes (what it did so far stays in the record when it fails) and raises a
    VmfleetError to fail that VM."""

    def __init__(self, module, workflow, params):
        if params['concurrency'] < 1:
            raise InvalidArgument("concurrency must be at least 1, not %d" % params['concurrency'])
        self.module = module
        self.workflow = workflow
        self.p = params
        self.check_mode = module.check_mode
        self.deadline = Deadline(params['timeout'])
        self.lock = threading.Lock()
        self.records = []
        self.total = 0
        self.done = 0
        self._seen = []
        self._progress()  # at once: a follower must not read a previous run's file as this one's

    # -- selection --
    def conn(self, target):
        """Module options that reach ``target``, with what is left of the run's timeout."""
        conn = dict(uri=self.p['uri'], domain=None, qmp_socket=None)
        conn.update(target['connection'], timeout=self.deadline.remaining(1.0))
        return conn

    def describe_host(self, detail=True):
        """Every VM this run may act on, described as vm_info does (``detail``: _described), and
        the raw QEMU sockets that did not answer (each a failed VM, not a failed host)."""
        p = self.p
        asked = p['vms'] or []
        alone = {}
        for name in p['qmp_sockets'] or []:
            alone.setdefault(name, dict(qmp_socket=name, domain=None, uri=p['uri']))
        list_host = not asked
        for name in asked:
            conn = reached_alone(name, p['uri'])
            if conn:
                alone.setdefault(name, conn)
            else:
                list_host = True
        described, unreachable = [], []
        if p['uri'] and list_host:
            try:
                with open_vms(self.module, dict(uri=p['uri'], domain=None, qmp_socket=None,
                                                timeout=self.deadline.remaining(1.0))) as (vms, host):
                    # at once: each VM's images are read by qemu-img, tens of milliseconds a disk
                    with ThreadPoolExecutor(max_workers=DESCRIBE_AT_ONCE) as pool:
                        for d in pool.map(lambda vm: _described(vm, detail), vms):
                            if d is not None:  # None: shut down and undefined while we listed
                                described.append(d)
            except ConnectionFailed as e:
                # libvirtd down: its domains are reported failed, the raw QEMU VMs are still worked
                unreachable.append(dict(item=p['uri'], msg=e.message))
        for name, conn in alone.items():
            try:
                with open_vm(self.module, dict(conn, timeout=min(SOCKET_TIMEOUT, self.deadline.remaining(1.0)))) as vm:
                    # not _described: a socket whose VM is gone is a failed VM (below), not one left out
                    described.append(_description(vm, detail))
            except VmfleetError as e:
                unreachable.append(dict(item=name, msg=e.message))
        return described, unreachable

    def select(self, states=('running',), detail=True):
        """(targets, records of the VMs asked for but missing or skipped); ``detail``: as describe_host."""
        started = time.time()
        described, unreachable = self.describe_host(detail)
        sel = fleet_select([described], self.p['vms'], self.p['exclude'], self.p['name_pattern'], states,
                           unreachable)
        # their outcome was decided while the host was listed: that is their time on the report's timeline
        when = dict(started_at=round(started, 3), ended_at=round(time.time(), 3))
        records = [dict(m, status='failed', changed=False, **when) for m in sel['missing']]
        records += [dict(s, status='skipped', changed=False, **when) for s in sel['skipped']]
        return sel['targets'], records

    # -- the pool --
    def run(self, targets, work, records=()):
        """Work every target, at most ``concurrency`` at once; the records of all, in order."""
        self.records = list(records)
        self.total = len(self.records) + len(targets)
        self.done = len(self.records)
        self._progress()
        slots = [None] * len(targets)
        workers = max(1, min(int(self.p['concurrency']), len(targets) or 1))
        with shared_connections(), ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._one, target, work) for target in targets]
            for i, future in enumerate(futures):
                slots[i] = future.result()
        self.records.extend(slots)
        self._progress(finished=True)
        return self.records

    def _one(self, target, work):
        t0 = time.monotonic()
        # wall-clock times as well, for the fleet report's timeline (wall_s stays the monotonic measure)
        started_at = time.time()
        record = fleet_record(target, 'ok')
        try:
            if self.deadline.expired():
                raise OperationTimeout("the run's timeout of %gs ran out before VM '%s' was started"
                                       % (self.deadline.timeout, target['name']),
                                       hint="nothing was done to it; raise the timeout or lower the number of VMs")
            what = '%s (%s)' % (self.workflow, getattr(self.module, '_name', 'vmfleet'))
            with held_for_change(self.check_mode, self.conn(target), what, self.deadline.remaining(), target['name']):
                # read again now the lock is ours: another run that held it may have left the VM
                # otherwise than it was when this run listed it (paused mid-revert, then running again)
                now = self.state_of(target)
                if target.get('state') in LIVE_STATES and now in LIVE_STATES:
                    target = dict(target, state=now)
                work(self, target, record)
        except VmfleetError as e:
            record.update(status='failed', msg=e.message)
        except Exception as e:  # a bug of ours: this VM fails, the others go on
            record.update(status='failed', msg="vmfleet.kvm internal error: %s: %s" % (type(e).__name__, e),
                          exception=traceback.format_exc())
        record['state_before'] = target.get('state')
        record['state_after'] = self.state_of(target)
        record['wall_s'] = round(time.monotonic() - t0, 3)
        record.update(started_at=round(started_at, 3), ended_at=round(time.time(), 3))
        with self.lock:
            self.done += 1
            self._log('%s: %s %s (%d of %d done, %.1f s)' % (
                record['vm'], record['status'], record.get('msg', ''), self.done, self.total, record['wall_s']))
            self._progress(record)
        return record

    def state_of(self, target):
        try:
            with open_vm(self.module, dict(self.conn(target), timeout=min(SOCKET_TIMEOUT, self.deadline.remaining(5.0)))) \
                    as vm:
                return vm.state()
        except VmfleetError:
            return 'unreachable'

    # -- what the operator sees while it runs --
    def _log(self, msg):
        self.module.log('vmfleet.kvm %s: %s' % (self.workflow, msg))

    def _progress(self, record=None, finished=False):
        """The progress file, rewritten whole at each step: fleet_progress reads it."""
        path = self.p.get('progress_file')
        if not path or self.check_mode:
            return
        if record is not None:
            self._seen.append(dict((k, record.get(k)) for k in ('vm', 'status', 'changed', 'wall_s', 'msg')))
        state = dict(workflow=self.workflow, pid=os.getpid(), total=self.total, done=self.done,
                     finished=finished, vms=self._seen, updated=time.time())
        try:
            _write_private(path, json.dumps(state))
        except OSError as e:
            self.module.warn("cannot write the progress file %s: %s" % (path, e))

    # -- the result --
    def result(self, **extra):
        failed = [r for r in self.records if r['status'] == 'failed']
        result = dict(changed=any(r.get('changed') for r in self.records), vms=self.records,
                      failed_vms=[r['vm'] for r in failed], duration_s=round(self.deadline.elapsed(), 3), **extra)
        self._report(failed)
        if failed:
            raise FleetFailed("%s failed on %d of %d VM(s): %s" % (
                self.workflow, len(failed), len(self.records),
                "; ".join("%s: %s" % (r['vm'], r.get('msg', 'failed')) for r in failed)), **result)
        return result

    def _report(self, failed):
        """The report file: the run's record on the host, written whole at its end."""
        path = self.p.get('report_file')
        if not path or self.check_mode:
            return
        report = dict(self.p.get('report_extra') or {}, vms=self.records, failed=failed,
                      changed=[r['vm'] for r in self.records if r.get('changed')])
        _write_private(path, json.dumps(report, indent=1, sort_keys=True) + '\n')


def _write_private(path, text):
    """``text`` to ``path`` atomically (0600), its directory created 0700 if missing."""
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path), 0o700)
    durable.atomic_write(path, text.encode('utf-8'))
