"""backends/qemu/process.py: the command line a raw QEMU is relaunched from."""

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc

ARGV = ['/usr/bin/qemu-system-x86_64', '-name', 'web01', '-machine', 'q35',
        '-blockdev', 'driver=file,filename=/vm/os.qcow2,node-name=os-file',
        '-blockdev', 'driver=qcow2,file=os-file,node-name=os',
        '-device', 'virtio-blk-pci,drive=os,id=vda,bus=pcie.0,addr=0x4',
        '-drive', 'file=/vm/a,,b.img,if=none,id=legacy,format=raw',
        '-device', 'virtio-blk-pci,id=vdb,drive=legacy',
        '-qmp', 'unix:/run/web01.qmp,server=on,wait=off',
        '-incoming', 'tcp:0:4444']


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


def test_a_relaunch_follows_the_disks_drive_mirror_moved():
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
