# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live migration of one running VM to another hypervisor (issue #21).

The VM's backend gives the migrator that does the moving (``vm.migrator()``: libvirt peer to
peer, or a raw QEMU started at the destination over SSH; backends/*/migrator.py). This engine
around it keeps what is the same for both: the checks before anything changes (the VM runs
here and not yet there, the destination has the memory), the postcopy policy, the progress
samples and the result.

Nothing is changed before the checks pass; a failure before postcopy's switch leaves the VM
running at the source."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import signal
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import (
    migrator_for, open_vm, prefetch_destination, shared_connections,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    ConnectionFailed, DestinationProblem, InvalidArgument, VmNotFound,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.vm_lock import held_for_change
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline

MIB = 1024 * 1024
# a progress sample into the result every this many seconds (and the first and last)
SAMPLE_EVERY = 1.0


def _sample(stats, t0):
    total = stats.get('memory_total') or 0
    remaining = stats.get('memory_remaining')
    disk_total = stats.get('disk_total') or 0
    disk_remaining = stats.get('disk_remaining') or 0
    done_of = total + disk_total
    left = (remaining or 0) + disk_remaining
    pct = round(100.0 * (done_of - left) / done_of, 1) if done_of and remaining is not None else None
    return dict(t=round(time.monotonic() - t0, 2), percent=pct,
                rate_mib_s=round((stats.get('memory_bps') or 0) / float(MIB), 1),
                remaining_mib=round(left / float(MIB), 1) if remaining is not None else None,
                iteration=stats.get('memory_iteration'),
                dirty_rate_pages_s=stats.get('memory_dirty_rate'),
                throttle_pct=stats.get('auto_converge_throttle'))


class Progress(object):
    """What a migrator reports as the job runs, in libvirt's job-stats keys (memory_total,
    memory_remaining, memory_bps, memory_iteration, memory_dirty_rate, memory_page_size,
    auto_converge_throttle, disk_*), and the decisions taken from it: samples into the result,
    the switch to postcopy, the end of the time."""

    def __init__(self, params, deadline):
        self.p = params
        self.deadline = deadline
        self.samples = []
        self.postcopy_started = None
        self.t0 = time.monotonic()
        self._last = 0.0

    def start(self):
        self.t0 = time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.t0

    def sample(self, stats):
        now = time.monotonic()
        if now - self._last >= SAMPLE_EVERY or not self.samples:
            self.samples.append(_sample(stats, self.t0))
            self._last = now

    def last(self, stats):
        self.samples.append(dict(_sample(stats, self.t0), percent=100.0))

    def report(self):
        return dict(samples=self.samples)

    def postcopy_due(self, stats):
        """Why to switch to postcopy now, or None: postcopy is allowed, not started yet, and precopy
        does not converge (after the second pass the guest dirties memory faster than the link
        carries it, or half the timeout is gone)."""
        if not self.p['postcopy'] or self.postcopy_started is not None or not stats:
            return None
        elapsed = self.elapsed()
        it = stats.get('memory_iteration') or 0
        dirty = (stats.get('memory_dirty_rate') or 0) * (stats.get('memory_page_size') or 4096)
        bps = stats.get('memory_bps') or 0
        if it >= 2 and bps and dirty >= bps:
            return "pass %d: the guest dirtied %.1f MiB/s, the link carried %.1f MiB/s" % (it, dirty / float(MIB), bps / float(MIB))
        if elapsed > self.deadline.timeout / 2.0:
            return "precopy had not converged after half the timeout (%.0f s, pass %d)" % (elapsed, it)
        return None

    def switched(self, why):
        self.postcopy_started = why

    def out_of_time(self):
        """The timeout ran out, and the migration may still be cancelled (before postcopy's switch)."""
        return self.deadline.expired() and self.postcopy_started is None

    def mode(self, stats):
        """(mode, why) of a completed migration, for the result."""
        if self.postcopy_started:
            return 'postcopy', 'switched to postcopy: ' + self.postcopy_started
        throttle = stats.get('auto_converge_throttle') or max([s.get('throttle_pct') or 0 for s in self.samples] or [0])
        if self.p['auto_converge'] and throttle:
            return 'auto-converge', ("precopy did not converge on its own: QEMU throttled the guest's CPUs up to %d%% "
                                     "(%s passes)" % (throttle, stats.get('memory_iteration')))
        return 'precopy', "precopy converged in %s pass(es) within the downtime limit%s" % (
            stats.get('memory_iteration'),
            ' (auto-converge allowed, not needed)' if self.p['auto_converge'] else
            (' (postcopy allowed, not needed)' if self.p['postcopy'] else ''))


def _check_params(p):
    if p['storage'] == 'shared' and p.get('destination_dir'):
        raise InvalidArgument("destination_dir is for storage: copy; with shared storage the disks stay where they are")
    if p['parallel_connections'] < 1 or p['parallel_connections'] > 64:
        raise InvalidArgument("parallel_connections must be between 1 and 64, not %d" % p['parallel_connections'])
    if p.get('tls_dir') and not p.get('tls'):
        raise InvalidArgument("tls_dir is for tls: true", hint="add tls: true, or leave tls_dir out")
    if p.get('tls') and p['postcopy']:
        raise InvalidArgument("postcopy with tls is not supported by vm_migrate; nothing was changed",
                              hint="leave postcopy out (auto_converge helps a busy guest converge), or migrate without tls")


def migrate(module, p):
    """Move the VM ``p`` names (vm_migrate's options) to ``p['destination_uri']``; its result."""
    _check_params(p)
    deadline = Deadline(p['timeout'])
    with shared_connections():
        # the destination reached while the VM is opened here (a few tenths of a second of SSH)
        prefetch_destination(p, deadline)
        try:
            vm = open_vm(module, p)
        except (VmNotFound, ConnectionFailed) as e:
            # not here (any more): done when it runs at the destination
            with migrator_for(module, p, deadline) as m:
                return _recovered(module, m, lambda: _not_here(m, e))
        with vm:
            with vm.migrator(p, deadline) as m:
                if not vm.is_running():
                    return _recovered(module, m, lambda: _not_here(m, None))
                return _recovered(module, m, lambda: _migrate(module, p, vm, m, deadline))


def _recovered(module, m, then):
    """What a killed run left half-done is finished first (not in check mode)."""
    done = None if module.check_mode else m.recover()
    result = then()
    if done:
        result.update(done, changed=True)
    return result


def _base_result(p, m):
    return dict(m.identity(), changed=False, destination=p['destination_uri'], storage=p['storage'])


def _not_here(m, error):
    result = _base_result(m.p, m)
    if m.runs_at_destination():
        result.update(msg="%s already runs at %s" % (m.what, m.where), state='running-at-destination')
        return result
    raise VmNotFound("%s runs neither on this host%s nor at %s" % (m.what, ' (%s)' % error.msg if error else '', m.where),
                     hint="start it, or name the host it runs on", **result)


def _migrate(module, p, vm, m, deadline):
    result = _base_result(p, m)
    if m.runs_at_destination():
        raise DestinationProblem("%s runs on this host and also at %s" % (m.what, m.where),
                                 hint="two copies of one VM: stop the one that should not run, then run again")
    need = vm.memory_bytes()
    free = m.destination_memory()
    if free is not None and free < need:
        raise DestinationProblem("not enough memory at %s: %s needs %d MiB, %d MiB are free or reclaimable there"
                                 % (m.where, m.what, need // MIB, free // MIB),
                                 hint="free memory at the destination or pick another one")
    result.update(m.plan(), memory_mib=need // MIB, parallel_connections=p['parallel_connections'])
    if module.check_mode:
        result.update(changed=True, msg="would migrate %s to %s" % (m.what, m.where))
        return result
    with held_for_change(False, p, 'migrate', deadline.remaining(), vm.name):
        result.update(m.migrate(Progress(p, deadline)))
    result['changed'] = True
    return result


def ignore_hangup():
    """The controller may go away mid-run (killed, its SSH connection lost): the hangup must not kill
    the run halfway (a raw QEMU source left paused after the switch, copies half made); it ends
    as it would have, migrated or cancelled within its timeout."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def migrate_vm(module):
    ignore_hangup()
    return migrate(module, module.params)
