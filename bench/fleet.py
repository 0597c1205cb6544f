"""The fleet workflows at fleet scale (run by ``make bench``, never by the tests).

One host, up to 16 VMs of 256 MiB, libvirt domains and raw QEMU VMs alternating. Side by side in one run,
for 1, 4, 8 and 16 VMs, in ``mode: internal`` (both backends) and ``mode: instant``:
  * the three snapshot playbooks (pre_upgrade_snapshot, snapshot_rollback, snapshot_cleanup), each the
    wall time of the whole ``ansible-playbook`` run, start included, with every VM at once
    (``<role>_concurrency`` = the number of VMs);
  * from each role's report: the sum and the maximum of the per-VM module work (the snapshot, revert or
    deletion itself: ``duration_s``; and the VM's whole pipeline in the fleet module: ``wall_s``), and the
    largest guest pause;
  * the baseline an operator would otherwise write: a shell loop of ``virsh snapshot-create-as`` over
    the libvirt domains and of HMP ``savevm`` over the raw QEMU VMs;
  * with ``--before DIR`` (a checkout of an earlier version, its ``.collections`` linked), the same
    playbooks run from that version, for a before/after table;
  * the start of ``ansible-playbook`` itself (a play with one no-op task on the host);
  * the 1-VM workflow run ``--alone`` times (3): one VM's pause alone, the yardstick of the largest pause at
    4, 8 and 16 VMs, varies from run to run.


Usage: python bench/fleet.py [--sizes 1,4,8,16] [--modes internal,instant] [--before DIR] [--alone N]
Writes bench/results/fleet.json and fleet.png.
"""

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from rig import detached_guests
from rig.accel import detect_accel
from rig.ansible_run import run_alone, run_playbook, write_inventory, write_play
from rig.qmp import qmp
import _plot

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')
PLAYBOOKS = ('pre_upgrade_snapshot', 'snapshot_rollback', 'snapshot_cleanup')
# every disk qcow2: virsh snapshot-create-as and HMP savevm, the baseline, refuse a VM with a raw disk
DISKS = (('root', 'qcow2', 64), ('data', 'qcow2', 64))


def _playbook(name, vms, workdir, snap, mode, collections=None, at_once=True):
    """One workflow playbook over ``vms``, every VM at once (``at_once``) or as many at a time as the
    role's default concurrency; (wall seconds, the role's report)."""
    reports = os.path.join(workdir, 'reports')
    extra = dict(vmfleet_vms=[vm['connection'].get('qmp_socket') or vm['name'] for vm in vms],
                 vmfleet_snapshot_name=snap, vmfleet_snapshot_mode=mode, vmfleet_snapshot_keep=0)
    for role in PLAYBOOKS:
        extra['%s_report_dir' % role] = reports
        if at_once:
            extra['%s_concurrency' % role] = len(vms)
    t0 = time.monotonic()
    r = run_playbook('vmfleet.kvm.' + name, inventory=write_inventory(workdir), extra_vars=extra, cwd=workdir,
                     timeout=None, collections=collections)
    wall = time.monotonic() - t0
    if r.returncode:
        sys.stdout.write(r.stdout[-5000:] + r.stderr[-2000:])
        raise SystemExit('%s failed' % name)
    with open(os.path.join(reports, name + '.json')) as f:
        report = json.load(f)
    failed = [x['vm'] for x in report['vms'] if x['status'] != 'ok']
    if failed:
        raise SystemExit('%s failed on %s' % (name, failed))
    return wall, report


def _figures(wall, report):
    recs = report['vms']
    work = [x.get('duration_s') or 0 for x in recs]
    pipeline = [x['wall_s'] for x in recs if x.get('wall_s') is not None]
    paused = [x['paused_ms'] for x in recs if x.get('paused_ms') is not None]
    return dict(wall_s=round(wall, 2), work_sum_s=round(sum(work), 3), work_max_s=round(max(work), 3),
                vm_sum_s=round(sum(pipeline), 3) if pipeline else None,
                vm_max_s=round(max(pipeline), 3) if pipeline else None,
                paused_ms_max=round(max(paused), 1) if paused else None,
                # each backend's pauses, smallest first: the 1-VM run has a libvirt domain only
                paused_ms_by_backend=dict((b, sorted(round(x['paused_ms'], 1) for x in recs
                                                     if x.get('backend') == b and x.get('paused_ms') is not None))
                                          for b in sorted(set(x.get('backend') for x in recs))))


def _workflow(vms, workdir, mode, tag, collections=None, at_once=True):
    out = {}
    snap = 'bench-%s-%s-%d' % (tag, mode, len(vms))
    for name in PLAYBOOKS:
        out[name] = _figures(*_playbook(name, vms, workdir, snap, mode, collections, at_once))
        if name == 'pre_upgrade_snapshot':
            time.sleep(1)  # the guests run on a little, as during an upgrade
    return out


