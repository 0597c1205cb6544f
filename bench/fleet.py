"""The fleet job at fleet scale (run by ``make bench``, never by the tests).

One host, 8 VMs (4 libvirt domains, 4 raw QEMU VMs, 256 MiB each). Side by side in one run:
  * single: each VM snapshotted alone, one after the other, by one vmfleet.kvm.snapshot task each;
    the sum of those times is what a plain loop over the VMs costs;
  * role: the pre_upgrade_snapshot playbook over all 8 VMs, with 1, 2, 4 and 8 VMs at once
    (pre_upgrade_snapshot_concurrency), wall time of the whole ansible-playbook run;
  * Ansible's own overhead per VM: a task's round trip (controller clock around the task) minus
    the work the module reports doing inside it (duration_s: QMP and libvirt calls, the guest pause).

Usage: python bench/fleet.py [--vms 8] [--concurrency 1,2,4,8]
Writes bench/results/fleet.json.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

from rig import fleet
from rig.accel import detect_accel
from rig.ansible_run import run_playbook, write_inventory, write_play

RESULTS = os.path.join(HERE, 'results')


def _run(playbook, workdir, extra):
    """Run a playbook on the hypervisors group (this host); its wall time."""
    t0 = time.monotonic()
    r = run_playbook(playbook, inventory=write_inventory(workdir), extra_vars=extra, cwd=workdir, timeout=None)
    wall = time.monotonic() - t0
    if r.returncode:
        sys.stdout.write(r.stdout[-5000:] + r.stderr[-2000:])
        raise SystemExit('%s failed' % ' '.join(r.args[:4]))
    return wall


def single(vms, workdir):
    """One snapshot task per VM, each timed on the controller around the task."""
    tasks = []
    for i, vm in enumerate(vms):
        tasks += [
            {'name': 't0 %d' % i, 'ansible.builtin.set_fact': {'t0_%d' % i: '{{ now().timestamp() }}'}},
            {'name': 'snapshot %d' % i, 'vmfleet.kvm.snapshot': dict(vm['connection'], name='bench-single'),
             'register': 'r_%d' % i},
            {'name': 't1 %d' % i, 'ansible.builtin.set_fact': {'t1_%d' % i: '{{ now().timestamp() }}'}},
        ]
    out = os.path.join(workdir, 'single.json')
    collect = ', '.join(
        "'vm%d': {'round_trip_s': t1_%d | float - t0_%d | float, 'duration_s': r_%d.duration_s, "
        "'paused_ms': r_%d.paused_ms, 'route': r_%d.route}" % ((i,) * 6) for i in range(len(vms)))
    tasks.append({'name': 'write', 'ansible.builtin.copy': {'content': '{{ {%s} | to_json }}' % collect,
                                                            'dest': out, 'mode': '0600'}})
    path = write_play(tasks, os.path.join(workdir, 'single.yml'), hosts='hypervisors', name='single')
    wall = _run(path, workdir, {})
    with open(out) as f:
        per_vm = json.load(f)
    rows = []
    for i, vm in enumerate(vms):
        r = per_vm['vm%d' % i]
        rows.append(dict(vm=vm['name'], backend=vm['backend'], round_trip_s=round(float(r['round_trip_s']), 3),
                         module_work_s=float(r['duration_s']), paused_ms=float(r['paused_ms']), route=r['route'],
                         ansible_overhead_s=round(float(r['round_trip_s']) - float(r['duration_s']), 3)))
    return wall, rows


def role(vms, workdir, concurrency):
    extra = dict(vmfleet_vms=[vm['connection'].get('qmp_socket') or vm['name'] for vm in vms],
                 vmfleet_snapshot_name='bench-c%d' % concurrency, vmfleet_snapshot_keep=0,
                 pre_upgrade_snapshot_concurrency=concurrency,
                 pre_upgrade_snapshot_report_dir=os.path.join(workdir, 'reports'))
    wall = _run('vmfleet.kvm.pre_upgrade_snapshot', workdir, extra)
    with open(os.path.join(workdir, 'reports', 'pre_upgrade_snapshot.json')) as f:
        report = json.load(f)
    failed = [r['vm'] for r in report['vms'] if r['status'] != 'ok']
    if failed:
        raise SystemExit('pre_upgrade_snapshot failed on %s' % failed)
    return dict(concurrency=concurrency, wall_s=round(wall, 2),
                module_work_sum_s=round(sum(r['duration_s'] for r in report['vms']), 2),
                paused_ms_max=max(r['paused_ms'] for r in report['vms']))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--vms', type=int, default=8)
    ap.add_argument('--concurrency', default='1,2,4,8')
    args = ap.parse_args()
    n_lv = args.vms // 2
    root = tempfile.mkdtemp(prefix='vmfleet-bench-fleet-', dir='/var/tmp')
    os.chmod(root, 0o755)
    fleet_dir = os.path.join(root, 'vms')
    t_start = time.monotonic()
    try:
        print('booting %d VMs...' % args.vms, flush=True)
        vms = fleet.up(fleet_dir, ['vmfleet-bench-lv%d' % i for i in range(n_lv)],
                       ['vmfleet-bench-raw%d' % i for i in range(args.vms - n_lv)], 256)
        wall_single, rows = single(vms, root)
        print('single: %d tasks in %.1f s (sum of round trips %.1f s)'
              % (len(rows), wall_single, sum(r['round_trip_s'] for r in rows)), flush=True)
        runs = []
        for c in [int(x) for x in args.concurrency.split(',') if x]:
            runs.append(role(vms, root, c))
            print('role, %d at once: %.1f s' % (c, runs[-1]['wall_s']), flush=True)
    finally:
        fleet.down(fleet_dir)
        shutil.rmtree(root, ignore_errors=True)
    overhead = [r['ansible_overhead_s'] for r in rows]
    out = dict(benchmark='fleet', accel=detect_accel(), host=platform.node(), cpus=os.cpu_count(),
               vms=args.vms, memory_mib=256,
               single=dict(playbook_wall_s=round(wall_single, 2),
                           sum_round_trip_s=round(sum(r['round_trip_s'] for r in rows), 2),
                           sum_module_work_s=round(sum(r['module_work_s'] for r in rows), 2), per_vm=rows),
               role=runs,
               ansible_overhead_per_vm_s=dict(median=round(statistics.median(overhead), 3),
                                              min=min(overhead), max=max(overhead)),
               wall_s=round(time.monotonic() - t_start, 1),
               notes='single: one vmfleet.kvm.snapshot task per VM in one playbook, round trip timed on the '
                     'controller around each task (set_fact stamps; one local task costs ~0.1 s); module_work_s '
                     'is the module\'s own duration_s. role: the whole pre_upgrade_snapshot playbook (selection, '
                     'snapshot, read-back check, report), wall time of ansible-playbook including its start. '
                     'Guests run under TCG on this host: 8 guests share 2 cores.')
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, 'fleet.json')
    with open(path, 'w') as f:
        json.dump(out, f, indent=1)
    print('wrote %s' % path)


if __name__ == '__main__':
    main()
