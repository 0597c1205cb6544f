"""Guest pause and revert time of vmfleet.kvm.snapshot mode: internal vs mode:
instant, on a raw QEMU VM and on a libvirt domain (run by ``make bench``,
never by the tests).

For each size N (MiB) a raw QEMU guest and a libvirt domain each fill N MiB of
their RAM with random data (``vmfleet.fill=N``), then, through
ansible-playbook, take an internal snapshot (RAM written while the guest is
paused) and an instant snapshot (background-snapshot: RAM written while the
guest runs), side by side; the libvirt domain also takes libvirt's own
internal snapshot (``virsh snapshot-create-as``). Each snapshot is reverted
(timed) and deleted before the next.
The pause is measured twice:
  * by the module (``paused_ms``, from QEMU's STOP/RESUME event timestamps),
  * by the guest: it prints a counter about once a second; a host thread
    stamps each line as it reaches the serial file, and the pause is the gap
    around the snapshot minus the guest's usual gap (median).

Usage: python bench/instant_snapshot.py [--sizes 512,2048,4096] [--backends qemu,libvirt]
Default sizes: 512,2048 (under TCG the guest fills its RAM at ~20 MB/s, so
4096 takes minutes just to fill; pass it when there is time).
Writes bench/results/instant_snapshot.json (and .png if matplotlib is there).
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

from rig.accel import detect_accel
from rig.ansible_run import run_tasks
from rig.guest import counters_in, wait_serial
from rig.libvirt_vm import LibvirtVM
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
            try:
                if os.path.getsize(self.path) < pos:  # a relaunched raw QEMU starts its serial file anew
                    pos, buf = 0, b''
            except OSError:
                pass
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


# what each backend's VM is measured with: (mode, how) in order
RUNS = {'qemu': ('internal', 'instant'), 'libvirt': ('virsh', 'internal', 'instant')}
LV_DISKS = (('root', 'qcow2', 64), ('data', 'qcow2', 64))  # all qcow2: libvirt's own snapshot API works


def task(vm, backend, name, mode, memdir, state='present'):
    """One vmfleet.kvm.snapshot task; its result."""
    args = {'name': name, 'state': state, 'timeout': 1800}
    args.update({'qmp_socket': vm.qmp_socket} if backend == 'qemu' else {'domain': vm.name})
    if state == 'present' and mode == 'instant':
        args.update(mode='instant')
    elif state == 'present':
        disks = ['root', 'data'] if backend == 'qemu' else ['vda', 'vdb']
        args.update(disks=disks, vmstate_disk=disks[0])
    args['memory_dir'] = memdir  # reverted/absent find the snapshot's mode by its name
    [r] = run_tasks([{'vmfleet.kvm.snapshot': args}], timeout=2400)[0]
    if r.get('failed'):
        raise RuntimeError('%s snapshot %s failed: %s' % (mode, state, r.get('msg')))
    return r


def virsh_timed(vm, *args):
    """(seconds, error or None) of one virsh command on the domain."""
    t0 = time.monotonic()
    r = vm.virsh(*args, check=False)
    return round(time.monotonic() - t0, 3), (r.stderr.strip() or 'failed') if r.returncode else None


def measure(vm, backend, mode, memdir, clock, size_mib, relaunched):
    name = 'bench-%s' % mode
    t_a = time.monotonic()
    if mode == 'virsh':
        duration, err = virsh_timed(vm, 'snapshot-create-as', vm.name, name)
        if err:
            raise RuntimeError('virsh snapshot-create-as failed: %s' % err)
        r = dict(paused_ms=None, duration_s=duration, route='virsh', snapshot={})
    else:
        r = task(vm, backend, name, mode, memdir)
    t_b = time.monotonic()
    time.sleep(6)  # gaps after the snapshot, to compare with
    guest_ms, usual_ms = clock.pause_ms(t_a, t_b)
    mem = r['snapshot'].get('memory_file')
    state_bytes = os.path.getsize(mem) if mem else r['snapshot'].get('vm_state_size')
    row = dict(size_mib=size_mib, backend=backend, mode=mode, route=r.get('route'),
               paused_ms_module=r['paused_ms'], paused_ms_guest=guest_ms, guest_usual_gap_ms=usual_ms,
               duration_s=r['duration_s'], state_bytes=state_bytes)
    # the revert: back to the snapshot's moment
    if mode == 'virsh':
        row['revert_s'], err = virsh_timed(vm, 'snapshot-revert', vm.name, name, '--running')
        row.update(revert_route='virsh', revert_error=err)
        if err:
            row['revert_s'] = None
        virsh_timed(vm, 'snapshot-delete', vm.name, name)
    else:
        rv = task(vm, backend, name, mode, memdir, state='reverted')
        row.update(revert_s=rv['duration_s'], revert_route=rv.get('route'))
        if rv.get('pid'):
            relaunched.append(rv['pid'])
        task(vm, backend, name, mode, memdir, state='absent')
    time.sleep(4)  # the guest counts again before the next snapshot
    return row


def one_size(root, accel, size_mib, backend):
    name = 'vmfleet-bench-inst-%s-%d' % (backend, size_mib)
    wd = os.path.join(root, '%s%d' % (backend, size_mib))
    os.makedirs(wd)
    os.chmod(wd, 0o755)
    memdir = os.path.join(wd, 'mem')
    os.makedirs(memdir)
    kw = dict(name=name, accel=accel, memory_mib=size_mib + 512, cmdline_extra='vmfleet.fill=%d' % size_mib)
    vm = QemuVM(wd, **kw) if backend == 'qemu' else LibvirtVM(wd, disks=LV_DISKS, **kw)
    rows = []
    relaunched = []
    vm.start()
    try:
        t0 = time.monotonic()
        wait_serial(vm.serial_log, r'VMFLEET-FILL %d ' % size_mib, 3600)
        fill_s = time.monotonic() - t0
        print('  %s: %d MiB filled in %.0fs' % (backend, size_mib, fill_s), flush=True)
        clock = SerialClock(vm.serial_log)
        time.sleep(8)  # the guest's usual gap, before the first snapshot
        try:
            for mode in RUNS[backend]:
                row = measure(vm, backend, mode, memdir, clock, size_mib, relaunched)
                print('  %s' % row, flush=True)
                rows.append(row)
        finally:
            clock.stop()
    finally:
        for pid in relaunched:  # a raw QEMU the instant revert started again
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
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
    runs = [(b, m) for b in RUNS for m in RUNS[b] if any(r['backend'] == b and r['mode'] == m for r in rows)]

    def series(backend, mode, key):
        ys = [next((r.get(key) for r in rows if r['size_mib'] == s and r['backend'] == backend
                    and r['mode'] == mode), None) for s in sizes]
        return [y if y is not None else float('nan') for y in ys]

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for backend, mode in runs:
        marker = {'internal': 'o', 'instant': 's', 'virsh': '^'}[mode]
        for src, style in (('module', '-'), ('guest', '--')):
            if mode == 'virsh' and src == 'module':
                continue
            ax.plot(sizes, series(backend, mode, 'paused_ms_' + src), style, marker=marker,
                    label='%s %s (%s clock)' % (backend, mode, src))
        ax2.plot(sizes, series(backend, mode, 'revert_s'), '-', marker=marker, label='%s %s' % (backend, mode))
    ax.set_xlabel('dirty guest RAM (MiB)')
    ax.set_ylabel('guest pause (ms)')
    ax.set_yscale('symlog', linthresh=10)
    ax.set_title('guest pause while the snapshot is taken')
    ax2.set_xlabel('dirty guest RAM (MiB)')
    ax2.set_ylabel('revert (s)')
    ax2.set_title('revert to the snapshot')
    for a in (ax, ax2):
        a.grid(True, which='both', alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle('vmfleet.kvm.snapshot: internal vs instant, raw QEMU and libvirt (virsh = libvirt\'s own)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


NOTES = (
    "paused_ms_module: as the module reports it: on raw QEMU from QEMU's STOP/RESUME event timestamps; "
    "on libvirt (no events through its passthrough) from the controller's clock around suspend..resume, "
    "Python and libvirt round trips included; null for virsh, which reports nothing. "
    "paused_ms_guest: longest gap between the guest's serial counter lines around the snapshot minus the "
    "usual gap (5 ms host poll). Under TCG it is bounded below by the guest's own loop jitter (~100 ms: "
    "busybox forks, sleep 1 and O_DIRECT writes emulated) and, for instant snapshots, by the guest's "
    "slow-down while its RAM is written: each first write to a page waits for QEMU to copy it out "
    "(userfaultfd write-protect) and the migration thread competes with the vCPU thread for the host's "
    "CPUs, so it grows with dirty RAM even though the stop itself stays at milliseconds. "
    "duration_s / revert_s: the module's own duration_s of the snapshot and of the revert task "
    "(virsh: wall time of the virsh command). virsh revert on libvirt 11.3 may fail on internal "
    "snapshots (fixed in 11.4): then revert_error says why and revert_s is null; mode: internal reverts "
    "through QEMU's snapshot-load job there. Instant reverts: raw QEMU relaunches its command line and "
    "loads the stream (qemu-relaunch), libvirt destroys the domain, reverts the disks with qemu-img and "
    "restores the save image with virDomainRestore (libvirt-restore).")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default=os.environ.get('VMFLEET_BENCH_INSTANT_SIZES', '512,2048'),
                    help='comma-separated MiB of dirty guest RAM (default 512,2048)')
    ap.add_argument('--backends', default='qemu,libvirt', help='comma-separated: qemu, libvirt (default both)')
    ap.add_argument('--fresh', action='store_true',
                    help='drop the rows of backends not measured now (by default they are carried over from '
                         'the previous results file, marked carried_over)')
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(',') if s]
    backends = [b for b in args.backends.split(',') if b]
    accel = detect_accel()
    root = tempfile.mkdtemp(prefix='vmfleet-bench-', dir='/var/tmp')
    os.chmod(root, 0o755)
    rows, fills = [], {}
    t0 = time.monotonic()
    try:
        for s in sizes:
            for b in backends:
                print('size %d MiB, %s' % (s, b), flush=True)
                r, fills['%s-%d' % (b, s)] = one_size(root, accel, s, b)
                rows.extend(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, 'instant_snapshot.json')
    if not args.fresh and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        rows += [dict(r, backend=r.get('backend', 'qemu'), carried_over=True)
                 for r in old.get('rows', []) if r.get('backend', 'qemu') not in backends]
    out = dict(benchmark='instant_snapshot', accel=accel, host=platform.node(), cpus=os.cpu_count(),
               load_avg_at_end=[round(x, 2) for x in os.getloadavg()], sizes_mib=sizes, backends=backends,
               fill_seconds=fills, wall_s=round(time.monotonic() - t0, 1), rows=rows, notes=NOTES)
    with open(path, 'w') as f:
        json.dump(out, f, indent=1)
    print('wrote %s' % path)
    if plot(rows, os.path.join(RESULTS, 'instant_snapshot.png')):
        print('wrote %s' % os.path.join(RESULTS, 'instant_snapshot.png'))


if __name__ == '__main__':
    main()
