"""Live block copy benchmark (run by ``make bench``, never by the tests).

On one 2 GiB disk full of incompressible data, side by side in one run:
  * ``qemu-img convert`` of the image (the copy's limit: no guest, no job),
  * ``vmfleet.kvm.drive_mirror`` (state: ready) on a raw QEMU VM and on a
    libvirt domain, through ansible-playbook: time until source and target
    are in sync,
  * ``virsh blockcopy --wait`` on the libvirt domain: the same, by hand;
and, with the guest writing its sequential records the whole time, whether
and when ``background`` and ``write-blocking`` converge, and what each costs
the guest's write rate.

Figures go to bench/results/mirror.json (and mirror.png if matplotlib is there).
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

from rig.accel import detect_accel
from rig.ansible_run import run_tasks
from rig.guest import wait_serial
from rig.libvirt_guest import URI, LibvirtGuest
from rig.qemu_guest import QemuGuest
import _plot

SIZE_MIB = int(os.environ.get('VMFLEET_BENCH_MIRROR_MIB', '2048'))
RESULTS = os.path.join(HERE, 'results')
MIB = 1024.0 * 1024.0


def sh(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def make_data_disk(path):
    """A fully allocated qcow2 of SIZE_MIB of random data (no zero cluster to skip)."""
    raw = path + '.raw'
    with open('/dev/urandom', 'rb') as src, open(raw, 'wb') as dst:
        for _mib in range(SIZE_MIB):
            dst.write(src.read(1 << 20))
    sh(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, path])
    os.unlink(raw)


def drop_caches():
    # the same starting point for every copy: nothing of the source in the page cache
    subprocess.run(['sync'], check=False)
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3\n')
    except OSError:
        pass


def timed_convert(src, dst):
    drop_caches()
    t0 = time.monotonic()
    sh(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'qcow2', src, dst])
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)  # the mirror's target is flushed before it reports ready: same here
    os.close(fd)
    return time.monotonic() - t0


def seq_rate(serial_log, t_from, t_to, samples):
    """Guest records/s between two host times, from (time, seq) samples."""
    pts = [(t, s) for t, s in samples if t_from <= t <= t_to]
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


class SeqWatch:
    """Samples the guest's last reported record number from its serial log."""

    def __init__(self, log):
        self.log = log
        self.samples = []

    def sample(self):
        with open(self.log, 'rb') as f:
            found = re.findall(rb'VMFLEET-SEQ (\d+)\r?\n', f.read())
        if found:
            self.samples.append((time.monotonic(), int(found[-1])))


def mirror_task(conn, disk, target, jdir, state='ready', **kw):
    return {'vmfleet.kvm.drive_mirror': dict(conn, disk=disk, target=target, journal_dir=jdir, state=state,
                                             timeout=kw.pop('timeout', 1800), **kw)}


def drive_mirror_ready(conn, disk, target, jdir, watch=None, **kw):
    """Run drive_mirror state=ready, then cancel and remove the copy. Returns its figures."""
    import threading
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            watch.sample()
            time.sleep(0.5)
    th = None
    if watch is not None:
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
    drop_caches()
    t0 = time.monotonic()
    [r], proc = run_tasks([mirror_task(conn, disk, target, jdir, **kw)], extra_args=['-vvv'])
    t1 = time.monotonic()
    stop.set()
    if th:
        th.join()
    out = dict(ok=not r.get('failed'), msg=r.get('msg'), wall_s=round(t1 - t0, 2), copy_s=r.get('copy_s'),
               bytes_copied=r.get('bytes_copied'), bytes_total=r.get('bytes_total'), rate_mib_s=r.get('rate_mib_s'),
               progress=r.get('progress', []), t_start=t0, t_end=t1)
    run_tasks([mirror_task(conn, disk, target, jdir, state='cancelled', remove_target=True)])
    return out