def one_task(vm, workdir, mode):
    """The wall seconds of a play of one vmfleet.kvm.snapshot task taking a snapshot of ``vm`` (the
    fixed Ansible cost of pre_upgrade_snapshot is measured against it); the snapshot deleted, untimed."""
    task = dict(vm['connection'], name='bench-one', mode=mode)
    task.pop('uri', None)
    r, wall = run_alone({'vmfleet.kvm.snapshot': task}, workdir, write_inventory(workdir), 'hypervisors')
    if r.get('failed'):
        raise SystemExit('one snapshot task failed: %s' % r.get('msg'))
    r = run_alone({'vmfleet.kvm.snapshot': dict(task, state='absent')}, workdir, write_inventory(workdir),
                  'hypervisors')[0]
    if r.get('failed'):
        raise SystemExit('deleting the one task\'s snapshot failed: %s' % r.get('msg'))
    return round(wall, 2)


def baseline(vms, snap):
    """What an operator would otherwise run: a shell loop, one VM after the other."""
    t0 = time.monotonic()
    for vm in vms:
        if vm['backend'] == 'libvirt':
            subprocess.run(['virsh', '-c', vm['connection']['uri'], 'snapshot-create-as', vm['name'], snap],
                           check=True, capture_output=True)
        else:
            qmp(vm['connection']['qmp_socket'], 'human-monitor-command', **{'command-line': 'savevm %s' % snap})
    wall = time.monotonic() - t0
    for vm in vms:  # clean up, untimed
        if vm['backend'] == 'libvirt':
            subprocess.run(['virsh', '-c', vm['connection']['uri'], 'snapshot-delete', vm['name'], snap],
                           check=True, capture_output=True)
        else:
            qmp(vm['connection']['qmp_socket'], 'human-monitor-command', **{'command-line': 'delvm %s' % snap})
    return round(wall, 2)


def playbook_start(workdir):
    play = write_play([{'name': 'nothing', 'ansible.builtin.meta': 'noop'}], os.path.join(workdir, 'noop.yml'),
                      hosts='hypervisors')
    t0 = time.monotonic()
    run_playbook(play, inventory=write_inventory(workdir), cwd=workdir, timeout=None)
    return round(time.monotonic() - t0, 2)


