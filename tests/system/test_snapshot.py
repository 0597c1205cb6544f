"""vmfleet.kvm.snapshot and snapshot_info through ansible-playbook, on a raw
QEMU VM and a libvirt domain, each with a raw varstore-like disk."""

import os
import signal
import time

import pytest

from rig.ansible_run import failed, ok, run_one, run_tasks, start_playbook, write_play
from rig.targets import BACKENDS


@pytest.fixture(scope='module', params=BACKENDS)
def target(request, module_vms):
    """One VM per backend for this module's tests; each test cleans up its snapshots."""
    # some random RAM makes the RAM state a real amount of work to save and load
    return module_vms.boot(request.param, cmdline_extra='vmfleet.fill=32')


def _snapshots(t, name=None):
    r = run_one(t.task('snapshot_info', **({'name': name} if name else {})))
    assert not r.get('failed'), r
    return r['snapshots']


def test_revert_goes_back_in_time_with_raw_disk_left_out(target):
    t = target
    disks = [t.disk('root'), t.disk('data')]
    t.wait_counter(3)
    before = t.counter()
    r = ok(run_one(t.task('snapshot', name='s-revert', disks=disks, vmstate_disk=t.disk('root'))))
    after = t.counter()
    assert r['changed'] is True
    assert sorted(r['snapshot']['disks']) == sorted(disks)
    assert r['snapshot']['vmstate_disk'] == t.disk('root')
    assert r['snapshot']['vm_state_size'] > 0
    assert r['paused_ms'] > 0
    try:
        # the guest runs on past the snapshot and writes its disks
        ran_to = t.wait_counter(after + 3)
        disk_before_revert = t.disk_counter('root')
        assert disk_before_revert >= after + 1
        offset, last = t.serial_size(), t.counter()
        r = ok(run_one(t.task('snapshot', name='s-revert', state='reverted')))
        assert r['changed'] is True and r['state'] == 'running'
        resumed = t.counters_after_going_back(offset, last)
        # back at the snapshot's moment: the counter stood between `before` and `after`
        assert before <= resumed[0] - 1 <= after + 1, (before, after, resumed)
        assert resumed[0] < ran_to
        # ... and rises again from there
        assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))
        # Reverted while paused, the VM stays paused: the disks can be read at the
        # snapshot's moment, and the raw disk that was left out did not go back.
        # the raw disk must have moved past the snapshot's moment, or its not going back proves nothing
        varstore_before = t.wait_disk_counter('varstore', after + 2)
        t.pause()
        try:
            r = ok(run_one(t.task('snapshot', name='s-revert', state='reverted')))
            assert r['state'] == 'paused'
            for role in ('root', 'data'):
                assert before - 1 <= t.disk_counter(role) <= after + 1, (role, before, after)
            assert t.disk_counter('varstore') >= varstore_before > after + 1
        finally:
            t.resume()
        t.wait_counter(t.counter() + 2)
        snaps = _snapshots(t, 's-revert')
        assert snaps[0]['consistent'] is True
        assert t.disk('varstore') not in snaps[0]['disks']
    finally:
        run_one(t.task('snapshot', name='s-revert', state='absent'))


def test_raw_disk_is_refused_before_anything_changes(target):
    t = target
    # mode: internal (mode: auto would take an external snapshot of them)
    r = run_one(t.task('snapshot', name='s-raw', mode='internal', disks=[t.disk('root'), t.disk('varstore')]))
    failed(r, t.disk('varstore'), 'raw', 'Leave it out')
    assert _snapshots(t, 's-raw') == []


def test_present_absent_idempotent_with_check_and_overwrite(target):
    t = target
    name = 's-idem'
    try:
        results = run_tasks([t.task('snapshot', name=name)], check=True, diff=True)[0]
        assert results[0]['changed'] is True and 'diff' in results[0]
        assert _snapshots(t, name) == [], 'check mode created a snapshot'

        first = ok(run_one(t.task('snapshot', name=name)))
        assert first['changed'] is True
        # default disks: every writable qcow2 disk, never the raw one
        assert sorted(first['snapshot']['disks']) == sorted([t.disk('root'), t.disk('data')])
        again = ok(run_one(t.task('snapshot', name=name)))
        assert again['changed'] is False
        assert again['snapshot']['date'] == first['snapshot']['date']

        time.sleep(1.1)
        replaced = ok(run_one(t.task('snapshot', name=name, overwrite=True)))
        assert replaced['changed'] is True
        assert replaced['snapshot']['date'] > first['snapshot']['date']
        assert len(_snapshots(t, name)) == 1

        results = run_tasks([t.task('snapshot', name=name, state='absent')], check=True)[0]
        assert results[0]['changed'] is True
        assert len(_snapshots(t, name)) == 1, 'check mode deleted the snapshot'
        gone = ok(run_one(t.task('snapshot', name=name, state='absent')))
        assert gone['changed'] is True
        assert _snapshots(t, name) == []
        assert ok(run_one(t.task('snapshot', name=name, state='absent')))['changed'] is False
    finally:
        run_one(t.task('snapshot', name=name, state='absent'))