def virsh_blockcopy(vm, disk, target):
    drop_caches()
    t0 = time.monotonic()
    sh(['virsh', '-c', vm.uri, 'blockcopy', vm.name, disk, '--dest', target, '--format', 'qcow2',
        '--transient-job', '--wait'])
    t = time.monotonic() - t0
    sh(['virsh', '-c', vm.uri, 'blockjob', vm.name, disk, '--abort'])
    os.unlink(target)
    return t


def main():
    if os.geteuid() != 0:
        sys.exit('bench/mirror.py needs root (libvirt %s, drop_caches)' % URI)
    accel = detect_accel()
    root = tempfile.mkdtemp(prefix='vmfleet-bench-mirror-', dir='/var/tmp')
    os.chmod(root, 0o755)
    vms = []
    res = dict(bench='mirror', disk_mib=SIZE_MIB, accel=accel, host=platform.node(),
               cpus=os.cpu_count(), load_avg_start=os.getloadavg(), when=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
    try:
        qv = QemuGuest(os.path.join(root, 'q'), name='vmfleet-bench-raw', accel=accel,
                       disks=(('root', 'qcow2', 64), ('data', 'qcow2', SIZE_MIB)))
        lv = LibvirtGuest(os.path.join(root, 'l'), name='vmfleet-bench-lv', accel=accel,
                          disks=(('root', 'qcow2', 64), ('data', 'qcow2', SIZE_MIB)))
        t0 = time.monotonic()
        make_data_disk(qv.disk_path('data'))
        shutil.copyfile(qv.disk_path('data'), lv.disk_path('data'))
        os.chmod(lv.disk_path('data'), 0o644)
        res['fill_s'] = round(time.monotonic() - t0, 1)
        out = os.path.join(root, 'out')
        os.makedirs(out)
        os.chmod(out, 0o755)
        jdir = os.path.join(root, 'journal')

        res['qemu_img_convert_s'] = round(timed_convert(qv.disk_path('data'), os.path.join(out, 'c.qcow2')), 2)
        os.unlink(os.path.join(out, 'c.qcow2'))

        # idle guests: the pure copy, each tool on the same image
        for vm in (qv, lv):
            vms.append(vm)
            vm.start()
            vm.wait_booted(180)
        qconn = {'qmp_socket': qv.qmp_socket}
        lconn = {'domain': lv.name}
        # two rounds in opposite orders: whatever the host does after the guests boot (and
        # whatever the first copy leaves behind) weighs on each tool once early and once late
        runs = {
            'drive_mirror_qemu': lambda: drive_mirror_ready(qconn, 'data', os.path.join(out, 'q.qcow2'), jdir),
            'drive_mirror_libvirt': lambda: drive_mirror_ready(lconn, 'vdb', os.path.join(out, 'l.qcow2'), jdir),
            'virsh_blockcopy': lambda: dict(copy_s=round(virsh_blockcopy(lv, 'vdb', os.path.join(out, 'v.qcow2')), 2)),
        }
        rounds = []
        for order in (list(runs), list(reversed(list(runs)))):
            rounds.append(dict((name, runs[name]()) for name in order))
        idle = dict((name, min((r[name] for r in rounds), key=lambda x: x['copy_s'] or 1e9)) for name in runs)
        idle['virsh_blockcopy_s'] = idle.pop('virsh_blockcopy')['copy_s']
        idle['rounds'] = [dict((k, v['copy_s']) for k, v in r.items()) for r in rounds]
        res['idle'] = idle
        lv.stop()
        vms.remove(lv)
        qv.stop()
        vms.remove(qv)

        # the guest writes its records the whole time: do the two copy modes converge?
        busy = {}
        for mode in ('background', 'write-blocking'):
            vm = QemuGuest(os.path.join(root, 'q'), name='vmfleet-bench-raw', accel=accel, cmdline_extra='vmfleet.writer=vdb',
                           disks=(('root', 'qcow2', 64), ('data', 'qcow2', SIZE_MIB)))
            vms.append(vm)
            vm.start()
            vm.wait_booted(180)
            wait_serial(vm.serial_log, r'VMFLEET-SEQ [1-9]\d*00\r?\n', 120)
            watch = SeqWatch(vm.serial_log)
            for _i in range(10):  # the guest's write rate before the copy
                watch.sample()
                time.sleep(0.5)
            before = seq_rate(vm.serial_log, 0, time.monotonic(), watch.samples)
            r = drive_mirror_ready({'qmp_socket': vm.qmp_socket}, 'data', os.path.join(out, 'b.qcow2'), jdir,
                                   watch=watch, copy_mode=mode, timeout=float(os.environ.get('VMFLEET_BENCH_TIMEOUT', 900)))
            during = seq_rate(vm.serial_log, r['t_start'], r['t_end'], watch.samples)
            r.update(converged=r['ok'], guest_records_per_s_before=round(before or 0, 1),
                     guest_records_per_s_during=round(during or 0, 1))
            busy[mode] = r
            vm.stop()
            vms.remove(vm)
        res['guest_writing'] = busy
        for part in (idle.get('drive_mirror_qemu'), idle.get('drive_mirror_libvirt')) + tuple(busy.values()):
            part.pop('t_start', None)
            part.pop('t_end', None)
    finally:
        for vm in reversed(vms):
            try:
                vm.stop()
            except Exception as e:  # keep cleaning up
                print('stopping %s failed: %s' % (vm.name, e))
        shutil.rmtree(root, ignore_errors=True)
    res['load_avg_end'] = os.getloadavg()
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, 'mirror.json'), 'w') as f:
        json.dump(res, f, indent=1, sort_keys=True)
        f.write('\n')
    plot(res)
    summary(res)


