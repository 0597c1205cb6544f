"""A libvirt domain with a snapshot moves between two simulated hypervisors (shared storage) with
vm_migrate, through ansible-playbook over SSH: its snapshot is listed at the destination and the
revert there goes back in time; copied storage is refused naming the snapshot; the destination's
libvirtd killed mid-migration leaves the domain at the source with its snapshot listed."""

import time

import pytest

from rig.accel import detect_accel
from rig.ansible_run import read_results, run_tasks, start_tasks
from rig.hypervisors import FleetView
from rig.targets import Target

SNAP = 's-mig'


@pytest.fixture(scope='module')
def fleet(session_fleet):
    """hv1 and hv2 of the session fleet, with one all-qcow2 libvirt domain on hv1 (so libvirt's own
    snapshot API takes the snapshot, and libvirt holds its metadata); its disks are under the rig's
    directory, which both hosts see."""
    with FleetView(session_fleet, 'snapmig', 2) as f:
        h = f.hosts[0]
        h.add_vm('libvirt', '%s-snap1' % h.ns, 256, detect_accel(), False,
                 disks=(('root', 'qcow2', 64), ('data', 'qcow2', 64)))
        f.wait_booted([h])
        f.write_inventory()
        yield f


def _play(fleet, host, tasks):
    results, proc = run_tasks(tasks, inventory=fleet.inventory, hosts=host.name, extra_args=['-v'])
    return results, proc.stdout + proc.stderr


def _dest_uri(host):
    return 'qemu+ssh://vmfleet@%s/system' % host.address


def _domstate(host, name):
    r = host.virsh('domstate', name, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def _listed(host, name):
    return host.virsh('snapshot-list', name, '--name').stdout.split()


def _moved(vm, src, dst):
    """The rig's record: ``vm`` runs at ``dst`` now (torn down there, driven with its virsh)."""
    src.vms.remove(vm)
    vm.uri = dst.uri
    dst.vms.append(vm)


def test_a_domain_with_a_snapshot_moves_and_reverts_at_the_destination(fleet):
    hv1, hv2 = fleet.hosts
    vm = hv1.vms[0]
    t = Target(vm, 'libvirt')
    t.wait_counter(3)
    before = t.counter()
    (r,), log = _play(fleet, hv1, [{'vmfleet.kvm.snapshot': {'domain': vm.name, 'name': SNAP}}])
    after = t.counter()
    assert r.get('route') == 'libvirt', (r, log[-2000:])
    assert _listed(hv1, vm.name) == [SNAP]
    ran_to = t.wait_counter(after + 3)

    (r,), log = _play(fleet, hv1, [{'vmfleet.kvm.vm_migrate': {
        'domain': vm.name, 'destination_uri': _dest_uri(hv2), 'timeout': 600}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert r['snapshots'] == [SNAP] and r['snapshots_defined'] == [SNAP], r
    assert _domstate(hv1, vm.name) is None and _domstate(hv2, vm.name) == 'running'
    _moved(vm, hv1, hv2)
    # the metadata came along, the current snapshot current again
    assert _listed(hv2, vm.name) == [SNAP]
    assert hv2.virsh('snapshot-current', vm.name, '--name').stdout.strip() == SNAP

    # the revert at the destination goes back to the snapshot's moment
    offset, last = t.serial_size(), t.counter()
    (r,), log = _play(fleet, hv2, [{'vmfleet.kvm.snapshot': {'domain': vm.name, 'name': SNAP, 'state': 'reverted'}}])
    assert r.get('changed') is True and r.get('state') == 'running', (r, log[-3000:])
    resumed = t.counters_after_going_back(offset, last)
    assert before <= resumed[0] - 1 <= after + 1 and resumed[0] < ran_to, (before, after, resumed)


def test_copied_storage_is_refused_naming_the_snapshot(fleet):
    hv1, hv2 = fleet.hosts
    vm = hv2.vms[0]
    (r,), log = _play(fleet, hv2, [{'vmfleet.kvm.vm_migrate': {
        'domain': vm.name, 'destination_uri': _dest_uri(hv1), 'storage': 'copy',
        'destination_dir': '/var/lib/libvirt/images', 'timeout': 120}}])
    assert r.get('failed') is True and r.get('error') == 'InvalidArgument', r
    assert SNAP in r['msg'] and 'nothing was changed' in r['msg'].lower(), r['msg']
    assert _domstate(hv2, vm.name) == 'running' and _domstate(hv1, vm.name) is None
    assert _listed(hv2, vm.name) == [SNAP]


def test_the_destination_libvirtd_killed_leaves_the_domain_at_the_source_with_its_snapshot(fleet, tmp_path):
    hv1, hv2 = fleet.hosts
    vm = hv2.vms[0]
    t = Target(vm, 'libvirt')
    # 1 MiB/s: the migration runs long enough for the kill, after the metadata was taken off
    proc, out = start_tasks([{'vmfleet.kvm.vm_migrate': {
        'domain': vm.name, 'destination_uri': _dest_uri(hv1), 'bandwidth_mib_s': 1, 'timeout': 300}}],
        str(tmp_path), inventory=fleet.inventory, hosts=hv2.name)
    try:
        end = time.monotonic() + 180
        while _domstate(hv1, vm.name) is None:
            assert proc.poll() is None and time.monotonic() < end, 'no incoming domain'
            time.sleep(0.3)
        # the migration runs: libvirt migrates no domain with snapshot metadata, so it is off the source now
        assert _listed(hv2, vm.name) == []
        hv1.stop_libvirtd()
        text = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if hv1.virsh('version', check=False).returncode != 0:
            hv1.start_libvirtd()
    (r,) = read_results(out, text)
    assert r.get('failed') is True and r['source_state'] == 'running', r
    assert r.get('snapshots_defined') == [SNAP], r
    # the domain runs on at the source, its snapshot listed there again
    assert _domstate(hv2, vm.name) == 'running'
    assert _listed(hv2, vm.name) == [SNAP]
    t.wait_counter(t.counter() + 2, timeout=120)
