"""snapshot/internal.py's checks before anything is touched: snapshot names, and which
disks a snapshot covers. Behaviour against QEMU and libvirt is proven in tests/system."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.internal import select_disks, validate_name
from rig.fake_vm import FakeVm


@pytest.mark.parametrize('name', ['', '   ', ' lead', 'trail ', 'x' * 129, 'tab\tname', '42'])
def test_invalid_snapshot_names_are_refused(name):
    with pytest.raises(InvalidArgument):
        validate_name(name)


def test_valid_snapshot_names_pass():
    for name in ('pre-upgrade', 'vmfleet-2026-11-01', 'a', 'x' * 128, 'v1.2 rc'):
        validate_name(name)


ROOT = Disk('vda', 'libvirt-1-format', '/v/root.qcow2', 'qcow2', 1, False)
DATA = Disk('vdb', 'data', '/v/data.qcow2', 'qcow2', 1, False)
VARS = Disk('vdc', 'vars', '/v/vars.raw', 'raw', 1, False)
ISO = Disk('sda', 'cd', '/v/boot.iso', 'raw', 1, True)


def test_select_disks_defaults_to_every_writable_qcow2_and_vmstate_on_the_first():
    vm = FakeVm([ROOT, DATA, VARS, ISO])
    selected, vmstate = select_disks(vm, vm.disks(), None, None, True)
    assert selected == [ROOT, DATA] and vmstate is ROOT
    assert select_disks(vm, vm.disks(), None, None, False)[1] is None


def test_select_disks_checks_each_named_disk_before_anything_is_touched():
    vm = FakeVm([ROOT, DATA, VARS, ISO])
    assert select_disks(vm, vm.disks(), ['data', 'vda', 'vdb'], 'vdb', True) == ([DATA, ROOT], DATA)
    with pytest.raises(InvalidArgument, match="'vdc' .* raw"):
        select_disks(vm, vm.disks(), ['vdc'], None, True)
    with pytest.raises(InvalidArgument, match='read-only'):
        select_disks(vm, vm.disks(), ['sda'], None, True)
    with pytest.raises(InvalidArgument, match='not one of the disks'):
        select_disks(vm, vm.disks(), ['vda'], 'vdb', True)
    with pytest.raises(InvalidArgument, match='memory is false'):
        select_disks(vm, vm.disks(), None, 'vda', False)
    with pytest.raises(InvalidArgument, match='no writable qcow2'):
        select_disks(FakeVm([VARS]), [VARS], None, None, True)