def summary(res):
    idle = res['idle']
    print('%d MiB disk, %s, %d cpus, load %.1f' % (res['disk_mib'], res['accel'], res['cpus'], res['load_avg_start'][0]))
    print('  qemu-img convert           %6.1f s' % res['qemu_img_convert_s'])
    for k in ('drive_mirror_qemu', 'drive_mirror_libvirt'):
        print('  %-26s %6.1f s to ready (%s MiB/s), %.1f s with ansible' % (
            k, idle[k]['copy_s'] or -1, idle[k]['rate_mib_s'], idle[k]['wall_s']))
    print('  virsh blockcopy --wait     %6.1f s' % idle['virsh_blockcopy_s'])
    for mode, r in res['guest_writing'].items():
        print('  guest writing, %-14s converged=%s after %s s; guest %.0f -> %.0f records/s' % (
            mode, r['converged'], r['copy_s'], r['guest_records_per_s_before'], r['guest_records_per_s_during']))


def plot(res):
    plt = _plot.pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    idle = res['idle']
    names = ['qemu-img convert', 'drive_mirror\n(raw QEMU)', 'drive_mirror\n(libvirt)', 'virsh blockcopy']
    vals = [res['qemu_img_convert_s'], idle['drive_mirror_qemu']['copy_s'] or 0,
            idle['drive_mirror_libvirt']['copy_s'] or 0, idle['virsh_blockcopy_s']]
    a.bar(names, vals, color=['grey', 'tab:blue', 'tab:blue', 'tab:orange'])
    a.set_ylabel('seconds until in sync')
    a.set_title('%d MiB disk, guest idle' % res['disk_mib'])
    for mode, r in res['guest_writing'].items():
        pts = [(p['t'], 100.0 * p['bytes_copied'] / p['bytes_total']) for p in r['progress'] if p['bytes_total']]
        if pts:
            b.plot([p[0] for p in pts], [p[1] for p in pts], label='%s (%s)' % (
                mode, 'in sync after %.1fs' % r['copy_s'] if r['converged'] else 'no sync'))
    b.set_xlabel('seconds')
    b.set_ylabel('% copied')
    b.set_title('guest writing continuously')
    b.legend()
    _plot.save(fig, os.path.join(RESULTS, 'mirror.png'), dpi=100)


if __name__ == '__main__':
    main()
