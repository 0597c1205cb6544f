"""backends/libvirt/vm.py's pure decisions: where a save goes and how many streams its
image holds."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.vm import LibvirtVm
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.save_restore import choose_save_path as libvirt_save_path
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing


def test_libvirt_save_path_needs_parallel_save_only_uncompressed():
    assert libvirt_save_path(4, 'none', True)[0] == 'libvirt-sparse'
    assert libvirt_save_path(4, 'zlib', False)[0] == 'libvirt-compressed'
    with pytest.raises(CapabilityMissing, match='parallel channels'):
        libvirt_save_path(4, 'none', False)


def test_a_sparse_image_is_read_over_any_channels_a_compressed_one_as_one_stream():
    assert LibvirtVm.image_streams({'path_used': 'libvirt-sparse', 'channels': 2}) is None
    assert LibvirtVm.image_streams({'path_used': 'libvirt-compressed', 'channels': 4}) == 1


class _Dom:
    def __init__(self, active):
        self.active = active

    def isActive(self):
        return self.active


def _failing(code, msg):
    import libvirt

    def fail(*_args):
        e = libvirt.libvirtError(msg)
        e.err = (code, 0, msg, 2, '', None, None, -1, -1)
        raise e
    return fail


@pytest.mark.parametrize('active,gone', [(False, True), (True, False)])
def test_a_qemu_killed_mid_call_is_reported_as_gone_only_if_the_domain_stopped(active, gone):
    import libvirt
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmGone, VmfleetError
    vm = LibvirtVm.__new__(LibvirtVm)
    vm.name, vm.dom = 'web1', _Dom(active)
    with pytest.raises(VmfleetError) as e:
        vm._call('creating a snapshot', _failing(libvirt.VIR_ERR_INTERNAL_ERROR, 'End of file from qemu monitor'))
    assert isinstance(e.value, VmGone) == gone
