"""Live migration over TLS vs in clear: vmfleet.kvm.vm_migrate with and without ``tls`` (run by ``make bench``,
never by the tests).

Two simulated hypervisors (tests/rig/hypervisors.py, prefix vmft, 10.217) holding the certificates of one
throwaway CA (tests/rig/tls.py), one guest at a time on hv1 with N MiB of RAM, three quarters of it filled
with non-zero data at boot (``vmfleet.fillrep``: not zero pages, which QEMU skips). Side by side in one run,
for a libvirt domain and a raw QEMU VM: each round moves the guest hv1 -> hv2 and back, once in clear and once
with ``tls: true``, the order swapped every other round (so neither always goes the same way); every move is
vm_migrate through ansible-playbook on the source host.

Figures from what the module reports: duration_s, downtime_ms, bytes, rate_mib_s, mode; and the wall time of
the ansible-playbook run. The medians per backend and mode go into the summary, with TLS's cost in time
relative to clear.

Usage: python bench/migrate_tls.py [--sizes 1024] [--backends libvirt,qemu] [--repeats 2]
Writes bench/results/migrate_tls.json and migrate_tls.md. A smoke run: --sizes 128 --repeats 1.
"""

import argparse
import os
import statistics
import sys
import time

from rig.accel import detect_accel
from rig.ansible_run import run_one
from rig.guest import COUNTER, wait_serial
from rig.hypervisors import Fleet
from rig.qmp import quit_any
from rig.tls import Ca, install
import _results

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')
MIB = 1024.0 * 1024.0
SETTLE_TICKS = 5  # guest counter lines before each measured migration (a guest fresh from a move runs slow under TCG)


class Bench:
    def __init__(self, fleet, timeout):
        self.fleet = fleet
        self.timeout = timeout
        self.rows = []

    def sock(self, host, vm):
        """A raw VM's socket at ``host``: the rig's at hv1, one in hv2's own directory there."""
        return vm.qmp_socket if host is self.fleet.hosts[0] else '/var/lib/vmfleet/%s.qmp' % vm.name

    def move(self, backend, vm, src, dst, tls, row):
        if backend == 'libvirt':
            task = dict(domain=vm.name, destination_uri='qemu+ssh://vmfleet@%s/system' % dst.address)
        else:
            task = dict(qmp_socket=self.sock(src, vm), destination_qmp_socket=self.sock(dst, vm),
                        destination_uri='ssh://vmfleet@%s' % dst.address)
        task.update(tls=tls, timeout=self.timeout)
        t0 = time.monotonic()
        r = run_one({'vmfleet.kvm.vm_migrate': task}, inventory=self.fleet.inventory, hosts=src.name,
                    timeout=self.timeout + 300)
        row['wall_s'] = round(time.monotonic() - t0, 2)
        if r.get('failed'):
            raise RuntimeError('vm_migrate %s: %s' % ('tls' if tls else 'clear', r.get('msg', r)))
        row.update((k, r.get(k)) for k in ('duration_s', 'downtime_ms', 'bytes', 'rate_mib_s', 'mode', 'tls'))
        if backend == 'libvirt':
            src.vms.remove(vm)
            dst.vms.append(vm)
            vm.uri = dst.uri

    def measure(self, row, backend, vm, src, dst, tls):
        offset = os.path.getsize(vm.serial_log)
        for _tick in range(SETTLE_TICKS):
            offset = wait_serial(vm.serial_log, COUNTER, 120, offset).end()
        row['load_avg_1m'] = round(os.getloadavg()[0], 2)
        with _results.row_of(self.rows, row):
            self.move(backend, vm, src, dst, tls, row)
            wait_serial(vm.serial_log, COUNTER, 180, offset)
        return 'error' not in row

    def guest(self, backend, size, repeats):
        hv1, hv2 = self.fleet.hosts
        fill = size * 3 // 4 if size >= 512 else size // 4  # a small guest (a smoke run) has no room for more
        name = 'vmft-%s-%d' % ('lv' if backend == 'libvirt' else 'raw', size)
        vm = hv1.add_vm(backend, name, size, detect_accel(), False, cmdline_extra='vmfleet.fillrep=%d' % fill)
        t0 = time.monotonic()
        wait_serial(vm.serial_log, r'VMFLEET-FILL %d repeated' % fill, 900)
        print('%s: %d MiB, %d MiB filled, ready in %.0f s' % (backend, size, fill, time.monotonic() - t0), flush=True)
        at = [hv1, hv2]
        try:
            for rnd in range(repeats):
                for tls in ((False, True) if rnd % 2 == 0 else (True, False)):
                    row = dict(backend=backend, size_mib=size, fill_mib=fill, round=rnd + 1,
                               case='tls' if tls else 'clear', direction='%s -> %s' % (at[0].name, at[1].name))
                    if not self.measure(row, backend, vm, at[0], at[1], tls):
                        return
                    at.reverse()
        finally:
            for h in self.fleet.hosts:
                if vm in h.vms:
                    h.vms.remove(vm)
            if backend == 'libvirt':
                vm.stop()
            else:
                quit_any(vm.qmp_socket if h is hv1 else h.path('vmfleet', vm.name + '.qmp') for h in self.fleet.hosts)


