"""The engine's pure decisions: save path and channel choice, a relaunch's
command line, snapshot names, disk selection and lookup, the version table,
the polling loop. Behaviour against QEMU and libvirt is proven in tests/system."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import quirks
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk, find_disk
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.vm_handle import VmHandle
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.vm import (
    choose_save_path as libvirt_save_path,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.vm import (
    choose_save_path as qemu_save_path,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    CapabilityMissing, DiskNotFound, InvalidArgument, OperationTimeout,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.internal import select_disks, validate_name
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until

ARGV = ['/usr/bin/qemu-system-x86_64', '-name', 'web01', '-machine', 'q35',
        '-blockdev', 'driver=file,filename=/vm/os.qcow2,node-name=os-file',
        '-blockdev', 'driver=qcow2,file=os-file,node-name=os',
        '-device', 'virtio-blk-pci,drive=os,id=vda,bus=pcie.0,addr=0x4',
        '-drive', 'file=/vm/a,,b.img,if=none,id=legacy,format=raw',
        '-device', 'virtio-blk-pci,id=vdb,drive=legacy',
        '-qmp', 'unix:/run/web01.qmp,server=on,wait=off',
        '-incoming', 'tcp:0:4444']


# -- where a save goes --
def test_qemu_save_path_prefers_mapped_ram_and_streams_when_compressed():
    assert qemu_save_path(['multifd', 'mapped-ram'], 4, 'none')[0] == 'mapped-ram'
    path, why = qemu_save_path(['multifd', 'mapped-ram'], 4, 'zstd')
    assert path == 'multifd-stream' and 'zstd' in why
    assert qemu_save_path(['multifd'], 2, 'none')[0] == 'multifd-stream'
    with pytest.raises(CapabilityMissing, match='neither mapped-ram nor multifd'):
        qemu_save_path([], 4, 'none')


def test_libvirt_save_path_needs_parallel_save_only_uncompressed():
    assert libvirt_save_path(4, 'none', True)[0] == 'libvirt-sparse'
    assert libvirt_save_path(4, 'zlib', False)[0] == 'libvirt-compressed'
    with pytest.raises(CapabilityMissing, match='parallel channels'):
        libvirt_save_path(4, 'none', False)


# -- a raw QEMU's command line --
def test_incoming_argv_replaces_any_incoming_with_defer():
    out = proc.incoming_argv(ARGV)
    assert out[-2:] == ['-incoming', 'defer']
    assert 'tcp:0:4444' not in out and out.count('-incoming') == 1
    assert proc.incoming_argv(['qemu'])[-2:] == ['-incoming', 'defer']


def test_qmp_socket_of_reads_the_unix_monitor():
    assert proc.qmp_socket_of(ARGV) == '/run/web01.qmp'
    assert proc.qmp_socket_of(['qemu', '-qmp', 'tcp:127.0.0.1:4444']) is None


def test_disk_aliases_map_node_and_drive_ids_to_devices():
    # key order does not matter, and an escaped comma stays part of a value
    assert proc.disk_aliases(ARGV) == {'os': 'vda', 'legacy': 'vdb'}
    assert proc.disk_aliases(['qemu', '-device', 'virtio-blk-pci,drive=x']) == {}
    assert proc.disk_aliases(['qemu', '-device', '{"driver":"virtio-blk-pci","drive":"libvirt-2-format",'
                                                 '"id":"virtio-disk1","bootindex":1}']) == {
        'libvirt-2-format': 'virtio-disk1'}


def test_moved_disks_are_those_the_command_line_does_not_name():
    on_cmdline = Disk('vda', 'os', '/vm/os.qcow2', 'qcow2', 1, False)
    moved = Disk('vdc', 'vmfleet-t1', '/fast/os.qcow2', 'qcow2', 1, False)
    assert proc.moved_disks(ARGV, [on_cmdline, moved]) == [moved]
    assert proc.moved_disks(ARGV, [Disk('cd', 'n', None, 'raw', 1, True)]) == []


# -- names and disks --
@pytest.mark.parametrize('name', ['', '   ', ' lead', 'trail ', 'x' * 129, 'tab\tname', '42'])
def test_invalid_snapshot_names_are_refused(name):
    with pytest.raises(InvalidArgument):
        validate_name(name)


def test_valid_snapshot_names_pass():
    for name in ('pre-upgrade', 'vmfleet-2026-11-01', 'a', 'x' * 128, 'v1.2 rc'):
        validate_name(name)


class _Vm(VmHandle):
    backend = 'test'

    def __init__(self, disks, aliases=None):
        super(_Vm, self).__init__(None, 'vm1')
        self._disks = disks
        self._aliases = aliases or {}

    def disks(self):
        return self._disks

    def disk_aliases(self):
        return self._aliases


ROOT = Disk('vda', 'libvirt-1-format', '/v/root.qcow2', 'qcow2', 1, False)
DATA = Disk('vdb', 'data', '/v/data.qcow2', 'qcow2', 1, False)
VARS = Disk('vdc', 'vars', '/v/vars.raw', 'raw', 1, False)
ISO = Disk('sda', 'cd', '/v/boot.iso', 'raw', 1, True)


def test_select_disks_defaults_to_every_writable_qcow2_and_vmstate_on_the_first():
    vm = _Vm([ROOT, DATA, VARS, ISO])
    selected, vmstate = select_disks(vm, vm.disks(), None, None, True)
    assert selected == [ROOT, DATA] and vmstate is ROOT
    assert select_disks(vm, vm.disks(), None, None, False)[1] is None


def test_select_disks_checks_each_named_disk_before_anything_is_touched():
    vm = _Vm([ROOT, DATA, VARS, ISO])
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
        select_disks(_Vm([VARS]), [VARS], None, None, True)


def test_a_disk_is_found_by_any_name_it_had():
    pivoted = Disk('vdb', 'vmfleet-t0123', '/fast/data.qcow2', 'qcow2', 1, False)
    vm = _Vm([ROOT, pivoted], aliases={'data': 'vdb'})
    assert vm.disk('vdb') is pivoted
    assert vm.disk('vmfleet-t0123') is pivoted
    assert vm.disk('data') is pivoted  # the node name it had before the switch
    assert vm.disk('libvirt-1-format') is ROOT
    with pytest.raises(DiskNotFound) as e:
        vm.disk('vdz')
    assert e.value.message == "VM 'vm1' has no disk 'vdz'. Its disks are: vda, vdb"
    with pytest.raises(DiskNotFound):
        find_disk('vm1', [ROOT], 'data', {'data': 'vdb'})  # an alias of a disk that is gone


# -- the version table --
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


# -- the one polling loop --
def test_poll_until_returns_the_first_answer_and_waits_between_probes():
    answers = iter([None, None, 'done'])
    waits = []
    assert poll_until(lambda: next(answers), Deadline(10), on_timeout=AssertionError,
                      interval=0.5, wait=waits.append) == 'done'
    assert len(waits) == 2 and all(0 < w <= 0.5 for w in waits)


def test_poll_until_raises_what_on_timeout_builds_after_a_last_probe():
    probes = []

    def probe():
        probes.append(1)
        return None
    with pytest.raises(OperationTimeout, match='still waiting'):
        poll_until(probe, Deadline(0), on_timeout=lambda: OperationTimeout('still waiting'))
    assert probes == [1]


def test_a_relaunch_follows_the_disks_drive_mirror_moved():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk
    argv = ['qemu-system-x86_64', '-blockdev', 'driver=file,filename=/old/root.qcow2,node-name=root-file',
            '-blockdev', 'driver=qcow2,file=root-file,node-name=root',
            '-device', 'virtio-blk-pci,drive=root,id=root', '-drive', 'file=/old/a,,b.raw,format=raw,if=none,id=d2',
            '-device', 'virtio-blk-pci,drive=d2,id=data']
    moved = [Disk('root', 'mirror-node-1', '/new/root.qcow2', 'qcow2', 1, False),
             Disk('data', 'mirror-node-2', '/new/d,2.raw', 'raw', 1, False)]
    out = proc.follow_moves(argv, moved)
    assert out[2] == 'driver=file,filename=/new/root.qcow2,node-name=root-file'
    assert out[8] == 'file=/new/d,,2.raw,format=raw,if=none,id=d2'
    assert out[4] == argv[4] and argv[2].startswith('driver=file,filename=/old/')
    # a format change, or a disk the command line does not show, is no relaunch
    assert proc.follow_moves(argv, [Disk('root', 'n', '/new/root.raw', 'raw', 1, False)]) is None
    assert proc.follow_moves(argv, [Disk('vdz', 'n', '/new/x.qcow2', 'qcow2', 1, False)]) is None
