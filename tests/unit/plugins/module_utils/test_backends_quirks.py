"""backends/quirks.py: what each libvirt and QEMU version can do."""

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import quirks


def test_quirks_by_version():
    assert not quirks.libvirt_can_revert(11003000) and not quirks.libvirt_can_revert('11.2.0')
    assert quirks.libvirt_can_revert('11.4.0') and quirks.libvirt_can_revert(10010000)

    class Binding(object):
        VIR_DOMAIN_SAVE_PARAM_PARALLEL_CHANNELS = 'parallel.channels'
    assert quirks.libvirt_parallel_save(11003000, Binding)
    assert not quirks.libvirt_parallel_save(11001000, Binding)
    assert not quirks.libvirt_parallel_save(11003000, object())
    assert quirks.qemu_direct_io(10000000) and quirks.qemu_direct_io('9.1.0') and not quirks.qemu_direct_io('9.0.2')
    assert quirks.version_string(11003000) == '11.3.0'


def test_libvirt_instant_route_needs_fd_passing_and_a_local_uri():
    class Binding:
        qemuMonitorCommandWithFiles = None
    assert quirks.libvirt_instant_missing(11003000, Binding, 'qemu:///system') is None
    assert '8.2' in quirks.libvirt_instant_missing(8001000, Binding, 'qemu:///system')
    assert 'libvirt-python' in quirks.libvirt_instant_missing(11003000, object(), 'qemu:///system')
    assert 'remote' in quirks.libvirt_instant_missing(11003000, Binding, 'qemu+ssh://h2/system')


def test_libvirt_external_snapshots_name_each_step_and_its_version():
    assert quirks.libvirt_external_missing(11003000) is None
    assert quirks.libvirt_external_missing('9.7.0') is None
    why = quirks.libvirt_external_missing('9.5.0')
    assert 'revert needs libvirt >= 9.7.0' in why and 'delete' not in why and '9.5.0' in why
    why = quirks.libvirt_external_missing(8000000)
    assert 'delete needs libvirt >= 9.0.0' in why and 'revert needs libvirt >= 9.7.0' in why