def plot(out, path):
    plt = _plot.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(out['modes']), figsize=(6 * len(out['modes']), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], out['modes']):
        rows = [r for r in out['runs'] if r['mode'] == mode]
        sizes = [r['vms'] for r in rows]
        for name, style in zip(PLAYBOOKS, ('o-', 's-', '^-')):
            ax.plot(sizes, [r['after'][name]['wall_s'] for r in rows], style, label='%s' % name)
            if all(r.get('before') for r in rows) and rows:
                ax.plot(sizes, [r['before'][name]['wall_s'] for r in rows], style, alpha=0.35,
                        label='%s (before)' % name)
        ax.plot(sizes, [r['after']['pre_upgrade_snapshot']['vm_max_s'] for r in rows], 'k:',
                label='slowest VM in pre_upgrade_snapshot')
        ax.plot(sizes, [r['baseline_loop_s'] for r in rows], 'r--', label='shell loop (virsh / HMP savevm)')
        ax.axhline(out['playbook_start_s'], color='grey', lw=0.8, label='ansible-playbook start')
        ax.set_title('mode: %s' % mode)
        ax.set_xlabel('VMs on the host')
        ax.set_ylabel('seconds')
        ax.set_xticks(sizes)
        ax.legend(fontsize=7)
    _plot.save(fig, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default='1,4,8,16')
    ap.add_argument('--modes', default='internal,instant')
    ap.add_argument('--before', help='a checkout of an earlier version (with .collections linked) to run too')
    ap.add_argument('--concurrency', choices=('all', 'default'), default='all',
                    help='all: every VM at once (<role>_concurrency = VMs); default: the roles\' own defaults')
    ap.add_argument('--name', default='fleet', help='file name (no suffix) of the results')
    ap.add_argument('--before-first', action='store_true', help='with --before: that version runs first at each size')
    ap.add_argument('--alone', type=int, default=3,
                    help='how many times the 1-VM workflow runs, for the pause of one VM alone (the first is the row)')
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(',') if x]
    modes = [m for m in args.modes.split(',') if m]
    before = os.path.join(os.path.abspath(args.before), '.collections') if args.before else None
    n = max(sizes)
    root = tempfile.mkdtemp(prefix='vmfleet-bench-fleet-', dir='/var/tmp')
    os.chmod(root, 0o755)
    fleet_dir = os.path.join(root, 'vms')
    t_start = time.monotonic()
    runs = []
    try:
        n_lv = (n + 1) // 2
        n_raw = n - n_lv
        print('booting %d VMs...' % n, flush=True)
        # four at a time: sixteen TCG guests booting at once on two cores take minutes each
        for i in range(0, n_lv, 2):
            vms = detached_guests.up(fleet_dir, ['vmfleet-bench-lv%d' % j for j in range(min(i + 2, n_lv))],
                                     ['vmfleet-bench-raw%d' % j for j in range(min(i + 2, n_raw))], 256, disks=DISKS)
        lv = [vm for vm in vms if vm['backend'] == 'libvirt']
        raw = [vm for vm in vms if vm['backend'] == 'qemu']
        mixed = [vm for pair in itertools.zip_longest(lv, raw) for vm in pair if vm is not None]
        start = playbook_start(root)
        for mode in modes:
            for size in sizes:
                chosen = mixed[:size]
                row = dict(mode=mode, vms=len(chosen), backends=sorted(set(vm['backend'] for vm in chosen)))
                # with --before, the two versions take turns going first (the first run of a size ran slower)
                first_before = before and args.before_first
                if first_before:
                    row['before'] = _workflow(chosen, root, mode, 'b', collections=before,
                                              at_once=args.concurrency == 'all')
                row['after'] = _workflow(chosen, root, mode, 'a', at_once=args.concurrency == 'all')
                if size == 1:
                    row['one_task_s'] = one_task(chosen[0], root, mode)
                if before and not first_before:
                    row['before'] = _workflow(chosen, root, mode, 'b', collections=before,
                                              at_once=args.concurrency == 'all')
                if size == 1 and args.alone > 1:
                    # one sample of one VM's pause is a noisy yardstick for the largest of 16: take it again
                    for side, tag, coll in (('after', 'a', None), ('before', 'b', before)):
                        if side in row:
                            row[side + '_alone_paused_ms'] = [row[side]['pre_upgrade_snapshot']['paused_ms_max']] + [
                                _workflow(chosen, root, mode, '%s%d' % (tag, i), collections=coll,
                                          at_once=args.concurrency == 'all')['pre_upgrade_snapshot']['paused_ms_max']
                                for i in range(2, args.alone + 1)]
                row['baseline_loop_s'] = baseline(chosen, 'bench-loop-%d' % len(chosen))
                runs.append(row)
                print(json.dumps(row), flush=True)
    finally:
        detached_guests.down(fleet_dir)
        shutil.rmtree(root, ignore_errors=True)
    out = dict(benchmark='fleet', accel=detect_accel(), host=platform.node(), cpus=os.cpu_count(), memory_mib=256,
               modes=modes, sizes=sizes, concurrency=args.concurrency, before_first=bool(args.before_first),
               alone=args.alone,
               playbook_start_s=start, runs=runs,
               wall_s=round(time.monotonic() - t_start, 1),
               notes='wall_s: the whole ansible-playbook run on this host (start included), every VM at once '
                     '(<role>_concurrency = VMs), or with concurrency default at the roles\' defaults (2 for '
                     'pre_upgrade_snapshot and snapshot_rollback, 4 for snapshot_cleanup). one_task_s: a play '
                     'of one vmfleet.kvm.snapshot task taking the snapshot of the first VM, its whole '
                     'ansible-playbook run, over the local connection the roles\' runs use too. work_*: the per-VM '
                     'snapshot/revert/deletion as the role reports '
                     'it (duration_s); vm_*: each VM\'s whole pipeline in the fleet module (wall_s: act, verify, '
                     'retention, state after). paused_ms_max: the largest guest pause (QEMU\'s STOP/RESUME events). '
                     'baseline_loop_s: virsh snapshot-create-as / HMP savevm, one VM after the other. before: the '
                     'same playbooks from the version given with --before, with the same concurrency (a version '
                     'without instant snapshots of libvirt domains fails those rows). paused_ms_by_backend: every '
                     'VM\'s pause, per backend. after_alone_paused_ms / before_alone_paused_ms: the largest pause of '
                     'the 1-VM pre_upgrade_snapshot run --alone times, the first being the row\'s (one VM\'s pause '
                     'alone varies from run to run: the yardstick for the largest of 4, 8 and 16 is their median). '
                     'Guests run under TCG and share 2 cores.')
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, args.name + '.json')
    with open(path, 'w') as f:
        json.dump(out, f, indent=1)
    plot(out, os.path.join(RESULTS, args.name + '.png'))
    print('wrote %s and %s.png' % (path, args.name))


if __name__ == '__main__':
    main()
