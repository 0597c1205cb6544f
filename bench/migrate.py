"""Live migration: vmfleet.kvm.vm_migrate vs ``virsh migrate`` (run by ``make bench``, never by the tests).

Two simulated hypervisors (tests/rig/hypervisors.py, prefix vmfb, 10.216), one guest at a time on hv1 with
N MiB of RAM, half of it filled with random data at boot (``vmfleet.fill``); "dirty" guests also rewrite
N/8 MiB twice over without pause (``vmfleet.dirty``: 2 x N/8 MiB written again every pass). Side by side in
one run, each migration hv1 -> hv2 and the guest moved back untimed (virsh) before the next, so each starts
from the same state:

libvirt: vm_migrate through ansible-playbook on hv1 vs ``virsh migrate --live --p2p`` run on hv1, with the
         same options: the module's defaults spelled for virsh (--persistent --undefinesource
         --abort-on-error, the stream to the destination's address); then multifd (parallel_connections 4 /
         --parallel --parallel-connections 4); then copied storage into hv2's own /var/lib/libvirt/images
         (storage: copy / --copy-storage-all with --xml naming the new paths and the images pre-created
         with qemu-img, as virsh requires; the pre-creation is timed apart, precreate_s).
raw:     a raw QEMU VM: by hand (the same command line started at the destination with -incoming, QMP
         migrate, quit the source) hv1 -> hv2, then vm_migrate (shared storage) hv2 -> hv1.

Figures, for both sides from the same source: libvirt's completed job statistics at the destination
(time_elapsed, downtime, memory and disk bytes processed); raw: the source's query-migrate (total-time,
downtime, ram transferred). For libvirt also where the machine's CPU went during the job (bench/_cpu.py)
and when each memory pass began. Each guest moves there and back once untimed first, and virsh's job
starts as long after the guest's last move as vm_migrate's did (see NOTES: freed memory on these
machines costs more to touch the longer it was free). Also the wall time of the whole ansible-playbook / virsh command, and what the
module reports (duration_s, downtime_ms, bytes, mode).

With --before CHECKOUT (an earlier version, its .collections linked), that version's vm_migrate runs in the
same run too (tool 'vm_migrate (before)'): libvirt hv1 -> hv2 as the others; raw hv1 -> hv2, moved back untimed.

Usage: python bench/migrate.py [--sizes 1024,4096] [--loads idle,dirty] [--backends libvirt,qemu] [--before DIR]
Writes bench/results/migrate.json, migrate.md (and migrate.png with matplotlib).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import libvirt

from rig.accel import detect_accel
from rig.ansible_run import run_alone
from rig.guest import COUNTER, wait_serial
from rig.hypervisors import Fleet
from rig.qemu_guest import QemuGuest
from rig.qmp import qmp, quit_any
import _cpu
import _plot
import _results

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')
MIB = 1024.0 * 1024.0
IMAGES = '/var/lib/libvirt/images'  # each host's own directory (not shared): where copied disks go
# (case, vm_migrate options, virsh migrate options): the same migration both ways
CASES = (('shared', {}, []),
         ('shared multifd 4', {'parallel_connections': 4}, ['--parallel', '--parallel-connections', '4']),
         ('copy storage', {'storage': 'copy', 'destination_dir': IMAGES}, ['--copy-storage-all']))
SETTLE_TICKS = 5  # guest counter lines (one a second) before each measured migration
# vm_migrate's defaults (persistent, undefine_source, abort on error), spelled for virsh
VIRSH = ['virsh', 'migrate', '--live', '--p2p', '--persistent', '--undefinesource', '--abort-on-error']


def _event_loop():
    libvirt.virEventRegisterDefaultImpl()

    def run():
        while True:
            libvirt.virEventRunDefaultImpl()
    threading.Thread(target=run, daemon=True).start()


class SourceStats:
    """libvirt's statistics of the migration job as the source sends them when it ends (JOB_COMPLETED, what
    vm_migrate reads too): the destination's copy of them lacks the disk bytes of a storage copy."""

    def __init__(self, host, name):
        self.conn = libvirt.open(host.uri)
        self.name = name
        self.stats = None
        self.ended = None      # time.monotonic() when the event came
        self.passes = []       # time.monotonic() of each memory pass's start (MIGRATION_ITERATION events)
        self.cbs = [self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on, None),
                    self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION,
                                                     self._pass, None)]

    def _on(self, conn, dom, stats, opaque):
        if dom.name() == self.name:
            self.ended = time.monotonic()
            self.stats = dict(stats)

    def _pass(self, conn, dom, iteration, opaque):
        if dom.name() == self.name:
            self.passes.append(time.monotonic())

    def wait(self, timeout=15):
        end = time.monotonic() + timeout
        while self.stats is None and time.monotonic() < end:
            time.sleep(0.05)
        for cb in self.cbs:
            self.conn.domainEventDeregisterAny(cb)
        self.conn.close()
        if self.stats is None:
            raise RuntimeError('no JOB_COMPLETED event from the source for %s' % self.name)
        return self.stats


