"""Save/restore benchmark (run by ``make bench``, never by the tests).

On one libvirt domain (default 1 GiB, 768 MiB of it filled with random data
by the guest), side by side in one run:

save:    vmfleet.kvm.vm_save (through ansible-playbook) with 1, 2 and 4
         channels (no compression) and 4 channels + zstd; plain ``virsh save``;
         ``virsh save --parallel-channels 4 --image-format sparse``;
         ``dd if=/dev/zero bs=4M conv=fdatasync`` of the same number of bytes
         to the same filesystem (the disk's write limit).
restore: vmfleet.kvm.vm_restore of each vm_save image, with the module's
         default (O_DIRECT) and, for a second 4-channel image, through the page
         cache (``direct_io: false``); ``virsh restore``
         (``--parallel-channels 4`` for the sparse image).
         Each restore is set against ``dd of=/dev/null`` of the very same image
         file (page cache dropped): a first read after the save (kept as
         first_read_mib_s, not compared), then one right before the restore:
         vs_dd_read = restore MiB/s / that read's MiB/s. (One right after it is
         kept too, as dd_after_mib_s; it is not compared, see against_dd.)
         Why: the machine's disk sits on a write-back cache of the host
         beneath it. A file read in the seconds after it was written reads at a
         third to a half of the rate of a second read (measured: 370-640 MiB/s,
         then 1700-2200), and that host's flushing makes rates drift for tens of
         seconds. Only reads of the same file at the same moment compare.
raw:     then the same guest as a raw QEMU VM (no libvirt): vm_save (mapped-ram,
         or multifd streams with zstd) and vm_restore (relaunch), labelled "raw".

vm_save writes mapped-ram and libvirt sparse images with O_DIRECT where it can
(its ``direct_io`` result is kept with each run). Every image is made durable
before its clock stops: vm_save fsyncs; after a
``virsh save`` the file is fdatasynced (``sync --data FILE``) and that time
is counted. The page cache is dropped before every save and every restore.
Figures go to bench/results/save_restore.json and save_restore.png
(``--name save_restore-4g`` for another guest size, so both are kept).
"""

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

from rig.accel import detect_accel
from rig.ansible_run import run_one
from rig.guest import COUNTER, wait_serial
from rig.libvirt_guest import URI, LibvirtGuest, virsh
from rig.qemu_guest import QemuGuest
from rig.targets import Target
import _plot

RESULTS = os.path.join(HERE, 'results')
MIB = 1024.0 * 1024.0
DD_BS = 4 << 20

# (label, vm_save channels, compression, vm_restore direct_io: None = the module's default (O_DIRECT where it
# can), False = through the page cache)
VM_SAVE_CASES = [('vm_save c1', 1, 'none', None), ('vm_save c2', 2, 'none', None), ('vm_save c4', 4, 'none', None),
                 ('vm_save c4', 4, 'none', False), ('vm_save c4 zstd', 4, 'zstd', None)]


