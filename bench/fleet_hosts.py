"""What a run costs per hypervisor (run by ``make bench``, never by the tests).

The simulated fleet of tests/rig/hypervisors.py (each hypervisor its own network namespace, sshd
and libvirtd, reached over SSH as a user who becomes root), 1, 4, 8 and 16 hypervisors, each with
one small raw QEMU VM. For each size, the wall time of the whole ``ansible-playbook`` run of
``pre_upgrade_snapshot`` (``mode: instant``) and of ``snapshot_cleanup`` (deleting that
snapshot), under these controller settings:

  * ``default``: Ansible's defaults (forks 5, no pipelining, ssh ControlPersist=60s);
  * ``forks=N``: forks = the number of hosts, the rest as the defaults;
  * ``forks=N+pipelining``: and pipelining on;
  * ``forks=N+pipelining-cp``: pipelining on, no SSH multiplexing (ControlMaster=no);
  * ``forks=N-cp``: no pipelining, no SSH multiplexing.

Each run gets a control path directory of its own, so that no run reuses the SSH masters an
earlier one left. The per-host cost is the slope of the wall time over the hosts (least squares).

The machine is not quiet (other work shares its two cores): its load average is recorded with
every row; read the figures as an upper bound of the per-host cost.

Usage: python bench/fleet_hosts.py [--sizes 1,4,8,16] [--configs default,forks=N,...] [--budget SECONDS]
Writes bench/results/fleet_hosts.json and fleet_hosts.png.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

from rig.accel import detect_accel
from rig.ansible_run import run_playbook
from rig.hypervisors import Fleet
import _plot
import _results

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')
PLAYBOOKS = ('pre_upgrade_snapshot', 'snapshot_cleanup')
# Ansible's own ssh_args but ControlMaster=no: every task opens its own SSH connection
NO_CONTROL_PERSIST = '-C -o ControlMaster=no'
CONFIGS = {
    'default': {},
    'forks=N': dict(forks=True),
    'forks=N+pipelining': dict(forks=True, pipelining=True),
    'forks=N+pipelining-cp': dict(forks=True, pipelining=True, control_persist=False),
    'forks=N-cp': dict(forks=True, control_persist=False),
}
NOTES = ('wall_s: the whole ansible-playbook run (its start included) over the first N hypervisors of the simulated '
         'fleet, one raw QEMU VM each (128 MiB, TCG), pre_upgrade_snapshot in mode instant then snapshot_cleanup of '
         'that snapshot. default: forks 5, no pipelining, ssh ControlPersist=60s (Ansible defaults); forks=N: forks = '
         'hosts; +pipelining: ANSIBLE_PIPELINING; -cp: ssh_args without ControlPersist (ControlMaster=no). '
         'per_host_s: least-squares slope of wall_s over the hosts for each config and playbook; fixed_s: its '
         'intercept. The controller, the 16 sshd/libvirtd and the guests share 2 cores with other work (see '
         'load_avg per row): the per-host figures are an upper bound.')


def env_of(config, hosts):
    c = CONFIGS[config]
    env = {}
    if c.get('forks'):
        env['ANSIBLE_FORKS'] = str(hosts)
    env['ANSIBLE_PIPELINING'] = 'True' if c.get('pipelining') else 'False'
    if c.get('control_persist', True) is False:
        env['ANSIBLE_SSH_ARGS'] = NO_CONTROL_PERSIST
    return env


def run(fleet, inventory, playbook, hosts, config, snap, workdir):
    """One playbook over the first ``hosts`` hypervisors: its wall seconds."""
    cp_dir = tempfile.mkdtemp(prefix='cp-', dir=workdir)  # no SSH master of an earlier run
    extra = dict(vmfleet_hosts=','.join(h.name for h in fleet.hosts[:hosts]), vmfleet_snapshot_name=snap,
                 vmfleet_snapshot_mode='instant', vmfleet_snapshot_keep=0, ansible_control_path_dir=cp_dir)
    t0 = time.monotonic()
    r = run_playbook('vmfleet.kvm.' + playbook, inventory=inventory, extra_vars=extra, cwd=workdir, timeout=1800,
                     env=env_of(config, hosts))
    wall = time.monotonic() - t0
    if r.returncode:
        sys.stdout.write(r.stdout[-4000:] + r.stderr[-2000:])
        raise RuntimeError('%s over %d hosts (%s) failed' % (playbook, hosts, config))
    return round(wall, 2)


def slope(points):
    """Least squares over (hosts, seconds): (seconds per host, fixed seconds); None with fewer than 2 sizes."""
    if len({p[0] for p in points}) < 2:
        return None, None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((p[0] - mx) ** 2 for p in points)
    return round(b, 3), round(my - b * mx, 2)


def summarize(rows):
    out = {}
    for config in CONFIGS:
        for playbook in PLAYBOOKS:
            pts = [(r['hosts'], r[playbook]) for r in rows if r['config'] == config and r.get(playbook) is not None]
            if pts:
                per_host, fixed = slope(pts)
                out.setdefault(config, {})[playbook] = dict(per_host_s=per_host, fixed_s=fixed, points=len(pts))
    return out


def plot(result, path):
    plt = _plot.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(PLAYBOOKS), figsize=(12, 4.5), squeeze=False)
    for ax, playbook in zip(axes[0], PLAYBOOKS):
        for config, style in zip(CONFIGS, ('o-', 's-', '^-', 'v--', 'd--')):
            rows = [r for r in result['rows'] if r['config'] == config and r.get(playbook) is not None]
            if rows:
                ax.plot([r['hosts'] for r in rows], [r[playbook] for r in rows], style, label=config)
        ax.set_title(playbook)
        ax.set_xlabel('hypervisors (one raw QEMU VM each)')
        ax.set_ylabel('wall time of the run, s')
        ax.set_xticks(result['sizes'])
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _plot.save(fig, path, title='vmfleet.kvm: wall time over the hypervisors (simulated fleet, 2 shared cores)')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default='1,4,8,16')
    ap.add_argument('--configs', default=','.join(CONFIGS))
    ap.add_argument('--budget', type=float, default=0, help='seconds: start no new size past this (0: none)')
    ap.add_argument('--memory', type=int, default=128, help='MiB per guest')
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(',') if x)
    configs = [c for c in args.configs.split(',') if c]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit('unknown config %s (%s)' % (c, ', '.join(CONFIGS)))
    result = _results.header('fleet_hosts', sizes=sizes, configs=configs, memory_mib=args.memory, notes=NOTES,
                             quiet_host=False, not_run=[])
    rows = []
    workdir = tempfile.mkdtemp(prefix='vmfleet-bench-hosts-', dir='/var/tmp')
    os.chmod(workdir, 0o755)
    fleet = Fleet(hosts=max(sizes), vms_per_host=0, prefix='vmfs', subnet='10.218')
    t0 = time.monotonic()
    with _results.recorded(result):
        try:
            fleet.up()
            accel = detect_accel()
            booted = time.monotonic()
            # four at a time: sixteen TCG guests booting at once on two busy cores miss their 300 s
            for i in range(0, len(fleet.hosts), 4):
                for h in fleet.hosts[i:i + 4]:
                    h.add_vm('qemu', '%s-raw1' % h.ns, args.memory, accel, False)
                fleet.wait_booted(fleet.hosts[i:i + 4])
            result['boot_s'] = round(time.monotonic() - booted, 1)
            inventory = fleet.write_inventory()
            for size in sizes:
                if args.budget and time.monotonic() - t0 > args.budget:
                    result['not_run'].append('%d hosts: past the time budget (--budget %d s)' % (size, args.budget))
                    continue
                for config in configs:
                    row = dict(hosts=size, config=config, load_avg=[round(x, 2) for x in os.getloadavg()])
                    with _results.row_of(rows, row):
                        snap = 'bench-%d-%s' % (size, config.replace('=', '').replace('+', '-'))
                        for playbook in PLAYBOOKS:
                            row[playbook] = run(fleet, inventory, playbook, size, config, snap, workdir)
        finally:
            fleet.down()
            shutil.rmtree(workdir, ignore_errors=True)
    result.update(rows=rows, summary=summarize(rows))
    path = _results.write(RESULTS, 'fleet_hosts', result)
    plot(result, path + '.png')
    print('wrote %s.json and .png' % path)
    return 1 if result['failed'] or any('error' in r for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
