"""make demo: the main fleet job on two real VMs (a libvirt domain and a raw
QEMU), through the collection's own playbooks, as an operator runs them:
pre_upgrade_snapshot, the guests run on ("the upgrade"), snapshot_rollback,
snapshot_cleanup. It shows that each guest's counter went back to the
snapshot's moment, prints a short report, and tears everything down."""

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from rig import detached_guests
from rig.accel import detect_accel
from rig.ansible_run import run_playbook, write_inventory

SNAPSHOT = 'demo'


def playbook(name, extra, workdir):
    print('$ ansible-playbook vmfleet.kvm.%s -e vmfleet_snapshot_name=%s' % (name, SNAPSHOT), flush=True)
    t0 = time.monotonic()
    r = run_playbook('vmfleet.kvm.' + name, inventory=write_inventory(workdir), extra_vars=extra, cwd=workdir,
                     timeout=None)
    if r.returncode:
        sys.stdout.write(r.stdout[-6000:] + r.stderr[-2000:])
        raise SystemExit('the %s playbook failed' % name)
    with open(os.path.join(workdir, 'reports', name + '.json')) as f:
        report = json.load(f)
    print('  done in %.1f s' % (time.monotonic() - t0))
    return report


def main():
    subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'sweep_demo.py')], check=False)
    root = tempfile.mkdtemp(prefix='vmfleet-demo-', dir='/var/tmp')
    os.chmod(root, 0o755)
    ok = True
    try:
        print('Booting a libvirt domain and a raw QEMU VM (accel: %s)...' % detect_accel(), flush=True)
        vms = detached_guests.up(os.path.join(root, 'vms'), ['vmfleet-demo-lv'], ['vmfleet-demo-raw'], 256)
        fleet_dir = os.path.join(root, 'vms')
        extra = dict(vmfleet_vms=[vm['connection'].get('qmp_socket') or vm['name'] for vm in vms],
                     vmfleet_snapshot_name=SNAPSHOT,
                     pre_upgrade_snapshot_report_dir=os.path.join(root, 'reports'),
                     snapshot_rollback_report_dir=os.path.join(root, 'reports'),
                     snapshot_cleanup_report_dir=os.path.join(root, 'reports'))

        taken = playbook('pre_upgrade_snapshot', extra, root)
        print('  ...the guests run on, as during an upgrade', flush=True)
        time.sleep(6)
        before = detached_guests.counters(fleet_dir)
        rolled = playbook('snapshot_rollback', extra, root)
        time.sleep(3)
        after = detached_guests.counters(fleet_dir)
        cleaned = playbook('snapshot_cleanup', extra, root)

        print('\n== Report')
        for vm in vms:
            name = vm['name']
            t = next(r for r in taken['vms'] if r['vm'] == name)
            rb = next(r for r in rolled['vms'] if r['vm'] == name)
            cl = next(r for r in cleaned['vms'] if r['vm'] == name)
            drop = after[name]['drops'][-1] if after[name]['drops'] else None
            went_back = bool(drop) and drop[1] < before[name]['last']
            ok = ok and went_back and t['status'] == rb['status'] == cl['status'] == 'ok'
            print('%s (%s)' % (name, vm['backend']))
            print('   snapshot vmfleet-%s on %s, guest paused %.0f ms; left out: %s'
                  % (SNAPSHOT, ', '.join(t['disks']), t['paused_ms'] or 0,
                     '; '.join('%s (%s)' % (x['disk'], x['reason']) for x in t['left_out']) or 'nothing'))
            print('   guest counter before rollback: %d; after: %s'
                  % (before[name]['last'], 'went back from %d to %d and runs on (%d now)' % (drop[0], drop[1], after[name]['last'])
                     if went_back else 'DID NOT GO BACK %s' % after[name]['seen'][-8:]))
            print('   rollback: %s, VM %s; cleanup deleted: %s'
                  % (rb['status'], rb.get('state_after'), ', '.join(cl.get('deleted') or []) or 'nothing'))
        print('\nEach role also published its report to set_stats (vmfleet_<role>, what AWX shows as artifacts)'
              ' and wrote it as JSON on the host (here in a scratch directory removed with the demo VMs).')
        print('Demo %s.' % ('succeeded: both guests went back in time' if ok else 'FAILED'))
    finally:
        detached_guests.down(os.path.join(root, 'vms'))
        subprocess.run(['rm', '-rf', root], check=False)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
