"""vm_info through ansible-playbook against real VMs on both backends."""

import re
import socket
import subprocess

from rig.ansible_run import failed, run_one, run_tasks
from rig.libvirt_guest import virsh
from rig.qmp import connect

MIB = 1024 * 1024


def _qemu_version():
    out = subprocess.run(['qemu-system-x86_64', '--version'], capture_output=True, text=True, check=False).stdout
    return re.search(r'version (\d+\.\d+\.\d+)', out).group(1)


def _libvirt_version():
    out = virsh('version', check=False).stdout
    return re.search(r'Using library: libvirt (\d+\.\d+\.\d+)', out).group(1)


def _assert_host(host):
    assert host['qemu_version'] == _qemu_version()
    assert host['libvirt_version'] == _libvirt_version()
    caps = host['capabilities']
    # QEMU 10 has all of these; a probe that lost them would be a bug.
    for cap in ('mapped_ram', 'multifd', 'snapshot_jobs', 'internal_snapshot_revert'):
        assert caps[cap] is True, cap
    assert caps['background_snapshot'] == caps['userfaultfd_wp']
    major, minor = (int(x) for x in host['libvirt_version'].split('.')[:2])
    assert caps['libvirt_snapshot_revert'] is (not (11, 2) <= (major, minor) < (11, 4))


def _disks(vm):
    return {d['name']: d for d in vm['disks']}


def test_raw_qemu_vm(shared_qemu):
    r = run_one(shared_qemu.task('vm_info'))
    assert not r.get('failed'), r
    assert r['changed'] is False
    [vm] = r['vms']
    assert vm['backend'] == 'qemu'
    assert vm['name'] == shared_qemu.vm.name
    assert vm['state'] == 'running'
    disks = _disks(vm)
    assert set(disks) == {'root', 'data', 'varstore'}
    assert disks['root']['format'] == 'qcow2' and disks['root']['node_name'] == 'root'
    assert disks['data']['format'] == 'qcow2'
    assert disks['varstore']['format'] == 'raw'
    assert disks['root']['virtual_size'] == 64 * MIB
    assert disks['varstore']['virtual_size'] == 2 * MIB
    for name in disks:
        assert disks[name]['file'] == shared_qemu.vm.disk_path(name)
        assert disks[name]['read_only'] is False
    assert vm['snapshots'] == [] and vm['block_jobs'] == []
    _assert_host(r['host'])


def test_libvirt_domain(shared_libvirt):
    r = run_one(shared_libvirt.task('vm_info'))
    assert not r.get('failed'), r
    [vm] = r['vms']
    assert vm['backend'] == 'libvirt' and vm['state'] == 'running'
    disks = _disks(vm)
    assert set(disks) == {'vda', 'vdb', 'vdc'}
    assert [disks[d]['format'] for d in ('vda', 'vdb', 'vdc')] == ['qcow2', 'qcow2', 'raw']
    for d, role in (('vda', 'root'), ('vdb', 'data'), ('vdc', 'varstore')):
        assert disks[d]['file'] == shared_libvirt.vm.disk_path(role)
        assert re.match(r'^libvirt-\d+-format$', disks[d]['node_name']), disks[d]
    assert disks['vda']['virtual_size'] == 64 * MIB
    _assert_host(r['host'])


def test_all_domains_in_check_mode(shared_libvirt):
    r = run_one({'vmfleet.kvm.vm_info': {}}, check=True)
    assert not r.get('failed'), r
    assert r['changed'] is False
    names = [vm['name'] for vm in r['vms']]
    assert shared_libvirt.vm.name in names
    assert all(vm['backend'] == 'libvirt' for vm in r['vms'])


def test_errors_name_the_object(tmp_path, shared_qemu):
    stale = str(tmp_path / 'stale.qmp')
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # a socket file nobody listens on: a QEMU that died
    results, proc = run_tasks([
        {'vmfleet.kvm.vm_info': {'domain': 'no-such-vm-xyz'}},
        {'vmfleet.kvm.vm_info': {'qmp_socket': str(tmp_path / 'missing.qmp')}},
        {'vmfleet.kvm.vm_info': {'qmp_socket': stale}},
        {'vmfleet.kvm.vm_info': {'uri': 'qemu+unix:///system?socket=%s' % (tmp_path / 'nolibvirtd')}},
        {'vmfleet.kvm.vm_info': {'domain': 'x', 'qmp_socket': stale}},
        {'vmfleet.kvm.vm_info': {'qmp_socket': str(tmp_path)}},
    ])
    failed(results[0], 'no-such-vm-xyz', 'virsh')
    failed(results[1], 'missing.qmp', 'does not exist')
    failed(results[2], 'stale.qmp')
    failed(results[3], 'nolibvirtd', 'libvirtd')
    failed(results[4], 'mutually exclusive')
    failed(results[5], 'not a UNIX socket')
    assert 'Traceback' not in proc.stdout + proc.stderr


def test_busy_qmp_socket_fails_within_timeout(shared_qemu):
    """QEMU serves one QMP client: a second must fail clearly, not hang."""
    with connect(shared_qemu.vm.qmp_socket):  # the client that holds the monitor
        r = run_one(shared_qemu.task('vm_info', timeout=3))
    failed(r, shared_qemu.vm.qmp_socket, 'one QMP client at a time')
    # and the VM is still reachable afterwards
    r = run_one(shared_qemu.task('vm_info'))
    assert not r.get('failed'), r
