"""backends/qemu/vm.py's pure decisions: a disk's name, where a save goes and how many
streams its image holds."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.vm import QemuVm, qdev_disk_name
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.save_restore import choose_save_path as qemu_save_path
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing


def test_disk_name_prefers_qdev_id():
    assert qdev_disk_name({'qdev': '/machine/peripheral/root/virtio-backend', 'inserted': {'node-name': 'n'}}) == 'root'
    assert qdev_disk_name({'qdev': '/machine/peripheral-anon/device[0]/virtio-backend', 'device': '',
                           'inserted': {'node-name': 'n1'}}) == 'n1'
    assert qdev_disk_name({'qdev': '', 'device': 'drive0', 'inserted': {'node-name': 'n'}}) == 'drive0'


def test_qemu_save_path_prefers_mapped_ram_and_streams_when_compressed():
    assert qemu_save_path(['multifd', 'mapped-ram'], 4, 'none')[0] == 'mapped-ram'
    path, why = qemu_save_path(['multifd', 'mapped-ram'], 4, 'zstd')
    assert path == 'multifd-stream' and 'zstd' in why
    assert qemu_save_path(['multifd'], 2, 'none')[0] == 'multifd-stream'
    with pytest.raises(CapabilityMissing, match='neither mapped-ram nor multifd'):
        qemu_save_path([], 4, 'none')


def test_a_mapped_ram_image_is_read_over_any_channels_a_stream_image_over_its_own():
    assert QemuVm.image_streams({'path_used': 'mapped-ram', 'channels': 2}) is None
    assert QemuVm.image_streams({'path_used': 'multifd-stream', 'channels': 2}) == 2