def summarize(rows):
    groups = {}
    for r in rows:
        if 'error' not in r:
            groups.setdefault((r['backend'], r['size_mib'], r['case']), []).append(r)
    out = []
    for (backend, size, case), rs in sorted(groups.items()):
        med = dict((k, round(statistics.median(r[k] for r in rs), 2)) for k in ('duration_s', 'wall_s', 'bytes', 'rate_mib_s')
                   if all(r.get(k) is not None for r in rs))
        downs = [r['downtime_ms'] for r in rs if r.get('downtime_ms') is not None]
        out.append(dict(backend=backend, size_mib=size, case=case, runs=len(rs), duration_s=med.get('duration_s'),
                        wall_s=med.get('wall_s'), rate_mib_s=med.get('rate_mib_s'),
                        downtime_ms=statistics.median(downs) if downs else None,
                        mib_moved=round(med.get('bytes', 0) / MIB, 1)))
    for s in out:
        clear = next((c for c in out if c['case'] == 'clear' and c['backend'] == s['backend']
                      and c['size_mib'] == s['size_mib']), None)
        s['vs_clear'] = round(s['duration_s'] / clear['duration_s'], 2) \
            if clear and s['duration_s'] and clear['duration_s'] else None
    return out


NOTES = (
    'duration s: the module\'s duration_s (libvirt: from the migration call to its end; raw QEMU: from starting the '
    'destination QEMU over SSH to the end). wall s: the whole ansible-playbook run. rate: the module\'s bytes over '
    'duration. x clear: TLS\'s duration over clear\'s, same backend and size. Guests run under TCG on a 2-core '
    'machine shared with other work (load_avg_1m in each row): the migration\'s own CPU cost (encryption) '
    'competes with the guests\' emulation, so the figures are noisy and TLS\'s cost on real hardware with AES-NI '
    'is expected to be smaller.')


def markdown(result):
    lines = ['# Live migration over TLS vs in clear (vmfleet.kvm.vm_migrate tls)', '',
             'Run %s on %s (%d CPUs, %s); load average %s at start, %s at end. Sizes: %s MiB; repeats: %d.' % (
                 result['date'], result['host'], result['cpus'], result['accel'], result['load_avg_start'],
                 result['load_avg_end'], result['sizes_mib'], result['repeats']), '',
             '| backend | RAM MiB | case | runs | duration s | x clear | wall s | downtime ms | MiB moved | MiB/s |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for s in result['summary']:
        lines.append('| %s | %d | %s | %d | %s | %s | %s | %s | %.0f | %s |' % (
            s['backend'], s['size_mib'], s['case'], s['runs'], s['duration_s'], s['vs_clear'], s['wall_s'],
            s['downtime_ms'], s['mib_moved'], s['rate_mib_s']))
    errors = [r for r in result['rows'] if 'error' in r]
    if errors:
        lines += ['', 'Failed runs:', ''] + ['- %s %d MiB %s: %s' % (
            r['backend'], r['size_mib'], r['case'], r['error'][:300]) for r in errors]
    lines += ['', NOTES, '']
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default='1024', help='comma-separated MiB of guest RAM (default 1024)')
    ap.add_argument('--backends', default='libvirt,qemu', help='libvirt, qemu (default both)')
    ap.add_argument('--repeats', type=int, default=2, help='rounds per guest, each a clear and a TLS move')
    ap.add_argument('--timeout', type=int, default=600, help='seconds one migration may take')
    ap.add_argument('--name', default='migrate_tls', help='file name (no suffix) of the results')
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(',') if s]
    backends = [x for x in args.backends.split(',') if x]
    result = _results.header('migrate_tls',
                             sizes_mib=sizes, backends=backends, repeats=args.repeats, timeout_s=args.timeout)
    fleet = Fleet(hosts=2, vms_per_host=0, prefix='vmft', subnet='10.217')
    bench = Bench(fleet, args.timeout)
    with _results.recorded(result):
        try:
            fleet.up()
            install(Ca('vmfleet bench CA'), fleet.hosts)
            for size in sizes:
                for backend in backends:
                    bench.guest(backend, size, args.repeats)
        finally:
            fleet.down()
    result.update(rows=bench.rows, summary=summarize(bench.rows), notes=NOTES)
    path = _results.write(RESULTS, args.name, result, markdown(result))
    print(markdown(result))
    return 1 if result['failed'] or any('error' in r for r in bench.rows) else 0


if __name__ == '__main__':
    sys.exit(main())
