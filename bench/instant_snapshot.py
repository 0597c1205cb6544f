"""Guest pause of vmfleet.kvm.snapshot mode: internal vs mode: instant (run by
``make bench``, never by the tests).

For each size N (MiB) a raw QEMU guest fills N MiB of its RAM with random data
(``vmfleet.fill=N``), then, through ansible-playbook, takes an internal
snapshot (RAM written while the guest is paused) and an instant snapshot
(background-snapshot: RAM written while the guest runs), side by side.
The pause is measured twice:
  * by the module (``paused_ms``, from QEMU's STOP/RESUME event timestamps),
  * by the guest: it prints a counter about once a second; a host thread
    stamps each line as it reaches the serial file, and the pause is the gap
    around the snapshot minus the guest's usual gap (median).

Usage: python bench/instant_snapshot.py [--sizes 512,2048,4096]
Default sizes: 512,2048 (under TCG the guest fills its RAM at ~20 MB/s, so
4096 takes minutes just to fill; pass it when there is time).
Writes bench/results/instant_snapshot.json (and .png if matplotlib is there).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

from rig.accel import detect_accel
from rig.ansible_run import run_tasks
from rig.guest import counters_in, wait_serial
from rig.qemu_vm import QemuVM

RESULTS = os.path.join(HERE, 'results')


class SerialClock:
    """Host arrival time of every guest counter line."""

    def __init__(self, path):
        self.path = path
        self.stamps = []  # (host monotonic time, counter)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        pos, buf = 0, b''
        while not self._stop.is_set():
            try:
                with open(self.path, 'rb') as f:
                    f.seek(pos)
                    data = f.read()
            except OSError:
                data = b''
            now = time.monotonic()
            if data:
                pos += len(data)
                buf += data
                for n in counters_in(buf):
                    self.stamps.append((now, n))
                cut = buf.rfind(b'\n')
                buf = buf[cut + 1:] if cut >= 0 else buf
            time.sleep(0.005)

    def stop(self):
        self._stop.set()
        self._t.join()

    def pause_ms(self, t_from, t_to):
        """Longest gap between counter lines that overlaps [t_from, t_to],
        minus the median gap of the minute around it."""
        pts = [stamp[0] for stamp in self.stamps]
        gaps = [(pts[i - 1], pts[i]) for i in range(1, len(pts))]
        near = [b - a for a, b in gaps if t_from - 60 <= a <= t_to + 60]
        hit = [b - a for a, b in gaps if b >= t_from and a <= t_to]
        if not hit or len(near) < 3:
            return None, None
        usual = statistics.median(near)
        return round(max(0.0, max(hit) - usual) * 1000.0, 1), round(usual * 1000.0, 1)


def snap(vm, name, mode, memdir, state='present'):
    args = {'qmp_socket': vm.qmp_socket, 'name': name, 'state': state, 'timeout': 1800}
    if mode == 'instant':
        args.update(mode='instant', memory_dir=memdir)
    else:
        args.update(disks=['root', 'data'], vmstate_disk='root')
    [r] = run_tasks([{'vmfleet.kvm.snapshot': args}], timeout=2400)[0]
    if r.get('failed'):
        raise RuntimeError('%s snapshot failed: %s' % (mode, r.get('msg')))
    return r


def one_size(root, accel, size_mib):
    name = 'vmfleet-bench-inst-%d' % size_mib
    wd = os.path.join(root, 's%d' % size_mib)
    os.makedirs(wd)
    memdir = os.path.join(wd, 'mem')
    os.makedirs(memdir)
    vm = QemuVM(wd, name=name, accel=accel, memory_mib=size_mib + 512,
                cmdline_extra='vmfleet.fill=%d' % size_mib)
    rows = []
    vm.start()
    try:
        t0 = time.monotonic()
        wait_serial(vm.serial_log, r'VMFLEET-FILL %d ' % size_mib, 3600)
        fill_s = time.monotonic() - t0
        print('  %d MiB filled in %.0fs' % (size_mib, fill_s), flush=True)
        clock = SerialClock(vm.serial_log)
        time.sleep(8)  # the guest's usual gap, before the first snapshot
        try:
            for mode in ('internal', 'instant'):
                t_a = time.monotonic()
                r = snap(vm, 'bench-%s' % mode, mode, memdir)
                t_b = time.monotonic()
                time.sleep(6)  # gaps after the snapshot, to compare with
                guest_ms, usual_ms = clock.pause_ms(t_a, t_b)
                mem = r['snapshot'].get('memory_file')
                row = dict(size_mib=size_mib, mode=mode, paused_ms_module=r['paused_ms'],
                           paused_ms_guest=guest_ms, guest_usual_gap_ms=usual_ms,
                           duration_s=r['duration_s'],
                           state_bytes=os.path.getsize(mem) if mem else r['snapshot'].get('vm_state_size'))
                print('  %s' % row, flush=True)
                rows.append(row)
                snap(vm, 'bench-%s' % mode, mode, memdir, state='absent')
        finally:
            clock.stop()
    finally:
        vm.stop()
        shutil.rmtree(wd, ignore_errors=True)
    return rows, fill_s


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted(set(r['size_mib'] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, marker in (('internal', 'o'), ('instant', 's')):
        for src, style in (('module', '-'), ('guest', '--')):
            ys = [next((r['paused_ms_' + src] for r in rows if r['size_mib'] == s and r['mode'] == mode), None)
                  for s in sizes]
            ax.plot(sizes, [y if y is not None else float('nan') for y in ys], style, marker=marker,
                    label='%s (%s clock)' % (mode, src))
    ax.set_xlabel('dirty guest RAM (MiB)')
    ax.set_ylabel('guest pause (ms)')
    ax.set_yscale('symlog', linthresh=10)
    ax.set_title('vmfleet.kvm.snapshot: guest pause, internal vs instant')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default=os.environ.get('VMFLEET_BENCH_INSTANT_SIZES', '512,2048'),
                    help='comma-separated MiB of dirty guest RAM (default 512,2048)')
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(',') if s]
    accel = detect_accel()
    root = tempfile.mkdtemp(prefix='vmfleet-bench-', dir='/var/tmp')
    os.chmod(root, 0o755)
    rows, fills = [], {}
    t0 = time.monotonic()
    try:
        for s in sizes:
            print('size %d MiB' % s, flush=True)
            r, fills[s] = one_size(root, accel, s)
            rows.extend(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(RESULTS, exist_ok=True)
    out = dict(benchmark='instant_snapshot', accel=accel, host=platform.node(), cpus=os.cpu_count(),
               sizes_mib=sizes, fill_seconds=fills, wall_s=round(time.monotonic() - t0, 1), rows=rows,
               notes='paused_ms_module: QEMU STOP/RESUME event timestamps as the module reports them; '
                     'paused_ms_guest: longest gap between the guest\'s serial counter lines around the '
                     'snapshot minus the usual gap (resolution ~10 ms, guest loop jitter ~100 ms under TCG).')
    path = os.path.join(RESULTS, 'instant_snapshot.json')
    with open(path, 'w') as f:
        json.dump(out, f, indent=1)
    print('wrote %s' % path)
    if plot(rows, os.path.join(RESULTS, 'instant_snapshot.png')):
        print('wrote %s' % os.path.join(RESULTS, 'instant_snapshot.png'))


if __name__ == '__main__':
    main()