def sh(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


class Caches:
    """Drops the page cache when the kernel lets us; remembers whether it did."""

    def __init__(self):
        self.permitted = None

    def drop(self):
        subprocess.run(['sync'], check=False)
        try:
            with open('/proc/sys/vm/drop_caches', 'w') as f:
                f.write('3\n')
            self.permitted = True if self.permitted is None else self.permitted
        except OSError:
            self.permitted = False


def image_files(path):
    """Data files of an image (vm_save may write path.chN for stream paths)."""
    d, base = os.path.split(path)
    out = []
    for name in sorted(os.listdir(d)):
        if name == base or (name.startswith(base + '.ch') and not name.endswith('.json')):
            out.append(os.path.join(d, name))
    return out


def disk_usage(path):
    files = image_files(path)
    apparent = sum(os.stat(f).st_size for f in files)
    allocated = sum(os.stat(f).st_blocks * 512 for f in files)
    return apparent, allocated


def remove_image(path):
    d, base = os.path.split(path)
    for name in os.listdir(d):
        if name == base or name.startswith(base + '.'):
            os.unlink(os.path.join(d, name))


def domstate(name):
    return virsh('domstate', name, check=False).stdout.strip()


class LibvirtLoadClock:
    """How long libvirt's QEMU took to read the image (migrate-incoming sent to the MIGRATION "completed" event),
    from libvirtd's own log: libvirt keeps no statistics of a restore job. The restore's other part is libvirt
    starting QEMU (on this machine ~0.4 s, 0.28 s of it checking the guest CPU with ~930 qom-get calls).
    The monitor's messages are logged to a file of ours for the restore only, then libvirtd's log settings
    are put back. Without virt-admin: no figure (None)."""

    STAMP = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})')

    def __init__(self, work):
        self.log = os.path.join(work, 'libvirtd-monitor.log')
        self.saved = None

    @staticmethod
    def _adm(*args):
        return subprocess.run(['virt-admin', '-c', 'libvirtd:///system'] + list(args), check=True,
                              capture_output=True, text=True).stdout

    def __enter__(self):
        try:
            outputs = self._adm('daemon-log-outputs').split('Logging outputs:', 1)[1].strip()
            filters = self._adm('daemon-log-filters').split('Logging filters:', 1)[1].strip()
            self.saved = (outputs, filters)
            if os.path.exists(self.log):
                os.unlink(self.log)
            self._adm('daemon-log-filters', '1:qemu_monitor 3:*')
            self._adm('daemon-log-outputs', '1:file:%s' % self.log)
        except (OSError, subprocess.CalledProcessError, IndexError):
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved:
            outputs, filters = self.saved
            self._adm('daemon-log-outputs', outputs)
            self._adm('daemon-log-filters', filters)

    def load_s(self):
        if not self.saved or not os.path.exists(self.log):
            return None
        start = end = None
        with open(self.log, errors='replace') as f:
            for line in f:
                if start is None and 'QEMU_MONITOR_SEND_MSG' in line and '"migrate-incoming"' in line:
                    start = self._time(line)
                elif start is not None and 'QEMU_MONITOR_RECV_EVENT' in line and '"MIGRATION"' in line \
                        and '"completed"' in line:
                    end = self._time(line)
                    break
        os.unlink(self.log)
        return round(end - start, 3) if start is not None and end is not None else None

    def _time(self, line):
        m = self.STAMP.match(line)
        return datetime.datetime.strptime(m.group(1), '%Y-%m-%d %H:%M:%S.%f').timestamp()


def _module_ok(r, what):
    if r.get('failed'):
        raise RuntimeError('%s failed: %s' % (what, r.get('msg', r)))
    return r


