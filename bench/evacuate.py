"""Evacuation of a host: host_maintenance's evacuate phase (what ``vmfleet.kvm.host_evacuate`` runs on each
host) vs a shell loop of ``virsh migrate`` (run by ``make bench``, never by the tests).

Three simulated hypervisors (tests/rig/hypervisors.py, prefix vmfe, 10.220); N libvirt domains (default 8) of M
MiB on hv1, half their RAM filled with random data at boot (``vmfleet.fill``). Side by side in one run, each
evacuation starting from every domain running on hv1 (moved back untimed, with virsh, before the next):

  * ``virsh loop x1``: ``virsh migrate --live --p2p --persistent --undefinesource --abort-on-error`` of each
    domain in turn, run on hv1 by ``xargs -P 1`` over the list "domain destination", the destinations hv2 and
    hv3 alternating (a loop that spreads the domains as the collection does);
  * ``virsh loop x2``: the same list, ``xargs -P 2`` (two migrations at a time);
  * ``host_evacuate cN``: the whole ``ansible-playbook`` run (its start included) of a play on hv1 running the
    role ``vmfleet.kvm.host_maintenance`` with ``host_maintenance_phase: evacuate`` (as the host_evacuate
    playbook does), destinations hv2 and hv3, ``host_maintenance_migrations`` N (the default, 1 and 2 by default), the
    role's other defaults (its parallel_connections 2 and auto_converge: the loops use virsh's own defaults).

Figures: the wall time of each evacuation, and the largest and the total guest downtime: libvirt's downtime of
each migration as hv1's libvirtd reports it when the job ends (JOB_COMPLETED), the same for both sides.

Usage: python bench/evacuate.py [--vms 8] [--memory 512] [--concurrency 1,2] [--repeats 1]
Writes bench/results/evacuate.json, evacuate.md (and evacuate.png with matplotlib).
A quick check of the bench itself: --vms 2 --memory 128 --fill 32.
"""

import argparse
import json
import os
import statistics
import sys
import time

import libvirt

from rig.accel import detect_accel
from rig.ansible_run import run_playbook, write_play
from rig.guest import COUNTER, wait_serial
from rig.hypervisors import Fleet
import _plot
import _results
from migrate import VIRSH, _event_loop

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')
SETTLE_TICKS = 3  # counter lines (one a second) each guest prints before each measured evacuation
VIRSH_LAG = 0.25  # seconds from virsh's start to its migration's (its SSH connection to the destination)


class Downtimes:
    """The downtime of every migration that leaves ``host`` while this listens (its JOB_COMPLETED events)."""

    def __init__(self, host):
        self.conn = libvirt.open(host.uri)
        self.seen = {}
        self.cb = self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on, None)

    def _on(self, conn, dom, stats, opaque):
        if stats.get('operation') in (None, libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT):
            self.seen[dom.name()] = stats.get('downtime')

    def wait(self, names, timeout=30):
        end = time.monotonic() + timeout
        while set(names) - set(self.seen) and time.monotonic() < end:
            time.sleep(0.05)
        self.conn.domainEventDeregisterAny(self.cb)
        self.conn.close()
        missing = sorted(set(names) - set(self.seen))
        if missing:
            raise RuntimeError('no JOB_COMPLETED event from hv1 for %s' % ', '.join(missing))
        return dict((n, self.seen[n]) for n in names)