def fail(what, r):
    raise RuntimeError('%s failed: %s' % (what, r.get('msg', r)))


class Bench:
    def __init__(self, fleet, timeout, before=None, cases=None):
        self.fleet = fleet
        self.cases = cases or [c[0] for c in CASES]
        self.moved_at = time.monotonic()  # when the guest's last move (or its boot) ended
        self.module_start = {}  # case: seconds from the last move to the start of vm_migrate's last job
        self.virsh_lag = 0.0  # seconds from virsh's start to its job's (its SSH connection to the destination)
        self.virsh_launched = None
        self.timeout = timeout
        self.rows = []
        # the collection each vm_migrate tool runs: this checkout's, and an earlier one's (--before)
        self.tools = dict([('vm_migrate', None)] + ([('vm_migrate (before)', before)] if before else []))

    @property
    def hv1(self):
        return self.fleet.hosts[0]

    @property
    def hv2(self):
        return self.fleet.hosts[1]

    # --- libvirt -----------------------------------------------------------------------------
    def virsh_migrate(self, vm, src, dst, extra=(), xml=None):
        """``virsh migrate`` on ``src`` to ``dst``; its wall seconds. Past the timeout the job is aborted."""
        argv = VIRSH + list(extra) + (['--xml', xml, '--persistent-xml', xml] if xml else [])
        argv += [vm.name, 'qemu+ssh://vmfleet@%s/system' % dst.address, '--migrateuri', 'tcp://%s' % dst.address]
        t0 = time.monotonic()
        try:
            src.run(argv, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            src.virsh('domjobabort', vm.name, check=False)
            raise
        wall = time.monotonic() - t0
        src.vms.remove(vm)
        dst.vms.append(vm)
        vm.uri = dst.uri
        return wall

    def copy_xml(self, vm, host, paths):
        """The domain's migratable XML with its disks at ``paths`` ({old: new}), in a file both hosts see."""
        xml = host.virsh('dumpxml', '--migratable', vm.name).stdout
        for old, new in paths.items():
            xml = xml.replace("file='%s'" % old, "file='%s'" % new)
        path = os.path.join(vm.workdir, 'migrate.xml')
        with open(path, 'w') as f:
            f.write(xml)
        return path

    def copies(self, vm):
        """{original disk path: its copy's path at hv2} (hv2's own IMAGES, seen from inside hv2)."""
        return dict((p, os.path.join(IMAGES, os.path.basename(p))) for p, _fmt in vm.disks.values())

    def back(self, vm, copied):
        """The domain back to hv1, untimed (its disks too, onto the images it started from)."""
        xml = self.copy_xml(vm, self.hv2, dict((v, k) for k, v in self.copies(vm).items())) if copied else None
        self.virsh_migrate(vm, self.hv2, self.hv1, ['--copy-storage-all'] if copied else [], xml)
        if copied:
            for p in self.copies(vm):
                os.unlink(self.hv2.path('lib', 'images', os.path.basename(p)))

    def libvirt_row(self, vm, row, opts, extra):
        events = SourceStats(self.hv1, vm.name)
        moved_at = self.moved_at
        with _cpu.CpuUse(self.fleet.hosts) as cpu:
            self._libvirt_migrate(vm, row, opts, extra)
        s = events.wait()
        row.update(total_s=s['time_elapsed'] / 1000.0, downtime_ms=s.get('downtime'),
                   memory_bytes=s.get('memory_processed', 0), disk_bytes=s.get('disk_processed', 0),
                   iterations=s.get('memory_iteration'))
        row['bytes'] = row['memory_bytes'] + row['disk_bytes']
        start = events.ended - row['total_s']
        row['job_start_after_move_s'] = round(start - moved_at, 2)
        if row['tool'] in self.tools:
            self.module_start[row['case']] = row['job_start_after_move_s']
        else:
            self.virsh_lag = start - self.virsh_launched
        row['passes_at_s'] = [round(t - start, 2) for t in events.passes]
        row['cpu_s'], row['vmstat'], row['cpu_window_s'] = cpu.seconds(start, events.ended)

    def start_as_late(self, row):
        """virsh's job starts as long after the guest's last move as vm_migrate's did (its ansible-playbook
        and module start first). On these machines the kernel hands memory freed by the last move back to
        the outer hypervisor within seconds (free page reporting), and the destination QEMU's first touch of
        memory handed back costs several times more: a migration started later after the last move runs
        slower, whichever tool starts it (NOTES)."""
        target = self.module_start.get(row['case'])
        if target is not None:
            wait = self.moved_at + target - self.virsh_lag - time.monotonic()
            row['virsh_waited_s'] = round(max(0.0, wait), 2)
            time.sleep(max(0.0, wait))
        self.virsh_launched = time.monotonic()

    def _libvirt_migrate(self, vm, row, opts, extra):
        case = row['case']
        if row['tool'] in self.tools:
            r, wall = run_alone({'vmfleet.kvm.vm_migrate': dict(opts, domain=vm.name, timeout=self.timeout,
                                                                destination_uri='qemu+ssh://vmfleet@%s/system' % self.hv2.address)},
                                vm.workdir, self.fleet.inventory, self.hv1.name, timeout=self.timeout + 300,
                                collections=self.tools[row['tool']])
            row['wall_s'] = round(wall, 2)
            if r.get('failed'):
                fail('vm_migrate %s' % case, r)
            row.update(module=dict((k, r.get(k)) for k in ('duration_s', 'downtime_ms', 'bytes', 'disk_bytes', 'mode',
                                                           'why', 'iterations', 'rate_mib_s')))
            self.hv1.vms.remove(vm)
            self.hv2.vms.append(vm)
            vm.uri = self.hv2.uri
        else:
            xml = None
            if 'storage' in opts:  # what virsh needs first: the images at the destination, and the XML naming them
                t0 = time.monotonic()
                for p, fmt in vm.disks.values():
                    size = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json', p], check=True,
                                                     capture_output=True, text=True).stdout)['virtual-size']
                    self.hv2.run(['qemu-img', 'create', '-q', '-f', fmt, self.copies(vm)[p], str(size)])
                row['precreate_s'] = round(time.monotonic() - t0, 2)
                xml = self.copy_xml(vm, self.hv1, self.copies(vm))
            self.start_as_late(row)
            row['wall_s'] = round(self.virsh_migrate(vm, self.hv1, self.hv2, extra, xml), 2)

    # --- raw QEMU ------------------------------------------------------------------------------
    def by_hand(self, vm, row):
        """What a user does without the module: the source's command line at hv2 with -incoming (its own
        QMP socket and pidfile, the serial log appended to), QMP migrate, quit the source."""
        # its socket and pidfile in hv2's own directory: the VM's directory is shared, and the source holds
        # its pidfile locked
        argv, i = [], 0
        src = QemuGuest._build_argv(vm)
        while i < len(src):
            a, nxt = src[i], (src[i + 1] if i + 1 < len(src) else '')
            if a == '-qmp':
                argv += [a, 'unix:/var/lib/vmfleet/hand.qmp,server=on,wait=off']
            elif a == '-pidfile':
                argv += [a, '/var/lib/vmfleet/hand.pid']
            elif a == '-serial':
                argv += ['-chardev', 'file,id=s0,path=%s,append=on' % nxt[len('file:'):], '-serial', 'chardev:s0']
            else:
                argv.append(a)
                i += 1
                continue
            i += 2
        port = 4444
        t0 = time.monotonic()
        self.hv2.run(argv + ['-incoming', 'tcp:%s:%d' % (self.hv2.address, port), '-daemonize'])
        qmp(vm.qmp_socket, 'migrate', uri='tcp:%s:%d' % (self.hv2.address, port))
        while True:
            info = qmp(vm.qmp_socket, 'query-migrate')
            if info.get('status') in ('completed', 'failed', 'cancelled'):
                break
            if time.monotonic() - t0 > self.timeout:
                qmp(vm.qmp_socket, 'migrate_cancel')
                raise RuntimeError('by hand: not done within %ds' % self.timeout)
            time.sleep(0.2)
        if info['status'] != 'completed':
            raise RuntimeError('by hand: %s' % info)
        try:
            qmp(vm.qmp_socket, 'quit')
        except EOFError:
            pass  # it quit before the client closed
        row.update(wall_s=round(time.monotonic() - t0, 2), total_s=info['total-time'] / 1000.0,
                   downtime_ms=info.get('downtime'), memory_bytes=info['ram']['transferred'], disk_bytes=0,
                   bytes=info['ram']['transferred'], iterations=info['ram'].get('dirty-sync-count'))
        vm.proc.wait(30)
        return True

    def raw_module(self, vm, row, back=True, tool='vm_migrate'):
        """vm_migrate hv2 -> hv1 of the QEMU started by hand, back onto the VM's own socket; or, when the
        move by hand did not succeed (``back`` false), hv1 -> hv2 onto the socket the hand-made one has."""
        src, dst = (self.hv2, self.hv1) if back else (self.hv1, self.hv2)
        socks = ('/var/lib/vmfleet/hand.qmp', vm.qmp_socket)
        r, wall = run_alone({'vmfleet.kvm.vm_migrate': dict(qmp_socket=socks[not back], destination_qmp_socket=socks[back],
                                                            destination_uri='ssh://vmfleet@%s' % dst.address,
                                                            timeout=self.timeout)},
                            vm.workdir, self.fleet.inventory, src.name, timeout=self.timeout + 300,
                            collections=self.tools[tool])
        row['wall_s'] = round(wall, 2)
        if r.get('failed'):
            fail('raw vm_migrate', r)
        row.update(module=dict((k, r.get(k)) for k in ('duration_s', 'downtime_ms', 'bytes', 'mode', 'why', 'rate_mib_s')),
                   total_s=r['duration_s'], downtime_ms=r['downtime_ms'], bytes=r['bytes'], memory_bytes=r['bytes'],
                   disk_bytes=0)

    # --- one guest ------------------------------------------------------------------------------
    def measure(self, row, fn, *args):
        """Run one migration into ``row``; the guest must count on afterwards. A failure is recorded."""
        vm = args[0]
        # under TCG a guest fresh from a move runs slow for a while (its translated code stayed with the old QEMU)
        # and dirties less: the next migration would look faster. Each starts once the guest ticked a few times.
        offset = os.path.getsize(vm.serial_log)
        for tick in range(SETTLE_TICKS):
            offset = wait_serial(vm.serial_log, COUNTER, 120, offset).end()
        row['load_avg_1m'] = round(os.getloadavg()[0], 2)
        out = None
        with _results.row_of(self.rows, row):
            out = fn(*args)
            wait_serial(vm.serial_log, COUNTER, 180, offset)
            row['guest_counts_on'] = True
        return out

    def guest(self, backend, size, load, repeats):
        fill, dirty = size // 2, size // 8 if load == 'dirty' else 0
        cmdline = 'vmfleet.fill=%d' % fill + (' vmfleet.dirty=%d' % dirty if dirty else '')
        name = 'vmfb-%s-%d-%s' % ('lv' if backend == 'libvirt' else 'raw', size, load)
        vm = self.hv1.add_vm(backend, name, size, detect_accel(), False, cmdline_extra=cmdline)
        t0 = time.monotonic()
        wait_serial(vm.serial_log, r'VMFLEET-FILL %d ' % fill, 900)
        if dirty:
            wait_serial(vm.serial_log, r'VMFLEET-DIRTY-PASS ', 900)
        ready_s = round(time.monotonic() - t0, 1)
        print('%s: %d MiB, %s, ready in %.0f s' % (backend, size, load, ready_s), flush=True)
        base = dict(backend=backend, size_mib=size, load=load, fill_mib=fill, dirty_mib=dirty, ready_s=ready_s)
        try:
            if backend == 'libvirt':
                # untimed, there and back: the first move of a fresh guest meets destination memory the outer
                # hypervisor never backed yet, several times slower, and would fall on whichever tool goes first
                self.virsh_migrate(vm, self.hv1, self.hv2)
                self.back(vm, False)
                self.moved_at = time.monotonic()
            for rnd in range(repeats):
                if backend == 'libvirt':
                    for case, opts, extra in [c for c in CASES if c[0] in self.cases]:
                        # the order turns each round: the first of a row ran slower in a run of ours, whichever it was
                        tools = list(self.tools) + ['virsh']
                        for tool in (tools if rnd % 2 == 0 else tools[::-1]):
                            row = dict(base, case=case, tool=tool, round=rnd + 1)
                            self.measure(row, self.libvirt_row, vm, row, opts, extra)
                            if vm in self.hv2.vms:
                                self.back(vm, 'storage' in opts)
                                self.moved_at = time.monotonic()
                else:
                    row = dict(base, case='shared', tool='by hand', round=rnd + 1, direction='hv1 -> hv2')
                    moved = self.measure(row, self.by_hand, vm, row)
                    # by hand failed (cancelled: the VM runs on at hv1): the module takes the same way
                    row = dict(base, case='shared', tool='vm_migrate', round=rnd + 1,
                               direction='hv2 -> hv1' if moved else 'hv1 -> hv2')
                    self.measure(row, self.raw_module, vm, row, bool(moved))
                    if not moved:
                        break
                    if 'vm_migrate (before)' in self.tools:
                        # the earlier version the same way: hv1 -> hv2 onto the socket by hand uses, back untimed
                        row = dict(base, case='shared', tool='vm_migrate (before)', round=rnd + 1, direction='hv1 -> hv2')
                        self.measure(row, self.raw_module, vm, row, False, 'vm_migrate (before)')
                        self.raw_module(vm, dict(), True)
        finally:
            for h in self.fleet.hosts:
                if vm in h.vms:
                    h.vms.remove(vm)
            if backend == 'libvirt':
                vm.stop()
            if backend == 'qemu':
                quit_any((vm.qmp_socket, self.hv2.path('vmfleet', 'hand.qmp')))


