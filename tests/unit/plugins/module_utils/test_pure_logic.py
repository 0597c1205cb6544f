"""Pure logic only; behaviour against QEMU and libvirt is proven in tests/system."""

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import DiskNotFound
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.vm import qdev_disk_name
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk, ImageSnapshot, summarize_snapshots


def _snap(name, state=0, date=1000.0, clock=5.0):
    return ImageSnapshot(name, '1', state, date, clock)


def test_disk_name_prefers_qdev_id():
    assert qdev_disk_name({'qdev': '/machine/peripheral/root/virtio-backend', 'inserted': {'node-name': 'n'}}) == 'root'
    assert qdev_disk_name({'qdev': '/machine/peripheral-anon/device[0]/virtio-backend', 'device': '',
                           'inserted': {'node-name': 'n1'}}) == 'n1'
    assert qdev_disk_name({'qdev': '', 'device': 'drive0', 'inserted': {'node-name': 'n'}}) == 'drive0'


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


def test_load_channels_reads_page_addressable_images_over_at_least_four_but_streams_as_saved():
    import pytest
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument
    from ansible_collections.vmfleet.kvm.plugins.module_utils.save.save_restore import load_channels
    assert load_channels({'path_used': 'mapped-ram', 'channels': 1}, None) == 4
    assert load_channels({'path_used': 'mapped-ram', 'channels': 8}, None) == 8
    assert load_channels({'path_used': 'mapped-ram', 'channels': 8}, None, 2) == 2
    with pytest.raises(InvalidArgument):
        load_channels({'path_used': 'mapped-ram', 'channels': 1}, None, 0)
    stream = {'path_used': 'multifd-stream', 'channels': 2}
    assert load_channels(stream, 2) == 2 and load_channels(stream, 2, 2) == 2
    with pytest.raises(InvalidArgument, match='2 stream'):
        load_channels(stream, 2, 4)


def test_each_backend_says_how_many_streams_its_images_hold():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.vm import LibvirtVm
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.vm import QemuVm
    assert QemuVm.image_streams({'path_used': 'mapped-ram', 'channels': 2}) is None
    assert QemuVm.image_streams({'path_used': 'multifd-stream', 'channels': 2}) == 2
    assert LibvirtVm.image_streams({'path_used': 'libvirt-sparse', 'channels': 2}) is None
    assert LibvirtVm.image_streams({'path_used': 'libvirt-compressed', 'channels': 4}) == 1
