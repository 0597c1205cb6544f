"""backends/qemu/external_snapshot.py: after drive_mirror moved a disk's top overlay, the external
snapshot's record names the copy and its node, QEMU lets the old overlay go, and a re-run changes nothing."""

import os

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import external_record as store
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.external_snapshot import QemuExternal


class _Module(object):
    params = {}


class _Vm(object):
    name = 'web01'
    module = _Module()

    def __init__(self, nodes):
        self.nodes = set(nodes)
        self.calls = []

    def qmp(self, command, **args):
        self.calls.append((command, args))
        if command == 'query-named-block-nodes':
            return [{'node-name': n} for n in sorted(self.nodes)]
        if command == 'blockdev-del':
            self.nodes.discard(args['node-name'])
            return {}
        raise AssertionError(command)


def _record(name, seq, overlays, nodes, bases):
    return dict(kind='external', name=name, vm=dict(name='web01'), seq=seq, disks=sorted(overlays),
                overlays=overlays, nodes=nodes, bases=bases, memory_file=None, relaunch={})


def test_the_top_record_names_the_copy_once(tmp_path):
    mem = str(tmp_path)
    base = dict(file='/img/root.raw', format='raw', node='drive-root')
    store.write_record(mem, _record('pre', 1.0, {'root': '/img/root.pre.qcow2', 'data': '/img/data.pre.qcow2'},
                                    {'root': 'vmfx-a', 'data': 'vmfx-b'}, {'root': base, 'data': base}))
    store.write_record(mem, _record('post', 2.0, {'root': '/img/root.pre.post.qcow2'}, {'root': 'vmfx-c'},
                                    {'root': dict(file='/img/root.pre.qcow2', format='qcow2', node='vmfx-a')}))
    vm = _Vm(['vmfx-a', 'vmfx-b', 'vmfx-c', 'vmfleet-t1', 'drive-root'])
    ext = QemuExternal(vm, mem)
    disk = Disk('root', 'vmfleet-t1', '/new/root.pre.post.qcow2', 'qcow2', 1 << 20, False)
    assert ext.moved(disk, '/img/root.pre.post.qcow2', '/new/root.pre.post.qcow2') == ['post']
    pre, post = store.records(mem, 'web01')
    assert post['overlays'] == {'root': '/new/root.pre.post.qcow2'} and post['nodes'] == {'root': 'vmfleet-t1'}
    # the image under it and the older snapshot are as they were
    assert post['bases']['root']['file'] == '/img/root.pre.qcow2' and pre['overlays']['root'] == '/img/root.pre.qcow2'
    assert ('blockdev-del', {'node-name': 'vmfx-c'}) in vm.calls and 'vmfx-c' not in vm.nodes
    assert os.stat(store.record_path(mem, 'web01', 'post')).st_mode & 0o777 == 0o600
    # a re-run (the VM found on the target): nothing names the old overlay any more
    vm.calls = []
    assert ext.moved(disk, '/img/root.pre.post.qcow2', '/new/root.pre.post.qcow2') == []
    assert not [c for c in vm.calls if c[0] == 'blockdev-del']
