"""Pure logic only; behaviour against QEMU and libvirt is proven in tests/system."""

from ansible_collections.vmfleet.kvm.plugins.module_utils.exceptions import DiskNotFound
from ansible_collections.vmfleet.kvm.plugins.module_utils.qmp_backend import _disk_name
from ansible_collections.vmfleet.kvm.plugins.module_utils.vm import Disk, ImageSnapshot, summarize_snapshots


def _snap(name, state=0, date=1000.0, clock=5.0):
    return ImageSnapshot(name, '1', state, date, clock)


def test_disk_name_prefers_qdev_id():
    assert _disk_name({'qdev': '/machine/peripheral/root/virtio-backend', 'inserted': {'node-name': 'n'}}) == 'root'
    assert _disk_name({'qdev': '/machine/peripheral-anon/device[0]/virtio-backend', 'device': '',
                       'inserted': {'node-name': 'n1'}}) == 'n1'
    assert _disk_name({'qdev': '', 'device': 'drive0', 'inserted': {'node-name': 'n'}}) == 'drive0'


def test_snapshot_grouped_by_name_across_disks():
    disks = [Disk('vda', 'a', '/a', 'qcow2', 1, False, [_snap('s1', state=300), _snap('old', date=10.0)]),
             Disk('vdb', 'b', '/b', 'qcow2', 1, False, [_snap('s1')])]
    out = {s['name']: s for s in summarize_snapshots(disks)}
    assert out['s1']['disks'] == ['vda', 'vdb']
    assert out['s1']['vmstate_disk'] == 'vda'
    assert out['s1']['vm_state_size'] == 300
    assert out['s1']['consistent'] is True
    assert [s['name'] for s in summarize_snapshots(disks)] == ['old', 's1']  # oldest first


def test_snapshot_from_different_moments_is_inconsistent():
    disks = [Disk('vda', 'a', '/a', 'qcow2', 1, False, [_snap('s', clock=5.0)]),
             Disk('vdb', 'b', '/b', 'qcow2', 1, False, [_snap('s', clock=99.0)])]
    assert summarize_snapshots(disks)[0]['consistent'] is False


def test_error_message_joins_hint():
    e = DiskNotFound("VM 'x' has no disk 'vdz'", hint="its disks are: vda")
    assert e.message == "VM 'x' has no disk 'vdz'. Its disks are: vda"
