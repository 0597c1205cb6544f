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

The revert (``--what revert``, issue 18): a raw QEMU guest's instant snapshot
reverted with ``load: full`` and ``load: background`` side by side with QEMU's own
loader of a plain stream snapshot (what reverting was before), the page cache
dropped before each, on the native disk and throttled to 450 MB/s: old QEMU exit
-> the guest's first tick, -> all RAM loaded, load rate against dd of the image
(see REVERT_NOTES).

Usage: python bench/instant_snapshot.py [--what snapshot,revert] [--sizes 512,2048,4096]
       [--backends qemu,libvirt]
Default sizes: 512,2048 for snapshot (under TCG the guest fills its RAM at ~20 MB/s,
so 4096 takes minutes just to fill; pass it when there is time), 1024,4096,6144
for revert (filled with vmfleet.fillrep, fast).
Writes bench/results/instant_snapshot.json and instant_revert.json/.md (and .png
if matplotlib is there).
"""

import argparse
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

from rig.accel import detect_accel
from rig.ansible_run import run_tasks
from rig.guest import counters_in, wait_serial
from rig.libvirt_guest import LibvirtGuest
from rig.qemu_guest import QemuGuest
from rig.qmp import qmp
import _plot

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


def task(vm, backend, name, mode, memdir, state='present', **extra):
    """One vmfleet.kvm.snapshot task; its result."""
    args = dict(extra, name=name, state=state, timeout=1800)
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
    vm = QemuGuest(wd, **kw) if backend == 'qemu' else LibvirtGuest(wd, disks=LV_DISKS, **kw)
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
    plt = _plot.pyplot()
    if plt is None:
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
    return _plot.save(fig, path, 'vmfleet.kvm.snapshot: internal vs instant, raw QEMU and libvirt (virsh = libvirt\'s own)')


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


# -- the revert (issue 18): QEMU's own loader of a stream vs load: full / load: background --

REVERT_ROUTES = ('stream', 'full', 'background')
SLOW_BPS = 450 * 1000 * 1000  # the seed's SATA SSD class
QCOW2_DISKS = ('root', 'data')


def drop_caches():
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


class SlowDisk:
    """Every read of this process and its children from the disk holding ``path`` at
    ``bps`` bytes/s: a blkio cgroup (v1 throttle or v2 io.max) this process moves into."""

    def __init__(self, path, bps):
        st = os.stat(path)
        dev = '/sys/dev/block/%d:%d' % (os.major(st.st_dev), os.minor(st.st_dev))
        if os.path.exists(dev + '/partition'):  # throttles apply to whole disks
            dev = os.path.dirname(os.path.realpath(dev))
        with open(os.path.join(dev, 'dev')) as f:
            self.device = f.read().strip()
        v1 = '/sys/fs/cgroup/blkio'
        if os.path.exists(os.path.join(v1, 'blkio.throttle.read_bps_device')):
            self.parent, self.knob, rule = v1, 'blkio.throttle.read_bps_device', '%s %d' % (self.device, bps)
        else:  # cgroup v2, if its io controller is on
            self.parent, self.knob, rule = '/sys/fs/cgroup', 'io.max', '%s rbps=%d' % (self.device, bps)
        self.how = '%s/%s: %s' % (self.parent, self.knob, rule)
        self.path = os.path.join(self.parent, 'vmfleet-bench-revert-%d' % os.getpid())
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, self.knob), 'w') as f:
            f.write(rule + '\n')

    def __enter__(self):
        with open(os.path.join(self.path, 'cgroup.procs'), 'w') as f:
            f.write('%d\n' % os.getpid())
        return self

    def __exit__(self, *exc):
        # this process and what it started (a QEMU) back out, so that the group can go
        with open(os.path.join(self.path, 'cgroup.procs')) as f:
            pids = f.read().split()
        for pid in pids:
            try:
                with open(os.path.join(self.parent, 'cgroup.procs'), 'w') as f:
                    f.write(pid + '\n')
            except OSError:
                pass


def dd_rate(path, direct):
    """MB/s of a dd read of ``path`` with the page cache dropped: of the bytes it holds on
    disk (a mapped-ram image has holes where the guest's pages were zero, read for free)."""
    drop_caches()
    t0 = time.monotonic()
    subprocess.run(['dd', 'if=' + path, 'of=/dev/null', 'bs=4M'] + (['iflag=direct'] if direct else []),
                   check=True, capture_output=True)
    return round(min(os.stat(path).st_blocks * 512, os.path.getsize(path)) / 1e6 / (time.monotonic() - t0), 1)


class RevertWatch:
    """Host times of a revert: the old QEMU's exit (its pidfd), the postcopy_source helper
    appearing (its /proc entry), the relaunched QEMU's first counter line (its serial file,
    which the relaunch truncates)."""

    def __init__(self, pid, serial_log, memory_file=None):
        self.t_exit = self.t_helper = self.t_tick = None
        self._fd = os.pidfd_open(pid)
        self._args = (serial_log, memory_file and memory_file.encode())
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _helper_seen(self, memory_file):
        for pid in os.listdir('/proc'):
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    argv = f.read().split(b'\0')
            except OSError:
                continue
            if memory_file in argv and any(b'postcopy_source' in a for a in argv):
                return True
        return False

    def _run(self):
        serial_log, memory_file = self._args
        p = select.poll()
        p.register(self._fd, select.POLLIN)
        while not p.poll(1000):
            pass
        self.t_exit = time.monotonic()
        os.close(self._fd)
        size, truncated = os.path.getsize(serial_log), False
        end = self.t_exit + 1800
        while self.t_tick is None and time.monotonic() < end:
            now = time.monotonic()
            if memory_file and self.t_helper is None and self._helper_seen(memory_file):
                self.t_helper = now
            try:
                n = os.path.getsize(serial_log)
                truncated = truncated or n < size
                if truncated:
                    with open(serial_log, 'rb') as f:
                        if counters_in(f.read()):
                            self.t_tick = now
            except OSError:
                pass
            time.sleep(0.002)

    def wait(self):
        self._t.join()
        if self.t_tick is None:
            raise RuntimeError('no counter line after the revert')


def stream_snapshot(vm, path):
    """What a user would do without the module: disk snapshots, then QEMU's own
    background-snapshot of RAM to a plain ``file:`` stream (no mapped-ram)."""
    qmp(vm.qmp_socket, 'transaction', actions=[
        {'type': 'blockdev-snapshot-internal-sync', 'data': {'device': d, 'name': 'bench-stream'}}
        for d in QCOW2_DISKS])
    qmp(vm.qmp_socket, 'migrate-set-capabilities', capabilities=[
        {'capability': 'background-snapshot', 'state': True}, {'capability': 'mapped-ram', 'state': False}])
    qmp(vm.qmp_socket, 'migrate', uri='file:' + path)
    while qmp(vm.qmp_socket, 'query-migrate')['status'] != 'completed':
        time.sleep(0.2)
    qmp(vm.qmp_socket, 'migrate-set-capabilities',
        capabilities=[{'capability': 'background-snapshot', 'state': False}])


def stream_revert(vm, kw, path, watch, started):
    """QEMU's own revert of that stream: quit, disks back, a fresh QEMU with -incoming
    defer loads the file in full, then runs. (load start, loaded) host times."""
    try:
        qmp(vm.qmp_socket, 'quit')
    except EOFError:  # QEMU closes the monitor as it quits
        pass
    while watch.t_exit is None:
        time.sleep(0.002)
    for d in QCOW2_DISKS:
        subprocess.run(['qemu-img', 'snapshot', '-a', 'bench-stream', vm.disk_path(d)], check=True)
    new = QemuGuest(vm.workdir, incoming='defer', **kw)
    started.append(new)
    new.start()
    t_in = time.monotonic()
    qmp(new.qmp_socket, 'migrate-incoming', uri='file:' + path)
    while True:  # as often as the module polls its load
        status = qmp(new.qmp_socket, 'query-migrate').get('status')
        if status == 'completed':
            break
        if status == 'failed':
            raise RuntimeError('migrate-incoming of %s failed' % path)
        time.sleep(0.02)
    t_done = time.monotonic()
    qmp(new.qmp_socket, 'cont')
    return t_in, t_done


def revert_row(vm, kw, route, snap, memdir, stream_path, started):
    drop_caches()
    mapped = snap['memory_file']
    watch = RevertWatch(vm.pid, vm.serial_log, None if route == 'stream' else mapped)
    row = dict(route=route)
    if route == 'stream':
        t_in, t_done = stream_revert(vm, kw, stream_path, watch, started)
        load_s = t_done - t_in
        row.update(load_s=round(load_s, 3), rate_mib_s=round(snap['ram_bytes'] / 1048576.0 / load_s, 1))
    else:
        r = task(vm, 'qemu', 'bench-rv', 'instant', memdir, state='reverted', load=route)
        load = r['load']
        row.update(load_s=load['seconds'], rate_mib_s=load['rate_mib_s'], requested=load['requested'],
                   running_after_s_module=r.get('running_after_s'), module_s=r['duration_s'])
    watch.wait()
    if route != 'stream':  # the module's load clock starts as it spawns its helper
        t_done = (watch.t_helper or watch.t_exit) + row['load_s']
    row.update(exit_to_tick_s=round(watch.t_tick - watch.t_exit, 3),
               exit_to_loaded_s=round(t_done - watch.t_exit, 3))
    return row


def revert_size(root, accel, size_mib, slow, save):
    name = 'vmfleet-bench-rv-%d' % size_mib
    wd = os.path.join(root, 'rv%d' % size_mib)
    memdir = os.path.join(wd, 'mem')
    os.makedirs(memdir)
    os.chmod(wd, 0o755)
    kw = dict(name=name, accel=accel, memory_mib=size_mib + 512, cmdline_extra='vmfleet.fillrep=%d' % size_mib)
    vm = QemuGuest(wd, **kw)
    started, rows = [vm], []
    vm.start()
    try:
        t0 = time.monotonic()
        wait_serial(vm.serial_log, r'VMFLEET-FILL %d ' % size_mib, 3600)
        fill_s = round(time.monotonic() - t0, 1)
        vm.wait_booted(300)
        snap = task(vm, 'qemu', 'bench-rv', 'instant', memdir)
        snap = dict(snap['snapshot'], ram_bytes=snap['ram_bytes'])
        stream_path = os.path.join(memdir, 'stream.vmstate')
        stream_snapshot(vm, stream_path)
        print('  %d MiB: filled in %.0fs, snapshots taken' % (size_mib, fill_s), flush=True)
        for disk in ['native'] + (['slow'] if slow else []):
            with (slow if disk == 'slow' else contextlib.nullcontext()):
                dd = dict((k, dd_rate(p, direct)) for k, p, direct in (
                    ('dd_mapped_mb_s', snap['memory_file'], False), ('dd_stream_mb_s', stream_path, False),
                    ('dd_direct_mb_s', snap['memory_file'], True)))
                for route in REVERT_ROUTES:
                    image = stream_path if route == 'stream' else snap['memory_file']
                    row = dict(size_mib=size_mib, disk=disk, load_avg_1m=round(os.getloadavg()[0], 1),
                               measured_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                               ram_mib=round(snap['ram_bytes'] / 1048576.0),
                               image_mib=round(os.path.getsize(image) / 1048576.0),
                               image_data_mib=round(os.stat(image).st_blocks * 512 / 1048576.0),
                               **dict(dd, **revert_row(vm, kw, route, snap, memdir, stream_path, started)))
                    print('  %s' % row, flush=True)
                    rows.append(row)
                    save(rows, fill_s)  # a long run stopped later keeps what it measured
                    vm.wait_booted(300)
    finally:
        for v in started:
            v.stop()
        shutil.rmtree(wd, ignore_errors=True)


def plot_revert(rows, path):
    plt = _plot.pyplot()
    if plt is None:
        return False
    sizes = sorted(set(r['size_mib'] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    label = {'stream': 'revert today (QEMU file: loader, load all, then run)',
             'full': 'load: full (all RAM, then run)', 'background': 'load: background (run, RAM follows)'}
    for route, color in zip(REVERT_ROUTES, ('tab:gray', 'tab:blue', 'tab:green')):
        for disk, style in (('native', '-'), ('slow', '--')):
            pts = [next((r for r in rows if r['size_mib'] == s and r['route'] == route and r['disk'] == disk),
                        None) for s in sizes]
            if not any(pts):
                continue
            for ax, key in zip(axes, ('exit_to_tick_s', 'exit_to_loaded_s', 'rate_mib_s')):
                ax.plot(sizes, [p[key] if p else float('nan') for p in pts], style, marker='o', color=color,
                        label='%s, %s disk' % (label[route], 'native' if disk == 'native' else '450 MB/s'))
    for disk, style in (('native', '-'), ('slow', '--')):
        pts = [next((r for r in rows if r['size_mib'] == s and r['disk'] == disk), None) for s in sizes]
        if any(pts):
            axes[2].plot(sizes, [p['dd_mapped_mb_s'] / 1.048576 if p else float('nan') for p in pts], style,
                         marker='x', color='k', label='dd of the image (cache dropped), %s disk' % disk)
    for ax, title, unit in zip(axes, ('old QEMU exit -> guest\'s first tick', 'old QEMU exit -> all RAM loaded',
                                      'load rate'), ('s', 's', 'MiB/s')):
        ax.set_title(title)
        ax.set_xlabel('dirty guest RAM (MiB; guest RAM +512)')
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
    fig.legend(*axes[2].get_legend_handles_labels(), loc='lower center', ncol=4, fontsize=7)
    return _plot.save(fig, path, 'instant snapshot revert of a raw QEMU VM, page cache dropped before each revert',
                      rect=(0, 0.12, 1, 1))


REVERT_NOTES = (
    "One raw QEMU guest per size fills N MiB of its RAM (vmfleet.fillrep: one random MiB repeated, no zero "
    "page), guest RAM N+512 MiB. Two snapshots of it: the module's instant snapshot (mapped-ram) and, by hand "
    "over QMP, QEMU's own background-snapshot to a plain file: stream with internal disk snapshots (what "
    "reverting looked like before: quit, qemu-img snapshot -a, a fresh QEMU with -incoming defer, "
    "migrate-incoming file:, cont). Routes: stream = that by hand; full / background = vmfleet.kvm.snapshot "
    "state: reverted with load: full / background through ansible-playbook. Page cache dropped before each "
    "revert and each dd. exit_to_tick_s: from the old QEMU's exit (pidfd) to the first VMFLEET-COUNTER line "
    "of the relaunched QEMU in its serial file (polled every 2 ms; the guest ticks about once a second, so "
    "up to ~1 s of it is the guest's own sleep); the same for all routes. exit_to_loaded_s: to the moment "
    "QEMU reported the incoming migration completed (stream: polled every 20 ms by the bench; background: "
    "the helper process seen in /proc plus the module's load.seconds, which the module polls every 20 ms; "
    "full, QEMU's own mapped-ram loader with 4 threads since commit d5f95ba: the old QEMU's exit plus "
    "load.seconds, which leaves out the relaunch before the load, so compare exit_to_tick_s). "
    "load_s / rate_mib_s: RAM MiB over the load alone (stream: migrate-incoming -> completed; module: its "
    "load.seconds and load.rate_mib_s). dd_*_mb_s: dd bs=4M of the mapped-ram image (buffered, as both "
    "loaders read; and iflag=direct) and of the stream image, cache dropped, in the same disk condition. "
    "disk slow: every read of the bench and its children (ansible-playbook, the module, its helper, the "
    "relaunched QEMUs) throttled to 450 MB/s by a blkio cgroup on the disk holding the images (see "
    "slow_disk). running_after_s_module: the module's own figure for load: background (its exit time is "
    "polled every 50 ms). Guests run under TCG on a 2-core host; load_avg_1m in each row. The full load "
    "through the collection's helper (before d5f95ba, a run under load) is kept in "
    "instant_revert-helper-full.{json,md,png}.")


def main_revert(sizes):
    accel = detect_accel()
    root = tempfile.mkdtemp(prefix='vmfleet-bench-', dir='/var/tmp')
    os.chmod(root, 0o755)
    try:
        slow = SlowDisk(root, SLOW_BPS)
    except OSError as e:
        slow, why = None, 'no throttled disk: %s' % e
        print(why, flush=True)
    t0 = time.monotonic()
    try:
        for s in sizes:
            print('revert, size %d MiB' % s, flush=True)
            revert_size(root, accel, s, slow, lambda rows, fill_s, s=s: write_revert(rows, {str(s): fill_s}, dict(
                benchmark='instant_revert', accel=accel, host=platform.node(), cpus=os.cpu_count(),
                load_avg_at_end=[round(x, 2) for x in os.getloadavg()], slow_disk=slow.how if slow else why,
                wall_s=round(time.monotonic() - t0, 1), notes=REVERT_NOTES)))
    finally:
        if slow:
            os.rmdir(slow.path)
        shutil.rmtree(root, ignore_errors=True)


def write_revert(rows, fills, out):
    """The results file with ``rows``; other sizes' rows stay, from the run that measured them."""
    path = os.path.join(RESULTS, 'instant_revert.json')
    sizes = set(r['size_mib'] for r in rows)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        rows = rows + [r for r in old['rows'] if r['size_mib'] not in sizes]
        fills = dict(old['fill_seconds'], **fills)
    out.update(rows=sorted(rows, key=lambda r: r['size_mib']), fill_seconds=fills,
               sizes_mib=sorted(set(r['size_mib'] for r in rows)))
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(out, f, indent=1)
    with open(path[:-5] + '.md', 'w') as f:
        f.write(revert_table(out))
    print('wrote %s' % path)
    if plot_revert(rows, os.path.join(RESULTS, 'instant_revert.png')):
        print('wrote %s' % os.path.join(RESULTS, 'instant_revert.png'))


def revert_table(out):
    lines = ['# Instant snapshot revert: load all then run vs run at once (bench/instant_snapshot.py --what revert)',
             '', 'accel %s, %d CPUs, load average at the end %s; slow disk: %s' % (
                 out['accel'], out['cpus'], out['load_avg_at_end'], out['slow_disk']), '',
             '| dirty MiB | disk | route | exit -> first tick s | running (module) s | exit -> all RAM s | load s '
             '| load MiB/s | dd MB/s (buffered / direct) | pages requested | load avg |', '|' + '---|' * 11]
    for r in out['rows']:
        lines.append('| %d | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |' % (
            r['size_mib'], r['disk'], r['route'], r['exit_to_tick_s'], r.get('running_after_s_module') or '',
            r['exit_to_loaded_s'], r['load_s'], r['rate_mib_s'],
            r['dd_mapped_mb_s'] if r['route'] != 'stream' else r['dd_stream_mb_s'], r['dd_direct_mb_s'],
            r.get('requested', ''), r.get('load_avg_1m', '')))
    notes = sorted(set('%d MiB: %s' % (r['size_mib'], r['dd_note']) for r in out['rows'] if r.get('dd_note')))
    return '\n'.join(lines + [''] + notes + ['', out['notes'], ''])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--what', default='snapshot,revert',
                    help='comma-separated: snapshot (pause and revert time per mode), revert (load all vs '
                         'load in the background, bench/results/instant_revert.json); default both')
    ap.add_argument('--sizes', default=os.environ.get('VMFLEET_BENCH_INSTANT_SIZES'),
                    help='comma-separated MiB of dirty guest RAM (default 512,2048 for snapshot, '
                         '1024,4096,6144 for revert)')
    ap.add_argument('--backends', default='qemu,libvirt', help='comma-separated: qemu, libvirt (default both)')
    ap.add_argument('--fresh', action='store_true',
                    help='drop the rows of backends not measured now (by default they are carried over from '
                         'the previous results file, marked carried_over)')
    args = ap.parse_args()
    what = args.what.split(',')
    if 'revert' in what:
        main_revert([int(s) for s in (args.sizes or '1024,4096,6144').split(',') if s])
    if 'snapshot' not in what:
        return
    sizes = [int(s) for s in (args.sizes or '512,2048').split(',') if s]
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
