"""The fleet for real: simulated hypervisors (tests/rig/hypervisors.py), each its own
network namespace, sshd and libvirtd, reached by ansible-playbook over SSH as a
non-root user who becomes root."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from rig.ansible_run import run_playbook
from rig.guest import REPO
from rig.hypervisors import Fleet
from rig.libvirt_vm import LibvirtVM
from rig.targets import Target

HOSTS = 4
# each guest's counter must rise this far past where it was when the play ended
RUN_ON = 2


@pytest.fixture(scope='module')
def fleet():
    """4 hypervisors with 2 VMs each (a libvirt domain and a raw QEMU VM), plus one host
    with no VM whose python lacks libvirt-python and qemu.qmp ("not prepared")."""
    f = Fleet(hosts=HOSTS, vms_per_host=2, memory_mib=256, bare_hosts=1)
    f.up()
    try:
        yield f
    finally:
        f.down()


def _targets(host):
    return [Target(vm, 'libvirt' if isinstance(vm, LibvirtVM) else 'qemu') for vm in host.vms]


def _recap(out):
    """PLAY RECAP: {host: {ok: n, changed: n, unreachable: n, failed: n, ...}}."""
    recap = {}
    for m in re.finditer(r'^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$', out.split('PLAY RECAP', 1)[-1], re.M):
        recap[m.group(1)] = dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', m.group(2)))
    return recap


def _snapshots(path):
    """Snapshot names in an image, read beside the QEMU that holds it."""
    info = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json', path], check=True,
                                     capture_output=True, text=True).stdout)
    return [s['name'] for s in info.get('snapshots', [])]


def _play(tmp_path, hosts, tasks):
    """A play on ``hosts`` whose tasks' results land in a file on the controller."""
    out = tmp_path / 'results.json'
    body = []
    for i, t in enumerate(tasks):
        body.append(dict(t, register='r%d' % i, ignore_errors=True))
    body.append({'name': 'hand the results to the test',
                 'ansible.builtin.copy': {'content': '{{ [%s] | to_json }}' % ', '.join('r%d' % i for i in range(len(tasks))),
                                          'dest': str(out), 'mode': '0600'},
                 'delegate_to': 'localhost', 'become': False,
                 'vars': {'ansible_connection': 'local'}})
    path = tmp_path / 'play.yml'
    path.write_text(yaml.safe_dump([{'hosts': hosts, 'gather_facts': False, 'tasks': body}]))
    return path, out


def test_a_module_on_a_host_without_the_libraries_says_which_to_install(fleet, tmp_path):
    bare = fleet.bare_hosts[0]
    play, out = _play(tmp_path, bare.name, [
        {'name': 'a libvirt VM', 'vmfleet.kvm.vm_info': {}},
        {'name': 'a raw QEMU VM', 'vmfleet.kvm.snapshot_info': {'qmp_socket': fleet.hosts[0].qmp_sockets[0]}},
    ])
    proc = run_playbook(play, inventory=fleet.inventory, timeout=300)
    log = proc.stdout + proc.stderr
    assert os.path.exists(out), log[-4000:]
    libvirt_r, qmp_r = json.loads(out.read_text())
    for r, lib in ((libvirt_r, 'libvirt-python'), (qmp_r, 'qemu.qmp')):
        assert r.get('failed') is True, r
        # Ansible's missing_required_lib message: the library, the host's python, what to do
        assert 'Failed to import the required Python library (%s)' % lib in r['msg'], r['msg']
        assert bare.python in r['msg'] and 'install' in r['msg'], r['msg']
        assert 'module_stderr' not in r and 'MODULE FAILURE' not in r['msg'], r
    assert 'Traceback' not in log, log[-4000:]