def summarize(rows):
    groups = {}
    for r in rows:
        if 'error' not in r:
            groups.setdefault((r['backend'], r['size_mib'], r['load'], r['case'], r['tool']), []).append(r)
    out = []
    for (backend, size, load, case, tool), rs in groups.items():
        med = dict((k, statistics.median(r[k] for r in rs)) for k in ('total_s', 'wall_s', 'bytes', 'job_start_after_move_s')
                   if all(r.get(k) is not None for r in rs))
        downs = [r['downtime_ms'] for r in rs if r.get('downtime_ms') is not None]
        out.append(dict(backend=backend, size_mib=size, load=load, case=case, tool=tool, runs=len(rs),
                        total_s=round(med['total_s'], 2), wall_s=round(med['wall_s'], 2),
                        downtime_ms=statistics.median(downs) if downs else None,
                        mib_moved=round(med['bytes'] / MIB, 1),
                        start_after_move_s=round(med['job_start_after_move_s'], 2) if 'job_start_after_move_s' in med else None,
                        precreate_s=rs[0].get('precreate_s'),
                        modes=sorted(set(r['module']['mode'] for r in rs if r.get('module')))))
    return out


def markdown(result):
    lines = ['# Live migration: vmfleet.kvm.vm_migrate vs virsh migrate / by hand', '',
             'Run %s on %s (%d CPUs, %s); load average %s at start, %s at end. Sizes run: %s; loads: %s.' % (
                 result['date'], result['host'], result['cpus'], result['accel'], result['load_avg_start'],
                 result['load_avg_end'], result['sizes_mib'], result['loads']), '']
    lines += ['%s' % n for n in result['not_run']] + ([''] if result['not_run'] else [])
    lines += ['| backend | RAM MiB | load | case | tool | total s | wall s | downtime ms | MiB moved | start after move s | mode |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
    for s in result['summary']:
        lines.append('| %s | %d | %s | %s | %s | %.2f | %.2f%s | %s | %.0f | %s | %s |' % (
            s['backend'], s['size_mib'], s['load'], s['case'], s['tool'], s['total_s'], s['wall_s'],
            ' (+%.2f pre-create)' % s['precreate_s'] if s['precreate_s'] is not None else '', s['downtime_ms'],
            s['mib_moved'], s.get('start_after_move_s'), ', '.join(s['modes'])))
    errors = [r for r in result['rows'] if 'error' in r]
    if errors:
        lines += ['', 'Failed runs:', ''] + ['- %s %d MiB %s %s %s: %s' % (
            r['backend'], r['size_mib'], r['load'], r['case'], r['tool'], r['error'][:300]) for r in errors]
    lines += ['', result['notes'], '']
    return '\n'.join(lines)


def plot(summary, path):
    plt = _plot.pyplot()
    if plt is None:
        return False
    groups = []
    for s in summary:
        key = '%s %d MiB %s\n%s' % (s['backend'], s['size_mib'], s['load'], s['case'])
        if key not in groups:
            groups.append(key)
    tools = ('vm_migrate', 'vm_migrate (before)', 'virsh', 'by hand')
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 2.2 * len(groups) * 3 / 2), 5))
    for ax, key, title in zip(axes, ('total_s', 'downtime_ms', 'mib_moved'),
                              ('total time (s)', 'guest downtime (ms)', 'MiB moved')):
        for j, tool in enumerate(tools):
            xs, ys = [], []
            for i, g in enumerate(groups):
                s = next((s for s in summary if s['tool'] == tool and '%s %d MiB %s\n%s' % (
                    s['backend'], s['size_mib'], s['load'], s['case']) == g), None)
                if s and s[key] is not None:
                    xs.append(i + (j - 1.5) * 0.8 / len(tools))
                    ys.append(s[key])
            if xs:
                ax.bar(xs, ys, width=0.8 / len(tools), label=tool)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=40, ha='right', fontsize=7)
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _plot.save(fig, path, 'live migration between two simulated hypervisors (TCG guests, shared 2-core machine)',
                      dpi=100)


