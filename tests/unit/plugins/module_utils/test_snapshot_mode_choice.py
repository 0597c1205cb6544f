"""mode: auto's choice, and the external engine's overlay paths (pure logic; the
system tests prove each mode on real VMs)."""

import os

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk, find_disk
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.external import overlay_path
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.mode_choice import choose_mode


class _Vm:
    name = 'vm1'

    def __init__(self, disks, chain=(), refusal=None):
        self._disks, self._chain, self._refusal = disks, list(chain), refusal

    def disks(self):
        return self._disks

    def disk(self, name, disks=None):
        return find_disk(self.name, disks or self._disks, name)

    def external_snapshots(self):
        return self._chain

    def internal_snapshot_refusal(self, disks):
        return self._refusal


def _disk(name, fmt, ro=False, path=None):
    return Disk(name, name, path or '/images/%s.%s' % (name, fmt), fmt, 1 << 20, ro)


def test_qcow2_vms_keep_internal_snapshots_and_a_raw_varstore_is_left_out_by_name():
    mode, why = choose_mode(_Vm([_disk('vda', 'qcow2'), _disk('vdb', 'raw')]), None)
    assert mode == 'internal' and 'vdb left out' in why
    assert choose_mode(_Vm([_disk('vda', 'qcow2')]), None) == ('internal', 'every chosen disk is qcow2')


def test_raw_and_block_vms_and_named_raw_disks_get_external_snapshots():
    mode, why = choose_mode(_Vm([_disk('vda', 'raw'), _disk('cd', 'qcow2', ro=True)]), None)
    assert mode == 'external' and 'vda: raw' in why
    mode, why = choose_mode(_Vm([_disk('vda', 'qcow2'), _disk('vdb', 'raw')]), ['vda', 'vdb'])
    assert mode == 'external' and 'vdb is raw' in why


def test_firmware_refusal_and_an_existing_chain_choose_external():
    mode, why = choose_mode(_Vm([_disk('vda', 'qcow2')], refusal='pflash with a raw NVRAM'), None)
    assert (mode, why) == ('external', 'pflash with a raw NVRAM')
    mode, why = choose_mode(_Vm([_disk('vda', 'qcow2')], chain=[dict(name='s1')]), None)
    assert mode == 'external' and "'s1'" in why


def test_overlay_goes_next_to_the_image_or_into_overlay_dir_and_a_block_device_needs_one(tmp_path):
    (tmp_path / 'root.img').write_bytes(b'')
    d = _disk('vda', 'raw', path=str(tmp_path / 'root.img'))
    assert overlay_path(d, 'pre', None) == str(tmp_path / 'root.pre.qcow2')
    other = tmp_path / 'ov'
    other.mkdir()
    assert overlay_path(d, 'a/b', str(other)) == str(other / 'root.a_b.qcow2')
    with pytest.raises(InvalidArgument, match='needs a directory'):
        overlay_path(_disk('vdb', 'raw', path='/dev/null'), 'pre', None)
    with pytest.raises(InvalidArgument, match='not a directory'):
        overlay_path(d, 'pre', os.path.join(str(tmp_path), 'missing'))