def test_the_hypervisor_role_prepares_a_host_then_the_modules_work_there(fleet, tmp_path):
    bare = fleet.bare_hosts[0]
    # the simulated hosts reach no package index (their only link is to this machine): the
    # controller fetches the wheels, the role installs from them as on an air-gapped hypervisor
    wheels = tmp_path / 'wheels'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '-w', str(wheels), '-r',
                    os.path.join(REPO, 'requirements.txt')], check=True, timeout=900)
    play = tmp_path / 'prepare.yml'
    play.write_text(yaml.safe_dump([{
        'hosts': bare.name, 'gather_facts': False,
        # the host's python is the venv to prepare
        'roles': [{'role': 'vmfleet.kvm.hypervisor',
                   'vars': {'hypervisor_venv': fleet.bare_venv,
                            'hypervisor_pip_environment': {'PIP_NO_INDEX': '1', 'PIP_FIND_LINKS': str(wheels)}}}]}]))

    def prepare(check=False):
        proc = run_playbook(play, inventory=fleet.inventory, check=check, timeout=900)
        recap = _recap(proc.stdout).get(bare.name)
        assert proc.returncode == 0 and recap and recap['failed'] == 0, (proc.stdout + proc.stderr)[-4000:]
        return recap, proc.stdout

    # check mode predicts the installs and makes none
    recap = prepare(check=True)[0]
    assert recap['changed'] >= 1, recap
    assert subprocess.run([bare.python, '-c', 'import libvirt'], capture_output=True, check=False).returncode != 0
    recap, out = prepare()
    assert recap['changed'] >= 1, recap
    assert 'set ansible_python_interpreter=%s' % bare.python in out, out[-3000:]
    # idempotent, and check mode agrees
    for check in (False, True):
        recap, out = prepare(check=check)
        assert recap['changed'] == 0, (check, out[-3000:])

    play, out = _play(tmp_path, bare.name, [
        {'name': 'libvirt', 'vmfleet.kvm.vm_info': {}},
        {'name': 'a raw QEMU VM', 'vmfleet.kvm.snapshot_info': {'qmp_socket': fleet.hosts[0].qmp_sockets[0]}},
    ])
    proc = run_playbook(play, inventory=fleet.inventory, timeout=300)
    assert os.path.exists(out), (proc.stdout + proc.stderr)[-4000:]
    libvirt_r, qmp_r = json.loads(out.read_text())
    assert not libvirt_r.get('failed') and libvirt_r['vms'] == [], libvirt_r
    assert not qmp_r.get('failed'), qmp_r


def test_pre_upgrade_snapshot_over_ssh_with_an_unreachable_host_and_a_host_without_libvirtd(fleet, tmp_path):
    healthy, down_ssh, down_libvirt = fleet.hosts[:2], fleet.hosts[2], fleet.hosts[3]
    down_ssh.stop_sshd()
    down_libvirt.stop_libvirtd()
    try:
        start = time.monotonic()
        proc = run_playbook('vmfleet.kvm.pre_upgrade_snapshot', inventory=fleet.inventory, timeout=900,
                            extra_vars={'vmfleet_snapshot_name': 'fleet-ssh', 'vmfleet_hosts': 'hypervisors:!hv5'})
        print('pre_upgrade_snapshot over %d hosts: %.1f s' % (HOSTS, time.monotonic() - start))
    finally:
        down_ssh.start_sshd()
        down_libvirt.start_libvirtd()
    out = proc.stdout + proc.stderr
    tail = out[-6000:]
    assert proc.returncode != 0, tail
    assert 'Traceback' not in out, tail
    recap = _recap(proc.stdout)
    for h in healthy:
        assert recap[h.name]['failed'] == 0 and recap[h.name]['unreachable'] == 0, (h.name, recap, tail)
    assert recap[down_ssh.name]['unreachable'] == 1, (recap, tail)
    assert recap[down_libvirt.name]['failed'] == 1, (recap, tail)
    assert 'hv5' not in recap, recap
    # the run names each bad host and why
    assert re.search(r'\[%s\]: UNREACHABLE!' % down_ssh.name, out), tail
    m = re.search(r'fatal: \[%s\]: FAILED! => (.*)' % down_libvirt.name, out)
    assert m and 'failed on 1 VM(s) of %s' % down_libvirt.name in m.group(1), tail
    assert 'qemu:///system: cannot connect to libvirt at qemu:///system' in m.group(1), m.group(1)

    for h in healthy:
        # each host's own report, in its own /var/lib/vmfleet
        report = json.loads(open(h.path('vmfleet', 'reports', 'pre_upgrade_snapshot.json')).read())
        assert report['host'] == h.name and not report['failed'], report
        records = dict((r['vm'], r) for r in report['vms'])
        assert sorted(records) == sorted(vm.name for vm in h.vms), records
        for t in _targets(h):
            r = records[t.vm.name]
            assert r['status'] == 'ok' and r['changed'] is True, r
            assert r['state_before'] == r['state_after'] == 'running', r
            # the snapshot is in the images themselves
            for disk in ('root', 'data'):
                assert 'vmfleet-fleet-ssh' in _snapshots(t.vm.disk_path(disk)), (t.vm.name, disk)
    # the host without libvirtd: its domains failed as one record, its raw QEMU VMs were snapshotted all the same
    report = json.loads(open(down_libvirt.path('vmfleet', 'reports', 'pre_upgrade_snapshot.json')).read())
    records = dict((r['vm'], r) for r in report['vms'])
    assert records['qemu:///system']['status'] == 'failed', report
    raw = [t for t in _targets(down_libvirt) if t.backend == 'qemu']
    assert raw and report['changed'] == [t.vm.name for t in raw], report
    for t in raw:
        assert 'vmfleet-fleet-ssh' in _snapshots(t.vm.disk_path('root')), t.vm.name
    # nothing touched the unreachable host
    assert not os.path.exists(down_ssh.path('vmfleet', 'reports', 'pre_upgrade_snapshot.json'))

    # every guest of the fleet runs on
    for h in fleet.hosts:
        for t in _targets(h):
            t.wait_counter(t.counter() + RUN_ON, timeout=120)