class Bench:
    def __init__(self, fleet, vms, timeout):
        self.fleet = fleet
        self.vms = vms
        self.timeout = timeout
        self.rows = []
        self.moved_at = time.time()  # when the last move of domains (or their boot) ended
        self.module_starts = []  # seconds from the last move to the role's first migration, each run
        self.play_dir = os.path.join(fleet.root, 'bench-evacuate')
        os.makedirs(self.play_dir, exist_ok=True)

    @property
    def hosts(self):
        return self.fleet.hosts

    def where(self):
        """{domain: the host it runs on}."""
        out = {}
        for h in self.hosts:
            for name in h.virsh('list', '--name').stdout.split():
                out[name] = h
        return out

    def virsh_loop(self, parallel):
        """The shell loop on hv1: each domain to hv2 or hv3 (alternating), ``parallel`` at a time."""
        hv1, dests = self.hosts[0], self.hosts[1:]
        pairs = '\n'.join('%s %s' % (vm.name, dests[i % len(dests)].address) for i, vm in enumerate(self.vms)) + '\n'
        script = ' '.join(VIRSH) + ' "$0" "qemu+ssh://vmfleet@$1/system" --migrateuri "tcp://$1"'
        hv1.run(['xargs', '-P', str(parallel), '-n', '2', 'sh', '-e', '-c', script], input=pairs, timeout=self.timeout)

    def evacuate(self, concurrency, settings=None, collections=None):
        """The role's evacuate phase on hv1, as host_evacuate runs it; the whole ansible-playbook run.
        ``settings``: role variables on top of its defaults; ``collections``: another version's collection.
        Returns where the time went inside, from the run's report on hv1."""
        hv1 = self.hosts[0]
        report = hv1.path('vmfleet', 'reports', 'host_maintenance.json')
        if os.path.exists(report):
            os.unlink(report)
        play = write_play([{'name': 'Move the VMs to the other hypervisors',
                            'ansible.builtin.include_role': {'name': 'vmfleet.kvm.host_maintenance'},
                            'vars': dict({'host_maintenance_phase': 'evacuate',
                                          'host_maintenance_destinations': [h.name for h in self.hosts[1:]],
                                          'host_maintenance_qmp_sockets': []},
                                         **dict(settings or {}, **(
                                             # the role's migrations at once (before 2026-12-04 its concurrency)
                                             {'host_maintenance_migrations': concurrency,
                                              'host_maintenance_concurrency': concurrency} if concurrency else {})))}],
                          os.path.join(self.play_dir, 'evacuate.yml'), hosts=hv1.name, connection=None)
        proc = run_playbook(play, inventory=self.fleet.inventory, cwd=self.play_dir, timeout=self.timeout,
                            collections=collections)
        if proc.returncode:
            raise RuntimeError('host_maintenance evacuate failed: %s' % (proc.stdout + proc.stderr)[-3000:])
        with open(report) as f:
            vms = json.load(f)['vms']
        first = min(v['started_at'] for v in vms)
        self.module_starts.append(first - self.moved_at)
        return dict(first_start_after_move_s=round(first - self.moved_at, 2),
                    inside_s=round(max(v['ended_at'] for v in vms) - first, 2),
                    first_vm_at=first, last_vm_at=max(v['ended_at'] for v in vms),
                    vm_wall_s=statistics.median(v['wall_s'] for v in vms),
                    vm_migration_s=statistics.median(v.get('duration_s') or 0 for v in vms))

    def back(self):
        """Every domain back on hv1, untimed; the evacuation's record there forgotten."""
        hv1 = self.hosts[0]
        for name, h in sorted(self.where().items()):
            if h is not hv1:
                h.run(VIRSH + [name, 'qemu+ssh://vmfleet@%s/system' % hv1.address, '--migrateuri',
                               'tcp://%s' % hv1.address], timeout=self.timeout)
        record = hv1.path('vmfleet', 'save', 'evacuated-vms.json')
        if os.path.exists(record):
            os.unlink(record)
        self.moved_at = time.time()

    def start_as_late(self, row):
        """A loop's first migration starts as long after the last move as the role's did (the median over
        its runs so far): memory freed by the last move costs more to touch the longer it was free on these
        machines (bench/freed_memory.py), whichever tool touches it."""
        if self.module_starts:
            wait = self.moved_at + statistics.median(self.module_starts) - VIRSH_LAG - time.time()
            row['virsh_waited_s'] = round(max(0.0, wait), 2)
            time.sleep(max(0.0, wait))
            row['first_start_after_move_s'] = round(time.time() + VIRSH_LAG - self.moved_at, 2)

    def settle(self):
        offsets = dict((vm.name, os.path.getsize(vm.serial_log)) for vm in self.vms)
        for vm in self.vms:
            off = offsets[vm.name]
            for _tick in range(SETTLE_TICKS):
                off = wait_serial(vm.serial_log, COUNTER, 180, off).end()
        return offsets

    def measure(self, row, fn, *args):
        offsets = self.settle()
        row['load_avg_1m'] = round(os.getloadavg()[0], 2)
        with _results.row_of(self.rows, row):
            events = Downtimes(self.hosts[0])
            if fn == self.virsh_loop:
                self.start_as_late(row)
            t0 = time.monotonic()
            inside = fn(*args)
            row['wall_s'] = round(time.monotonic() - t0, 2)
            row.update(inside or {})
            downs = events.wait([vm.name for vm in self.vms])
            where = self.where()
            row.update(downtime_max_ms=max(downs.values()), downtime_sum_ms=sum(downs.values()),
                       downtimes_ms=downs, destinations=dict((n, where[n].name) for n in downs if n in where))
            if any(where.get(vm.name) is self.hosts[0] for vm in self.vms):
                raise RuntimeError('a domain is still on hv1: %s' % dict((n, h.name) for n, h in where.items()))
            for vm in self.vms:  # every guest counts on where it went
                wait_serial(vm.serial_log, COUNTER, 180, offsets[vm.name])
            row['guests_count_on'] = True
        self.back()


