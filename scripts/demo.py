"""make demo: boot two real VMs (a libvirt domain and a raw QEMU), run the
demo workflow on each through ansible-playbook, and show that each guest's
counter went back to the snapshot's moment. Everything is torn down after."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))

from rig.accel import detect_accel  # noqa: E402
from rig.libvirt_vm import LibvirtVM  # noqa: E402
from rig.qemu_vm import QemuVM  # noqa: E402


def counters(log, start=0):
    with open(log, 'rb') as f:
        f.seek(start)
        return [int(n) for n in re.findall(rb'VMFLEET-COUNTER (\d+)', f.read())]


def run_demo(vm, conn, disks, workdir):
    out = os.path.join(workdir, vm.name + '.json')
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.collections'),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING='false',
               ANSIBLE_INVENTORY_UNPARSED_WARNING='false')
    extra = json.dumps({'vm': conn, 'disks': disks, 'out': out})
    mark = os.path.getsize(vm.serial_log)
    before_revert = {}

    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'),
                             '-i', 'localhost,', os.path.join(REPO, 'scripts', 'demo-playbook.yml'),
                             '-e', extra], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if 'TASK [Revert' in line:
            before_revert['counter'] = max(counters(vm.serial_log, mark) or [0])
            before_revert['offset'] = os.path.getsize(vm.serial_log)
    proc.wait()
    if proc.returncode != 0:
        sys.stdout.write(''.join(lines))
        raise SystemExit('demo playbook failed on %s' % vm.name)
    time.sleep(3)
    with open(out) as f:
        res = json.load(f)
    res['counter_before_revert'] = before_revert['counter']
    res['counters_after_revert'] = counters(vm.serial_log, before_revert['offset'])[:4]
    return res


def report(vm, res):
    info = res['info']['vms'][0]
    host = res['info']['host']
    taken = res['taken']
    print('\n== %s (%s, %s)' % (info['name'], info['backend'], info['state']))
    for d in info['disks']:
        print('   disk %-9s %-6s %5d MiB  %s' % (d['name'], d['format'], d['virtual_size'] // 2**20, d['file']))
    print('   snapshot %r on %s, RAM state in %s (%d KiB), guest paused %.0f ms, route %s'
          % (taken['snapshot']['name'], ', '.join(taken['snapshot']['disks']), taken['snapshot']['vmstate_disk'],
             taken['snapshot']['vm_state_size'] // 1024, taken['paused_ms'], taken['route']))
    after = res['counters_after_revert']
    print('   guest counter before revert: %d; after revert it counts %s  -> went back %d s'
          % (res['counter_before_revert'], after, res['counter_before_revert'] - after[0] + 1))
    print('   snapshot deleted: %s' % res['deleted']['changed'])
    return host, after and after[0] < res['counter_before_revert']


def main():
    subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'sweep_demo.py')], check=False)
    accel = detect_accel()
    root = tempfile.mkdtemp(prefix='vmfleet-demo-', dir='/var/tmp')
    os.chmod(root, 0o755)
    vms = []
    ok = True
    try:
        lv = LibvirtVM(os.path.join(root, 'lv'), name='vmfleet-demo-lv', accel=accel)
        raw = QemuVM(os.path.join(root, 'raw'), name='vmfleet-demo-raw', accel=accel)
        for vm in (lv, raw):
            os.makedirs(vm.workdir, exist_ok=True)
            os.chmod(vm.workdir, 0o755)
            vms.append(vm)
            vm.start()
        for vm in (lv, raw):
            vm.wait_booted(120)
        print('Booted a libvirt domain and a raw QEMU VM (accel: %s); running the demo playbook on each...' % accel)
        results = [(lv, run_demo(lv, {'domain': lv.name}, ['vda', 'vdb'], root)),
                   (raw, run_demo(raw, {'qmp_socket': raw.qmp_socket}, ['root', 'data'], root))]
        host = None
        for vm, res in results:
            host, went_back = report(vm, res)
            ok = ok and went_back
        print('\n== host: QEMU %s, libvirt %s' % (host['qemu_version'], host['libvirt_version']))
        for k, v in sorted(host['capabilities'].items()):
            print('   %-26s %s' % (k, 'yes' if v else 'no'))
        print('\nDemo %s.' % ('succeeded: both guests went back in time' if ok else 'FAILED'))
    finally:
        for vm in vms:
            vm.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