class Bench:
    backend = 'libvirt'

    def __init__(self, vm, save_dir, caches, verify):
        self.vm = vm
        self.save_dir = save_dir
        self.caches = caches
        self.verify = verify
        self.runs = {}  # label -> list of measurement dicts

    def load_clock(self):
        return LibvirtLoadClock(self.save_dir)

    def record(self, label, m):
        m['mib_s'] = round(m['bytes_written'] / MIB / m['seconds'], 1) if m['seconds'] else None
        self.runs.setdefault(label, []).append(m)
        print('  %-34s %7.2f s  %7.1f MiB/s  %6.0f MiB allocated' % (
            label, m['seconds'], m['mib_s'] or 0, m.get('allocated_bytes', m['bytes_written']) / MIB), flush=True)

    def wait_guest_runs(self, offset):
        # the restored guest must run on: a counter line past where the log ended
        wait_serial(self.vm.serial_log, COUNTER, 120, offset)

    # -- saves --
    def conn(self):
        return {'domain': self.vm.name, 'uri': URI}

    def vm_save(self, label, img, channels, compression):
        self.caches.drop()
        task = {'vmfleet.kvm.vm_save': dict(self.conn(), path=img, channels=channels,
                                            compression=compression, verify=self.verify)}
        t0 = time.monotonic()
        r = _module_ok(run_one(task), label)
        wall = time.monotonic() - t0
        apparent, allocated = disk_usage(img)
        self.record(label, dict(seconds=r['duration_s'], wall_s_with_ansible=round(wall, 2),
                                downtime_ms=r.get('downtime_ms'), module_rate_mib_s=r.get('rate_mib_s'),
                                direct_io=r.get('direct_io'),
                                path_used=r['path_used'], bytes_written=allocated, apparent_bytes=apparent,
                                allocated_bytes=allocated, durable='module fsyncs files and directory'))

    def virsh_save(self, label, img, extra):
        self.caches.drop()
        t0 = time.monotonic()
        virsh('save', self.vm.name, img, *extra)
        t1 = time.monotonic()
        # libvirt does not promise the image is on disk: fdatasync it, counted
        sh(['sync', '--data', img])
        t2 = time.monotonic()
        apparent, allocated = disk_usage(img)
        self.record(label, dict(seconds=round(t2 - t0, 3), virsh_s=round(t1 - t0, 3), sync_s=round(t2 - t1, 3),
                                downtime_ms=round((t1 - t0) * 1000.0, 1), bytes_written=allocated,
                                apparent_bytes=apparent, allocated_bytes=allocated,
                                durable='sync --data FILE after virsh save, time included'))

    def dd_write(self, nbytes):
        self.caches.drop()
        path = os.path.join(self.save_dir, 'dd.bin')
        count = -(-nbytes // DD_BS)
        t0 = time.monotonic()
        sh(['dd', 'if=/dev/zero', 'of=' + path, 'bs=%d' % DD_BS, 'count=%d' % count, 'conv=fdatasync'])
        dt = time.monotonic() - t0
        self.record('dd write (fdatasync)', dict(seconds=round(dt, 3), bytes_written=count * DD_BS,
                                                 allocated_bytes=count * DD_BS))
        return path

    # -- reads and restores --
    def read_file(self, path):
        """dd of every file of an image to /dev/null, page cache dropped: (seconds, MiB/s of allocated bytes;
        a sparse image's holes cost no disk read)."""
        self.caches.drop()
        t0 = time.monotonic()
        for f in image_files(path):
            sh(['dd', 'if=' + f, 'of=/dev/null', 'bs=%d' % DD_BS])
        dt = time.monotonic() - t0
        return dt, disk_usage(path)[1] / MIB / dt

    def dd_read(self, label, path):
        dt = self.read_file(path)[0]
        apparent, allocated = disk_usage(path)
        self.record(label, dict(seconds=round(dt, 3), bytes_written=allocated, apparent_bytes=apparent,
                                allocated_bytes=allocated))

    def against_dd(self, img, restore):
        """Run ``restore()`` (which records and returns its measurement) right after a dd read of the same
        image, itself after a first read of it; keep the ratio of the restore's rate to that read's. A read
        right after the restore is kept too, not compared: it is slower, because the restored VM's RAM is
        newly allocated memory of this machine, which the host beneath seems to take from its cache (the
        guest paused; raw QEMU restores of the 1 GiB run: medians 1750 before, 560 MiB/s after)."""
        first = self.read_file(img)[1]
        before = self.read_file(img)[1]
        m = restore()
        # paused: the restored guest would take CPU from dd (2 cores; it hashes its RAM)
        guest = Target(self.vm, self.backend)
        guest.pause()
        try:
            after = self.read_file(img)[1]
        finally:
            guest.resume()
        dd = before
        m.update(first_read_mib_s=round(first, 1), dd_before_mib_s=round(before, 1), dd_after_mib_s=round(after, 1),
                 dd_read_mib_s=round(dd, 1), vs_dd_read=round(m['mib_s'] / dd, 3))
        if m.get('load_mib_s'):
            m['load_vs_dd_read'] = round(m['load_mib_s'] / dd, 3)
        print('  %-34s dd read of that image: first %.0f, before %.0f, after %.0f MiB/s; restore/dd %.2f%s' % (
            '', first, before, after, m['vs_dd_read'],
            ', load/dd %.2f' % m['load_vs_dd_read'] if 'load_vs_dd_read' in m else ''), flush=True)
        return m

    def restore_offset(self):
        return os.path.getsize(self.vm.serial_log)

    def vm_restore(self, label, img, direct_io=None):
        self.caches.drop()
        offset = self.restore_offset()
        args = {'path': img, 'uri': URI, 'verify': self.verify}
        if direct_io is False:
            args['direct_io'] = False
            label += ' page cache'
        with self.load_clock() as clock:
            t0 = time.monotonic()
            r = _module_ok(run_one({'vmfleet.kvm.vm_restore': args}), label)
            wall = time.monotonic() - t0
        load_s = r.get('load_s') or (clock.load_s() if clock else None)
        apparent, allocated = disk_usage(img)
        m = dict(seconds=r['duration_s'], wall_s_with_ansible=round(wall, 2),
                 module_rate_mib_s=r.get('rate_mib_s'), direct_io=r.get('direct_io'), channels=r.get('channels'),
                 load_s=load_s, load_mib_s=round(allocated / MIB / load_s, 1) if load_s else None,
                 bytes_written=allocated, apparent_bytes=apparent, allocated_bytes=allocated)
        self.record(label, m)
        self.wait_guest_runs(offset)
        return m

    def virsh_restore(self, label, img, extra):
        self.caches.drop()
        offset = os.path.getsize(self.vm.serial_log)
        with self.load_clock() as clock:
            t0 = time.monotonic()
            virsh('restore', img, *extra)
            dt = time.monotonic() - t0
        load_s = clock.load_s()
        apparent, allocated = disk_usage(img)
        m = dict(seconds=round(dt, 3), bytes_written=allocated, apparent_bytes=apparent, allocated_bytes=allocated,
                 load_s=load_s, load_mib_s=round(allocated / MIB / load_s, 1) if load_s else None)
        self.record(label, m)
        self.wait_guest_runs(offset)
        return m

    def one_round(self, rnd):
        d = self.save_dir
        sizes = []
        for label, channels, comp, direct_io in VM_SAVE_CASES:
            img = os.path.join(d, 'vmsave-c%d-%s.img' % (channels, comp))
            self.vm_save(label, img, channels, comp)
            if comp == 'none':
                sizes.append(disk_usage(img)[1])
            self.against_dd(img, functools.partial(self.vm_restore, label.replace('vm_save', 'vm_restore'), img, direct_io))
            remove_image(img)
        img = os.path.join(d, 'virsh-plain.img')
        self.virsh_save('virsh save', img, [])
        sizes.append(disk_usage(img)[1])
        self.against_dd(img, functools.partial(self.virsh_restore, 'virsh restore', img, []))
        remove_image(img)
        img = os.path.join(d, 'virsh-sparse.img')
        self.virsh_save('virsh save sparse p4', img, ['--parallel-channels', '4', '--image-format', 'sparse'])
        sizes.append(disk_usage(img)[1])
        sparse_restore = functools.partial(self.virsh_restore, 'virsh restore sparse p4', img, ['--parallel-channels', '4'])
        self.against_dd(img, sparse_restore)
        remove_image(img)
        # the disk's limit for as many bytes as the largest uncompressed image: read right after the write,
        # then again (see the module's doc: the first read after a write is the slow one)
        dd = self.dd_write(max(sizes))
        self.dd_read('dd read, first after write', dd)
        self.dd_read('dd read, second', dd)
        os.unlink(dd)
        print('round %d done' % rnd, flush=True)


class RawBench(Bench):
    """The same measurements on a raw QEMU VM: vm_save and vm_restore only (no virsh there)."""

    backend = 'qemu'

    def conn(self):
        return {'qmp_socket': self.vm.qmp_socket}

    def load_clock(self):
        return contextlib.nullcontext(None)  # vm_restore reports load_s itself

    def restore_offset(self):
        return 0  # the relaunched QEMU starts its serial file anew

    def one_round(self, rnd):
        for label, channels, comp, direct_io in VM_SAVE_CASES:
            img = os.path.join(self.save_dir, 'raw-c%d-%s.img' % (channels, comp))
            self.vm_save('raw ' + label, img, channels, comp)
            self.against_dd(img, functools.partial(self.vm_restore, 'raw ' + label.replace('vm_save', 'vm_restore'),
                                                   img, direct_io))
            remove_image(img)
        print('raw round %d done' % rnd, flush=True)


def summarize(runs):
    out = {}
    for label, ms in runs.items():
        secs = [m['seconds'] for m in ms]
        med = statistics.median(secs)
        rates = [m['mib_s'] for m in ms if m['mib_s']]
        out[label] = dict(seconds_median=round(med, 3), mib_s_median=round(statistics.median(rates), 1) if rates else None,
                          allocated_bytes_median=int(statistics.median(m['allocated_bytes'] for m in ms)),
                          apparent_bytes_median=int(statistics.median(m.get('apparent_bytes', m['allocated_bytes'])
                                                                      for m in ms)),
                          downtime_ms_median=(round(statistics.median(m['downtime_ms'] for m in ms), 1)
                                              if all(m.get('downtime_ms') is not None for m in ms) else None),
                          repeats=len(ms), runs=ms)
        for key in ('load_mib_s', 'dd_read_mib_s', 'vs_dd_read', 'load_vs_dd_read', 'first_read_mib_s'):
            vals = [m[key] for m in ms if m.get(key)]
            if vals:
                out[label][key + '_median'] = round(statistics.median(vals), 3)
    return out


def _version(argv):
    try:
        return sh(argv).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


def _libvirt_versions():
    try:
        out = virsh('version', '--daemon').stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return re.findall(r'(?:Using library|Running hypervisor|Running against daemon): .*', out)


def machine_facts(save_dir, caches):
    fs = sh(['df', '--output=source,fstype,target', save_dir]).stdout.strip().splitlines()[-1].split()
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                nproc=os.cpu_count(), kernel=platform.release(), machine=platform.machine(),
                qemu=_version(['qemu-system-x86_64', '--version']),
                libvirt=_libvirt_versions(),
                accel=detect_accel(), save_dir=save_dir,
                save_fs=dict(device=fs[0], type=fs[1], mount=fs[2]),
                drop_caches_permitted=caches.permitted,
                load_note='shared 2-core machine; other people run VMs at the same time: figures are noisy')