def summarize(rows):
    groups = {}
    for r in rows:
        if 'error' not in r:
            groups.setdefault(r['case'], []).append(r)
    out = []
    for case, rs in groups.items():
        out.append(dict(case=case, runs=len(rs), wall_s=round(statistics.median(r['wall_s'] for r in rs), 2),
                        downtime_max_ms=max(r['downtime_max_ms'] for r in rs),
                        downtime_sum_ms=round(statistics.median(r['downtime_sum_ms'] for r in rs)),
                        spread=sorted(set('%s: %d' % (h, list(r['destinations'].values()).count(h))
                                          for r in rs for h in r['destinations'].values()))))
        for k in ('inside_s', 'vm_wall_s', 'vm_migration_s'):
            if all(k in r for r in rs):
                out[-1][k] = round(statistics.median(r[k] for r in rs), 2)
    return out


NOTES = ('wall s: the whole evacuation of hv1: the xargs loop of virsh migrate commands, or the whole ansible-playbook '
         'run of the host_maintenance evacuate phase (its start, SSH, the module run in the background and followed). '
         'downtime: libvirt\'s downtime of each migration out of hv1 (JOB_COMPLETED at hv1), max over the domains and '
         'over the repeats, and the total over the domains (median over the repeats). Each evacuation starts with '
         'every domain on hv1, each guest having printed 3 counter lines since the last move (under TCG a guest '
         'fresh from a move runs slower for a while). The role runs with its defaults (parallel_connections 2, '
         'auto_converge), virsh with its own. Guests run under TCG on a 2-core machine: figures are noisy; '
         'load_avg_1m is in each row. module s: from the first VM\'s start to the last one\'s end inside the fleet module '
         '(the run\'s report on hv1); one VM s: the median VM\'s time in it (its lock, checks, migration, record); its '
         'migration s: the median migration\'s own duration_s as vm_migrate reports it. These machines are VMs that '
         'hand freed memory back to the outer hypervisor within seconds, and memory handed back costs several times '
         'more to touch again (bench/freed_memory.py): the domains\' memory freed at the destinations by the last '
         'move back slows an evacuation started later. So the domains move out and back once, untimed, first (the '
         'first evacuation met memory never backed yet); the role\'s runs come first, and each virsh loop starts '
         'as long after the last move as the role\'s first migration did (virsh_waited_s, '
         'first_start_after_move_s in the rows).')


def markdown(result):
    lines = ['# Host evacuation: host_maintenance evacuate vs a shell loop of virsh migrate', '',
             'Run %s on %s (%d CPUs, %s); load average %s at start, %s at end. %d libvirt domains of %d MiB (%d MiB '
             'filled) on hv1, to hv2 and hv3; %d round(s).' % (
                 result['date'], result['host'], result['cpus'], result['accel'], result['load_avg_start'],
                 result['load_avg_end'], result['vms'], result['memory_mib'], result['fill_mib'], result['repeats']), '',
             '| case | runs | wall s | module s | one VM s | its migration s | largest downtime ms | total downtime ms '
             '| where they went |',
             '|---|---|---|---|---|---|---|---|---|']
    for s in result['summary']:
        lines.append('| %s | %d | %.2f | %s | %s | %s | %s | %s | %s |' % (
            s['case'], s['runs'], s['wall_s'], s.get('inside_s', ''), s.get('vm_wall_s', ''), s.get('vm_migration_s', ''),
            s['downtime_max_ms'], s['downtime_sum_ms'], ', '.join(s['spread'])))
    errors = [r for r in result['rows'] if 'error' in r]
    if errors:
        lines += ['', 'Failed runs:', ''] + ['- %s round %d: %s' % (r['case'], r['round'], r['error'][:300])
                                             for r in errors]
    lines += ['', result['notes'], '']
    return '\n'.join(lines)