NOTES = (
    'total s: libvirt\'s own time_elapsed of the migration job (the statistics the source sends when the job '
    'ends: the JOB_COMPLETED event, which vm_migrate reads too), '
    'for vm_migrate and virsh alike; raw QEMU: query-migrate total-time by hand, the module\'s duration_s for '
    'vm_migrate. wall s: the whole ansible-playbook run of the one vm_migrate task (start, SSH, module, and a debug '
    'task printing its result, which connects nowhere; runs before 2026-12-04 also counted a second task copying the '
    'result through the controller, 1-2 s more; each run opens its own SSH connection to the host, as an occasional '
    'run does, where earlier runs reused the one of a run less than a minute before) or the whole virsh command (its '
    'SSH connection to the destination included); for virsh --copy-storage-all the images had to be created '
    'at the destination first (pre-create, not in wall s). downtime ms: libvirt\'s / QEMU\'s downtime of the '
    'switch. MiB moved: memory and disk bytes processed. mode: what vm_migrate reports it ran. Each libvirt '
    'migration goes hv1 -> hv2 over the rig\'s veths and the guest goes back untimed before the next; the raw '
    'QEMU VM goes hv1 -> hv2 by hand and hv2 -> hv1 with vm_migrate. Each measured migration starts after the '
    'guest printed 5 counter lines (~5 s) since the last move: under TCG a guest fresh from a move runs and dirties '
    'slower (an earlier run without this wait had virsh, started at once after the move back, move a dirtying '
    'guest in fewer passes than vm_migrate, started after ansible-playbook\'s ~5 s). By hand, a raw QEMU '
    'migrates at QEMU\'s default max-bandwidth (128 MiB/s); vm_migrate lifts the limit (as libvirt does). The '
    'raw vm_migrate total is its duration_s, which includes starting the destination QEMU over SSH; by hand, '
    'wall s includes starting it (locally, in hv2\'s namespaces). Guests run under TCG on a 2-core machine '
    'that other people\'s tests use at the same time (load_avg_1m in each row): figures are noisy. '
    'start after move s: from the end of the guest\'s last move to the start of the measured job. These machines '
    'are themselves VMs whose kernel hands freed memory back to the outer hypervisor (free page reporting, '
    'in 8 MiB chunks, from 2 s after the free on); touching 2 GiB again took 0.25 s at once, 3.9 s after 2 s, '
    '6.7 s after 4 s, 8.8 s after 8 s and 15.7 s after 16 s. The destination QEMU spends about 87% of its '
    'time zeroing the guest\'s new memory (perf: clear_page_erms), so a migration started later after the '
    'last move (which freed the guest\'s old memory) runs slower whichever tool starts it. Hence each guest '
    'moves there and back once, untimed, before the first measured migration (a fresh guest\'s first '
    'destination meets memory never backed yet), and virsh waits (virsh_waited_s) until its job starts as '
    'long after the last move as vm_migrate\'s did after its ansible-playbook and module start. cpu_s in each row: '
    'CPU seconds [total, system, waited runnable] per host, process and thread during the job (bench/_cpu.py); '
    'vmstat: the kernel\'s memory counters over it.')


