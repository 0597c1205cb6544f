"""A snapshot and a storage move, through ansible-playbook on a libvirt domain whose disks are all
qcow2 (so libvirt's own snapshot API takes the snapshot and records its disks): a disk that lost
the snapshot is named and the revert refused; drive_mirror refuses to move a disk holding one,
naming it, and with ``snapshots: drop`` deletes it on purpose and moves (on a raw QEMU VM too)."""

import json
import os
import subprocess

import pytest

from rig.ansible_run import failed, ok, run_one


def _boot(module_vms, backend):
    t = module_vms.boot(backend, disks=(('root', 'qcow2', 64), ('data', 'qcow2', 64)))
    t.wait_counter(3)
    return t


@pytest.fixture(scope='module')
def lv(module_vms):
    return _boot(module_vms, 'libvirt')


def _snapshots(t, name):
    r = ok(run_one(t.task('snapshot_info', name=name)))
    return r['snapshots']


def _image_snapshots(path):
    out = subprocess.run(['qemu-img', 'info', '-U', '--output=json', path],
                         capture_output=True, text=True, check=True).stdout
    return [s['name'] for s in json.loads(out).get('snapshots', [])]


def _node(t, disk):
    [vm] = ok(run_one(t.task('vm_info')))['vms']
    return [d['node_name'] for d in vm['disks'] if d['name'] == disk][0]


def test_a_disk_that_lost_the_snapshot_is_named_and_the_revert_refused(lv):
    t = lv
    r = ok(run_one(t.task('snapshot', name='s-lost')))
    assert r['route'] == 'libvirt' and sorted(r['snapshot']['disks']) == ['vda', 'vdb']
    try:
        # vdb's image loses it, as a copy that carries no snapshot (virsh blockcopy) leaves it
        t.vm.virsh('qemu-monitor-command', t.vm.name, json.dumps({
            'execute': 'blockdev-snapshot-delete-internal-sync',
            'arguments': {'device': _node(t, 'vdb'), 'name': 's-lost'}}))
        [snap] = _snapshots(t, 's-lost')
        assert snap['disks'] == ['vda'] and snap['missing_disks'] == ['vdb'], snap
        assert snap['consistent'] is False
        last = t.counter()
        r = run_one(t.task('snapshot', name='s-lost', state='reverted'))
        failed(r, 's-lost', 'missing on disk vdb', 'nothing was changed')
        # nothing stopped: the guest counts on past where it was
        t.wait_counter(last + 2)
        assert t.vm.virsh('domstate', t.vm.name).stdout.strip() == 'running'
    finally:
        # the deletion clears what is left (vda) and libvirt's record
        ok(run_one(t.task('snapshot', name='s-lost', state='absent')))
    assert _snapshots(t, 's-lost') == []
    assert t.vm.virsh('snapshot-list', t.vm.name, '--name').stdout.split() == []
    assert 's-lost' not in _image_snapshots(t.vm.disk_path('root'))


@pytest.fixture(scope='module')
def raw(module_vms):
    return _boot(module_vms, 'qemu')


def _file_of(t, disk):
    [vm] = ok(run_one(t.task('vm_info')))['vms']
    return [d['file'] for d in vm['disks'] if d['name'] == disk][0]


@pytest.mark.parametrize('backend', ['libvirt', 'qemu'])
def test_drive_mirror_refuses_a_disk_holding_a_snapshot_then_drops_it_on_request(backend, request, tmp_path):
    t = request.getfixturevalue('lv' if backend == 'libvirt' else 'raw')
    disk, both = t.disk('data'), sorted([t.disk('root'), t.disk('data')])
    ok(run_one(t.task('snapshot', name='s-keep')))
    source = t.vm.disk_path('data')
    # libvirt's QEMU runs as another user: the target's directory must be reachable
    tdir = os.path.join(t.vm.workdir, 'moved')
    os.makedirs(tdir)
    os.chmod(tdir, 0o755)
    target = os.path.join(tdir, 'data.qcow2')
    jdir = str(tmp_path / 'journal')
    task = t.task('drive_mirror', disk=disk, target=target, journal_dir=jdir)
    try:
        r = run_one(task)
        failed(r, "disk '%s'" % disk, "'s-keep'", 'cannot carry', 'nothing was changed', 'snapshots: drop')
        # nothing changed: no target, no journal, the disk on its source, the snapshot whole
        assert not os.path.exists(target)
        assert not os.path.isdir(jdir) or os.listdir(jdir) == []
        assert _file_of(t, disk) == source
        [snap] = _snapshots(t, 's-keep')
        assert snap['consistent'] is True and sorted(snap['disks']) == both

        last = t.counter()
        r = ok(run_one(t.task('drive_mirror', disk=disk, target=target, journal_dir=jdir, snapshots='drop')))
        assert r['on_target'] is True and r['snapshots_dropped'] == ['s-keep']
        assert [a['action'] for a in r['actions']][0] == 'drop_snapshot'
        assert _file_of(t, disk) == target
        # dropped whole: from both images (and libvirt's metadata), none left half
        assert _snapshots(t, 's-keep') == []
        if backend == 'libvirt':
            assert t.vm.virsh('snapshot-list', t.vm.name, '--name').stdout.split() == []
        assert _image_snapshots(source) == [] and _image_snapshots(t.vm.disk_path('root')) == []
        t.wait_counter(last + 2)
    finally:
        run_one(t.task('snapshot', name='s-keep', state='absent'))
