"""External (overlay) snapshots against what a libvirt user would do by hand (run by ``make bench``,
never by the tests).

On a libvirt domain whose disks are raw files, side by side in one run, at 1 and 4 GiB written into
the overlay after the snapshot:
  * the snapshot: ``vmfleet.kvm.snapshot`` (mode external, disk-only, through ansible-playbook; its
    ``paused_ms``, which through libvirt is the length of libvirt's call) against
    ``virsh snapshot-create-as --disk-only --atomic`` (the wall time of the command);
  * its delete, committing the overlay into the raw image: ``vmfleet.kvm.snapshot`` state absent against
    ``virsh blockcommit --active --pivot --wait`` of each disk (then the overlay files removed by hand);
    ``delete_s`` is the playbook's wall time, ``delete_module_s`` the module's own.
Each size runs in both orders (ours then virsh, virsh then ours).

The writes go into the overlay through QEMU's own block layer (HMP ``qemu-io`` on the running domain),
as fast as the host's disk takes them: a TCG guest would take minutes to write 4 GiB.

Figures go to bench/results/external_snapshot.json.
"""

import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')

from rig.ansible_run import run_tasks
from rig.libvirt_guest import URI, LibvirtGuest, virsh
import _results

SIZES_GIB = [int(x) for x in os.environ.get('VMFLEET_BENCH_EXTERNAL_GIB', '1,4').split(',')]
DATA_MIB = (max(SIZES_GIB) + 1) * 1024


def write_into(vm, dev, gib):
    """Write ``gib`` GiB of non-zero data at the start of disk ``dev`` through QEMU's block layer."""
    t0 = time.monotonic()
    for i in range(gib):
        out = virsh('qemu-monitor-command', vm.name, '--hmp',
                    'qemu-io -d %s "write -P 0x5a %dG 1G"' % (device_id(vm, dev), i)).stdout
        if 'error' in out.lower() or 'fail' in out.lower():
            raise RuntimeError('qemu-io write into %s failed: %s' % (dev, out.strip()))
    return round(time.monotonic() - t0, 2)


def device_id(vm, dev):
    """The qdev of the disk whose image chain ends on ``vm``'s disk ``dev`` (qemu-io -d writes through
    whatever node is on top of it: the overlay)."""
    base = vm.disk_path({'vda': 'root', 'vdb': 'data'}[dev])
    out = virsh('qemu-monitor-command', vm.name, '{"execute": "query-block"}').stdout
    for b in json.loads(out)['return']:
        img = (b.get('inserted') or {}).get('image') or {}
        while img:
            if img.get('filename') == base:
                return b['qdev']
            img = img.get('backing-image')
    raise RuntimeError('no device of %s holds %s' % (vm.name, base))


def ours(vm, gib, overlay_dir, state):
    [r], _proc = run_tasks([{'vmfleet.kvm.snapshot': dict(domain=vm.name, name='bench', mode='external',
                                                          memory=False, overlay_dir=overlay_dir, state=state,
                                                          timeout=1800)}])
    if r.get('failed'):
        raise RuntimeError('vmfleet.kvm.snapshot state=%s failed: %s' % (state, r.get('msg')))
    return r


def by_hand_snapshot(vm, overlay_dir):
    args = ['snapshot-create-as', vm.name, 'bench-virsh', '--disk-only', '--atomic', '--no-metadata']
    for dev in ('vda', 'vdb'):
        args += ['--diskspec', '%s,snapshot=external,file=%s' % (dev, os.path.join(overlay_dir, dev + '.virsh.qcow2'))]
    t0 = time.monotonic()
    virsh(*args)
    return round((time.monotonic() - t0) * 1000.0, 1)


def by_hand_commit(vm, overlay_dir):
    t0 = time.monotonic()
    for dev in ('vda', 'vdb'):
        virsh('blockcommit', vm.name, dev, '--active', '--pivot', '--wait')
    s = round(time.monotonic() - t0, 2)
    for dev in ('vda', 'vdb'):
        os.unlink(os.path.join(overlay_dir, dev + '.virsh.qcow2'))
    return s


def main():
    if os.geteuid() != 0:
        sys.exit('bench/external_snapshot.py needs root (libvirt %s)' % URI)
    root = tempfile.mkdtemp(prefix='vmfleet-bench-external-', dir='/var/tmp')
    os.chmod(root, 0o755)
    res = _results.header('external_snapshot', sizes_gib=SIZES_GIB, disks='raw files (root 64 MiB, data %d MiB)' % DATA_MIB)
    rows = res['rows'] = []
    vm = None
    with _results.recorded(res):
        vm = LibvirtGuest(os.path.join(root, 'l'), name='vmfleet-bench-ext', disks=(('root', 'raw', 64), ('data', 'raw', DATA_MIB)))
        vm.start()
        vm.wait_booted(300)
        overlay_dir = os.path.join(root, 'overlays')
        os.makedirs(overlay_dir)
        os.chmod(overlay_dir, 0o755)

        def by_us(gib):
            with _results.row_of(rows, dict(tool='vmfleet.kvm.snapshot', written_gib=gib)) as row:
                r = ours(vm, gib, overlay_dir, 'present')
                row['paused_ms'] = r.get('paused_ms')
                row['write_s'] = write_into(vm, 'vdb', gib)
                t0 = time.monotonic()
                r = ours(vm, gib, overlay_dir, 'absent')
                # the playbook's wall time, and the module's own (without ansible's start-up)
                row['delete_s'] = round(time.monotonic() - t0, 2)
                row['delete_module_s'] = r.get('duration_s')
                row['left_in_overlay_dir'] = os.listdir(overlay_dir)

        def by_hand(gib):
            with _results.row_of(rows, dict(tool='virsh', written_gib=gib)) as row:
                row['paused_ms'] = by_hand_snapshot(vm, overlay_dir)
                row['write_s'] = write_into(vm, 'vdb', gib)
                row['delete_s'] = by_hand_commit(vm, overlay_dir)

        # each size in both orders: the page cache one tool leaves weighs on the other once each way
        for gib in SIZES_GIB:
            for turn in ((by_us, by_hand), (by_hand, by_us)):
                for tool in turn:
                    tool(gib)
    if vm is not None:
        vm.stop()
    shutil.rmtree(root, ignore_errors=True)
    path = _results.write(RESULTS, 'external_snapshot', res)
    print('wrote %s.json' % path)
    if res['failed']:
        sys.exit(1)


if __name__ == '__main__':
    main()