def plot(summary, path):
    plt = _plot.pyplot()
    if plt is None:
        return False
    saves = ['dd write (fdatasync)', 'vm_save c1', 'vm_save c2', 'vm_save c4', 'vm_save c4 zstd', 'virsh save',
             'virsh save sparse p4', 'raw vm_save c1', 'raw vm_save c2', 'raw vm_save c4', 'raw vm_save c4 zstd']
    loads = ['dd read, first after write', 'dd read, second', 'vm_restore c1',
             'vm_restore c2', 'vm_restore c4', 'vm_restore c4 page cache', 'vm_restore c4 zstd', 'virsh restore',
             'virsh restore sparse p4', 'raw vm_restore c1', 'raw vm_restore c2', 'raw vm_restore c4',
             'raw vm_restore c4 page cache', 'raw vm_restore c4 zstd']
    fig, axes = plt.subplots(1, 3, figsize=(26, 6))
    ratios = [lb for lb in loads if summary.get(lb, {}).get('vs_dd_read_median')]
    ax = axes[2]
    ax.bar(range(len(ratios)), [summary[lb]['vs_dd_read_median'] for lb in ratios], color='tab:blue', label='restore')
    ax.bar([i + 0.3 for i in range(len(ratios))], [summary[lb].get('load_vs_dd_read_median', 0) for lb in ratios],
           width=0.3, color='tab:green', label='load alone (image read: migrate-incoming to completed)')
    ax.axhline(0.88, color='red', linestyle='--', label="seed's bar: 88% of the disk's read")
    ax.set_xticks(range(len(ratios)))
    ax.set_xticklabels(ratios, rotation=35, ha='right', fontsize=8)
    ax.set_title('restore rate / dd read of the same image, same moment (median)')
    ax.legend(fontsize=8)
    for ax, labels, title in ((axes[0], saves, 'save (MiB/s of allocated image bytes)'),
                              (axes[1], loads, 'restore / read (MiB/s)')):
        labels = [lb for lb in labels if lb in summary]
        vals = [summary[lb]['mib_s_median'] or 0 for lb in labels]
        palette = {'dd': 'grey', 'vm_': 'tab:blue', 'raw': 'tab:green'}
        colors = [next((c for k, c in palette.items() if lb.startswith(k)), 'tab:orange') for lb in labels]
        bars = ax.bar(range(len(labels)), vals, color=colors)
        for b, lb in zip(bars, labels):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), '%.0f\n%.1fs' % (
                b.get_height(), summary[lb]['seconds_median']), ha='center', va='bottom', fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, ha='right', fontsize=8)
        ax.set_title(title)
        ax.set_ylabel('MiB/s (median)')
        ax.margins(y=0.2)
    return _plot.save(fig, path, 'vmfleet.kvm save/restore vs virsh vs dd (same VM, same fs; noisy shared host)', dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--memory-mib', type=int, default=1024)
    ap.add_argument('--fill-mib', type=int, default=768)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--verify', action='store_true',
                    help='let vm_save/vm_restore checksum the image (off: compare the write itself)')
    ap.add_argument('--save-dir', default='/var/tmp', help='filesystem the images go to')
    ap.add_argument('--max-seconds', type=float, default=0,
                    help='start no further round if it would end past this many seconds of measuring')
    ap.add_argument('--out', default=RESULTS)
    ap.add_argument('--name', default='save_restore', help='file name (no suffix) of the results and plot')
    args = ap.parse_args(argv)

    caches = Caches()
    work = tempfile.mkdtemp(prefix='vmfleet-bench-sr-', dir=args.save_dir)
    os.chmod(work, 0o755)  # libvirt's QEMU (libvirt-qemu) must reach the VM's files
    save_dir = os.path.join(work, 'saves')
    os.makedirs(save_dir)
    os.chmod(save_dir, 0o755)
    vm = LibvirtGuest(os.path.join(work, 'vm'), 'vmfleet-bench-save', memory_mib=args.memory_mib,
                      cmdline_extra='vmfleet.fill=%d' % args.fill_mib)
    bench = Bench(vm, save_dir, caches, args.verify)
    failed = None
    try:
        vm.start()
        print('waiting for the guest to fill %d MiB of RAM (TCG: minutes)...' % args.fill_mib, flush=True)
        t0 = time.monotonic()
        m = wait_serial(vm.serial_log, r'VMFLEET-FILL %d ([0-9a-f]{64})' % args.fill_mib, 1200)
        print('filled in %.0f s' % (time.monotonic() - t0), flush=True)
        fill_sha = m.group(1)
        started = time.monotonic()
        for rnd in range(1, args.repeats + 1):
            t_round = time.monotonic()
            bench.one_round(rnd)
            spent = time.monotonic() - started
            if args.max_seconds and rnd < args.repeats and spent + (time.monotonic() - t_round) > args.max_seconds:
                print('stopping after %d round(s): another would pass --max-seconds' % rnd, flush=True)
                break
        vm.stop()
        raw = QemuGuest(os.path.join(work, 'raw'), 'vmfleet-bench-save-raw', memory_mib=args.memory_mib,
                        cmdline_extra='vmfleet.fill=%d' % args.fill_mib)
        raw_bench = RawBench(raw, save_dir, caches, args.verify)
        raw_bench.runs = bench.runs
        raw.start()
        wait_serial(raw.serial_log, r'VMFLEET-FILL %d ([0-9a-f]{64})' % args.fill_mib, 1200)
        try:
            for rnd in range(1, args.repeats + 1):
                raw_bench.one_round(rnd)
        finally:
            raw.stop()
    except Exception as e:  # write what was measured, then fail
        failed = '%s: %s' % (type(e).__name__, e)
        print('FAILED: ' + failed, file=sys.stderr)
        fill_sha = None
    finally:
        try:
            vm.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarize(bench.runs)
    result = dict(machine=machine_facts(args.save_dir, caches),
                  config=dict(memory_mib=args.memory_mib, fill_mib=args.fill_mib, repeats=args.repeats,
                              verify=args.verify, fill_sha256=fill_sha, domain=vm.name),
                  method=dict(
                      seconds='vm_save/vm_restore: the module\'s duration_s (wall_s_with_ansible adds the '
                              'ansible-playbook overhead); virsh: wall time of the command plus, for save, the '
                              'fdatasync of the image; dd: wall time',
                      mib_s='allocated (on-disk) bytes of the image / seconds; a sparse image\'s holes are not '
                            'counted as written',
                      durability='vm_save fsyncs files and dir; virsh save: libvirt does not fdatasync the image '
                                 'for us to rely on, so `sync --data FILE` (fdatasync of that file only, not '
                                 '`sync -f`, which would also flush other users\' writes on the shared fs) runs '
                                 'after it and its time (sync_s) is included; dd uses conv=fdatasync',
                      caches='page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every save, '
                             'restore and read when permitted: see machine.drop_caches_permitted',
                      downtime_ms='save: guest paused from the start of the save to a complete image (vm_save\'s '
                                  'downtime_ms; virsh: the virsh command time); restores: the guest runs only '
                                  'when the restore returns, so its downtime is the restore time',
                      verify='vm_save/vm_restore ran with verify=%s' % args.verify,
                      load_mib_s='allocated bytes / load_s, the image read alone (migrate-incoming to done), without '
                                 'starting QEMU or resuming the guest: raw QEMU, vm_restore\'s load_s; libvirt '
                                 '(vm_restore and virsh restore), from libvirtd\'s log of the monitor, which '
                                 'the bench switches on for each restore (see LibvirtLoadClock)',
                      vs_dd_read='restore MiB/s / MiB/s of a dd read of the same image file right before the '
                                 'restore (page cache dropped), itself after a first read of it (first_read_mib_s): '
                                 'reads of one file at one moment, because the '
                                 'disk sits on a write-back cache of the host beneath this machine and a file '
                                 'read in the seconds after its write reads far slower than on a second read; '
                                 'load_vs_dd_read: the same for the load alone'),
                  summary=summary, failed=failed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.name + '.json'), 'w') as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write('\n')
    plot(summary, os.path.join(args.out, args.name + '.png'))
    print('\n%-34s %9s %9s %10s %12s %10s %8s %8s' % ('method', 'seconds', 'MiB/s', 'MiB alloc', 'downtime ms',
                                                      'load MiB/s', '/dd', 'load/dd'))
    for label, s in summary.items():
        print('%-34s %9.2f %9s %10.0f %12s %10s %8s %8s' % (
            label, s['seconds_median'], s['mib_s_median'], s['allocated_bytes_median'] / MIB, s['downtime_ms_median'],
            s.get('load_mib_s_median', ''), s.get('vs_dd_read_median', ''), s.get('load_vs_dd_read_median', '')))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