def test_inconsistent_name_is_reported_and_left_alone(target):
    t = target
    try:
        ok(run_one(t.task('snapshot', name='s-part', disks=[t.disk('root')])))
        r = run_one(t.task('snapshot', name='s-part', disks=[t.disk('root'), t.disk('data')]))
        failed(r, 's-part', t.disk('data'), 'nothing was changed')
        [snap] = _snapshots(t, 's-part')
        assert snap['disks'] == [t.disk('root')]
    finally:
        run_one(t.task('snapshot', name='s-part', state='absent'))


def test_bad_input_fails_clearly_and_changes_nothing(target):
    t = target
    results, proc = run_tasks([
        t.task('snapshot', name='s-bad', disks=['nosuchdisk']),
        t.task('snapshot', name='s-bad', disks=[t.disk('data')], vmstate_disk=t.disk('root')),
        t.task('snapshot', name=''),
        t.task('snapshot', name='42'),
        t.task('snapshot', name='nosuchsnap', state='reverted'),
        t.task('snapshot', name='s-disk-only', memory=False),
        t.task('snapshot', name='s-disk-only', state='reverted'),
    ])
    failed(results[0], 'nosuchdisk', t.disk('root'))
    failed(results[1], 'vmstate_disk', t.disk('root'), 'not one of the disks')
    failed(results[2], 'empty')
    failed(results[3], '42', 'digits')
    failed(results[4], 'nosuchsnap', 'no snapshot')
    ok(results[5])
    assert results[5]['snapshot']['vmstate_disk'] is None
    failed(results[6], 'disk-only', 'shut the VM down')
    assert 'Traceback' not in proc.stdout + proc.stderr
    run_one(t.task('snapshot', name='s-disk-only', state='absent'))
    assert [s['name'] for s in _snapshots(t)] == []

    r = run_one({'vmfleet.kvm.snapshot': {'domain': 'no-such-vm-xyz', 'name': 'x'}})
    failed(r, 'no-such-vm-xyz')


def test_timeout_undoes_the_snapshot(target):
    t = target
    r = run_one(t.task('snapshot', name='s-slow', timeout=0.01))
    # either it could not start in time or its work was undone: nothing changed
    failed(r, 's-slow', '0.01s', 'nothing changed')
    assert _snapshots(t, 's-slow') == []
    t.wait_counter(t.counter() + 1)  # the guest still runs


def _root_image_growth(path, grow_by, timeout):
    size0 = os.path.getsize(path)
    end = time.time() + timeout
    while time.time() < end:
        if os.path.getsize(path) > size0 + grow_by:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize('backend', BACKENDS)
def test_vm_killed_mid_snapshot_fails_clearly(vms, backend, tmp_path):
    t = vms.boot(backend, cmdline_extra='vmfleet.fill=128')
    vm = t.vm
    proc = start_playbook(write_play([t.task('snapshot', name='s-killed')], str(tmp_path / 'kill.yml')))
    # the RAM state lands in the root image: kill the VM once it starts growing
    assert _root_image_growth(vm.disk_path('root'), 4 << 20, 60), 'snapshot never started'
    if backend == 'qemu':
        os.kill(vm.pid, signal.SIGKILL)
    else:
        vm.virsh('destroy', vm.name)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert 'went away' in out or 'not running' in out or 'disappeared' in out, out[-3000:]
    assert 'Traceback' not in out


def test_libvirt_api_route_and_offline_route(vms):
    """All-qcow2 domain: libvirt's own snapshot API makes it (virsh lists it);
    shut off: qemu-img on the images, and the disks go back."""
    t = vms.boot('libvirt', disks=(('root', 'qcow2', 64), ('data', 'qcow2', 64)))
    vm = t.vm
    t.wait_counter(3)
    r = ok(run_one(t.task('snapshot', name='s-api')))
    assert r['route'] == 'libvirt'
    assert sorted(r['snapshot']['disks']) == ['vda', 'vdb'] and r['snapshot']['vmstate_disk'] == 'vda'
    listed = vm.virsh('snapshot-list', vm.name, '--name').stdout.split()
    assert listed == ['s-api']
    [info] = _snapshots(t, 's-api')
    assert info['in_libvirt'] is True

    # shut off: the offline route
    vm.virsh('destroy', vm.name)
    at_shutdown = t.disk_counter('root')
    r = ok(run_one(t.task('snapshot', name='s-off')))
    assert r['route'] == 'qemu-img' and r['snapshot']['vmstate_disk'] is None
    vm.virsh('start', vm.name)
    # the new boot counts from 1 up past the last boot's counter: boot and count, generously on a loaded host
    t.wait_counter(t.counter() + 3, timeout=240)
    vm.virsh('destroy', vm.name)
    assert t.disk_counter('root') > at_shutdown
    r = ok(run_one(t.task('snapshot', name='s-off', state='reverted')))
    assert r['route'] == 'qemu-img' and r['state'] == 'shutoff'
    assert t.disk_counter('root') == at_shutdown
    for name, route in (('s-off', 'qemu-img'), ('s-api', 'libvirt')):
        r = ok(run_one(t.task('snapshot', name=name, state='absent')))
        assert r['route'] == route
    assert vm.virsh('snapshot-list', vm.name, '--name').stdout.split() == []
    assert _snapshots(t) == []