def _guest_init():
    """Which guest ran: the last commit of its init, and whether the tree changes it."""
    git = ['git', '-C', os.path.dirname(HERE)]
    last = subprocess.run(git + ['log', '-1', '--format=%h %s', '--', 'tests/guest/init'], check=False,
                          capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(git + ['diff', '--quiet', '--', 'tests/guest/init'], check=False).returncode
    return last + (' (+ uncommitted changes)' if changed else '')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default='1024',
                    help='comma-separated MiB of guest RAM (default 1024; 4096 too when there is time: TCG fills ~20 MB/s)')
    ap.add_argument('--loads', default='idle,dirty', help='idle, dirty (default both)')
    ap.add_argument('--backends', default='libvirt,qemu', help='libvirt, qemu (default both)')
    ap.add_argument('--repeats', type=int, default=1)
    ap.add_argument('--cases', default=','.join(c[0] for c in CASES),
                    help='libvirt cases, comma-separated (default all: %s)' % ', '.join(c[0] for c in CASES))
    ap.add_argument('--timeout', type=int, default=300, help='seconds one migration may take')
    ap.add_argument('--name', default='migrate', help='file name (no suffix) of the results')
    ap.add_argument('--before', help='a checkout of an earlier version (with .collections linked): its vm_migrate too, '
                                     "as 'vm_migrate (before)'")
    args = ap.parse_args()
    before = os.path.join(os.path.abspath(args.before), '.collections') if args.before else None
    sizes = [int(s) for s in args.sizes.split(',') if s]
    loads = [x for x in args.loads.split(',') if x]
    backends = [x for x in args.backends.split(',') if x]
    not_run = []
    with open(os.path.join(os.path.dirname(HERE), 'tests', 'guest', 'init')) as f:
        if 'dirty' in loads and 'vmfleet.dirty=' not in f.read():
            loads.remove('dirty')
            not_run.append('dirty: not run, this guest has no vmfleet.dirty (a guest that keeps writing memory)')
    if 4096 not in sizes:
        not_run.append('4096 MiB: not run in this run (--sizes 1024,4096: the guest fills its RAM at ~20 MB/s under TCG)')
    result = _results.header('migrate',
                             libvirt='%d.%d.%d' % (libvirt.getVersion() // 1000000, libvirt.getVersion() // 1000 % 1000,
                                                   libvirt.getVersion() % 1000),
                             guest_init=_guest_init(),
                             sizes_mib=sizes, loads=loads, backends=backends, repeats=args.repeats, timeout_s=args.timeout,
                             cases=args.cases,
                             before=args.before,
                             not_run=not_run)
    fleet = Fleet(hosts=2, vms_per_host=0, prefix='vmfb', subnet='10.216')
    bench = Bench(fleet, args.timeout, before, [c for c in args.cases.split(',') if c])
    with _results.recorded(result):
        try:
            _event_loop()
            fleet.up()
            for size in sizes:
                for load in loads:
                    for backend in backends:
                        bench.guest(backend, size, load, args.repeats)
        finally:
            fleet.down()
    result.update(rows=bench.rows, summary=summarize(bench.rows), notes=NOTES)
    path = _results.write(RESULTS, args.name, result, markdown(result))
    plot(result['summary'], path + '.png')
    print(markdown(result))
    return 1 if result['failed'] or any('error' in r for r in bench.rows) else 0


if __name__ == '__main__':
    sys.exit(main())
