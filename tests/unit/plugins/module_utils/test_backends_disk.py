"""backends/disk.py and VmHandle.disk: snapshots grouped across a VM's disks, and a
disk found by any name it has had."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk, ImageSnapshot, find_disk, summarize_snapshots
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import DiskNotFound
from rig.fake_vm import FakeVm


def _snap(name, state=0, date=1000.0, clock=5.0):
    return ImageSnapshot(name, '1', state, date, clock)


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


ROOT = Disk('vda', 'libvirt-1-format', '/v/root.qcow2', 'qcow2', 1, False)


def test_a_disk_is_found_by_any_name_it_had():
    pivoted = Disk('vdb', 'vmfleet-t0123', '/fast/data.qcow2', 'qcow2', 1, False)
    vm = FakeVm([ROOT, pivoted], aliases={'data': 'vdb'})
    assert vm.disk('vdb') is pivoted
    assert vm.disk('vmfleet-t0123') is pivoted
    assert vm.disk('data') is pivoted  # the node name it had before the switch
    assert vm.disk('libvirt-1-format') is ROOT
    with pytest.raises(DiskNotFound) as e:
        vm.disk('vdz')
    assert e.value.message == "VM 'vm1' has no disk 'vdz'. Its disks are: vda, vdb"
    with pytest.raises(DiskNotFound):
        find_disk('vm1', [ROOT], 'data', {'data': 'vdb'})  # an alias of a disk that is gone