def plot(summary, path):
    plt = _plot.pyplot()
    if plt is None or not summary:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    cases = [s['case'] for s in summary]
    for ax, key, title in zip(axes, ('wall_s', 'downtime_max_ms'), ('wall time (s)', 'largest guest downtime (ms)')):
        ax.bar(range(len(cases)), [s[key] for s in summary],
               color=['tab:orange' if c.startswith('virsh') else 'tab:blue' for c in cases])
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=30, ha='right', fontsize=8)
        ax.set_title(title)
    return _plot.save(fig, path, 'evacuating one host (simulated hypervisors, TCG guests, shared 2-core machine)')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--vms', type=int, default=8, help='libvirt domains on hv1 (default 8)')
    ap.add_argument('--memory', type=int, default=512, help='MiB of RAM each (default 512)')
    ap.add_argument('--fill', type=int, help='MiB of it filled with random data at boot (default half; a guest of '
                                             '128 MiB has room for 32)')
    ap.add_argument('--concurrency', default='0,1,2',
                    help="host_maintenance_migrations values, 0: the role's default (default 0,1,2)")
    ap.add_argument('--like-virsh', action='store_true',
                    help="each concurrency also with virsh's migration settings (parallel_connections 1, no auto_converge)")
    ap.add_argument('--before', help='a checkout of an earlier version (with .collections linked): its role too, '
                                     "as 'host_evacuate ... (before)'")
    ap.add_argument('--repeats', type=int, default=1)
    ap.add_argument('--timeout', type=int, default=1800, help='seconds one evacuation may take')
    ap.add_argument('--name', default='evacuate', help='file name (no suffix) of the results')
    args = ap.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(',') if c]
    fill = args.memory // 2 if args.fill is None else args.fill
    result = _results.header('evacuate', vms=args.vms, memory_mib=args.memory, fill_mib=fill, concurrency=concurrency,
                             repeats=args.repeats, timeout_s=args.timeout)
    fleet = Fleet(hosts=3, vms_per_host=0, prefix='vmfe', subnet='10.220')
    bench = None
    with _results.recorded(result):
        try:
            _event_loop()
            fleet.up()
            hv1 = fleet.hosts[0]
            vms = [hv1.add_vm('libvirt', 'vmfe-lv%d' % i, args.memory, detect_accel(), False,
                              cmdline_extra='vmfleet.fill=%d' % fill) for i in range(1, args.vms + 1)]
            for vm in vms:
                m = wait_serial(vm.serial_log, r'VMFLEET-FILL %d |VMFLEET-ERROR.*' % fill, 1800)
                if m.group(0).startswith('VMFLEET-ERROR'):
                    raise RuntimeError('%s: %s' % (vm.name, m.group(0)))
            bench = Bench(fleet, vms, args.timeout)
            # untimed: the first evacuation meets destination memory the outer hypervisor never backed yet
            bench.virsh_loop(2)
            bench.back()
            cases = []
            like_virsh = {'host_maintenance_parallel_connections': 1, 'host_maintenance_auto_converge': False}
            before = os.path.join(os.path.abspath(args.before), '.collections') if args.before else None
            for c in concurrency:
                name = 'host_evacuate %s' % ('c%d' % c if c else 'default')
                for tag, collections in [('', None)] + ([(' (before)', before)] if before else []):
                    cases.append((name + tag, bench.evacuate, (c, None, collections)))
                    if args.like_virsh:
                        cases.append((name + ', virsh settings' + tag, bench.evacuate, (c, like_virsh, collections)))
            # the loops last: each starts as long after the last move as the role's runs did (start_as_late)
            cases += [('virsh loop x1', bench.virsh_loop, 1), ('virsh loop x2', bench.virsh_loop, 2)]
            for rnd in range(args.repeats):
                for case, fn, arg in cases:
                    bench.measure(dict(case=case, round=rnd + 1), fn, *(arg if isinstance(arg, tuple) else (arg,)))
        finally:
            fleet.down()
    result.update(rows=bench.rows if bench else [], notes=NOTES)
    result['summary'] = summarize(result['rows'])
    path = _results.write(RESULTS, args.name, result, markdown(result))
    plot(result['summary'], path + '.png')
    print(markdown(result))
    return 1 if result['failed'] or any('error' in r for r in result['rows']) else 0


if __name__ == '__main__':
    sys.exit(main())
