"""vmfleet.kvm.snapshot mode: instant through ansible-playbook on a raw QEMU VM:
the guest pauses for milliseconds, runs on while its RAM is written, and a
revert brings RAM and disks back to that moment."""

import glob
import os
import signal
import time

import pytest

from rig.ansible_run import failed, ok, run_one, run_tasks


@pytest.fixture
def inst(vms):
    t = vms.boot('qemu', cmdline_extra='vmfleet.fill=32')
    t.memdir = os.path.join(os.path.dirname(t.vm.serial_log), 'mem')
    os.makedirs(t.memdir)
    t.relaunched = []
    yield t
    for pid in t.relaunched:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _snap(t, **kw):
    kw.setdefault('memory_dir', t.memdir)
    return t.task('snapshot', mode='instant', **kw)


def _info(t, name):
    r = ok(run_one(t.task('snapshot_info', name=name, memory_dir=t.memdir)))
    return r['snapshots']


def test_instant_create_run_on_revert_absent(inst):
    t = inst
    name = 'i-revert'
    t.wait_counter(3)
    # check mode predicts and touches nothing
    [pred] = run_tasks([_snap(t, name=name, disks=['root', 'data'])], check=True, diff=True)[0]
    assert pred['changed'] is True and pred['snapshot']['mode'] == 'instant', pred
    assert glob.glob(os.path.join(t.memdir, '*')) == []
    assert _info(t, name) == []

    before = t.counter()
    r = ok(run_one(_snap(t, name=name, disks=['root', 'data'])))
    after = t.counter()
    assert r['changed'] is True and r['mode'] == 'instant'
    assert 0 < r['paused_ms'] < 500, r['paused_ms']
    assert r['duration_s'] > 0
    assert sorted(r['snapshot']['disks']) == ['data', 'root']
    mem = r['snapshot']['memory_file']
    assert os.path.dirname(mem) == t.memdir and os.path.getsize(mem) > 32 * 2**20
    assert os.stat(mem).st_mode & 0o777 == 0o600
    [listed] = _info(t, name)
    assert listed['mode'] == 'instant' and listed['consistent'] is True, listed
    assert sorted(listed['disks']) == ['data', 'root']

    # idempotent
    again = ok(run_one(_snap(t, name=name, disks=['root', 'data'])))
    assert again['changed'] is False

    # the guest ran on past the snapshot and wrote its disks
    ran_to = t.wait_counter(after + 3)
    assert t.disk_counter('root') >= after + 1
    r = ok(run_one(_snap(t, name=name, state='reverted')))
    assert r['changed'] is True and r['state'] == 'running', r
    t.relaunched.append(r['pid'])
    # A relaunched QEMU opens its serial file anew: all it prints is after the revert.
    deadline = time.time() + 60
    while len(t.counters_after(0)) < 3 and time.time() < deadline:
        time.sleep(0.3)
    resumed = t.counters_after(0)
    assert len(resumed) >= 3, resumed
    assert before <= resumed[0] - 1 <= after + 1, (before, after, resumed)
    assert resumed[0] < ran_to
    assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))
    # disk and RAM agree: the disk counter continues from the RAM's counter
    assert resumed[0] - 1 <= t.disk_counter('root') <= resumed[-1] + 1

    # absent removes the disk snapshots and the memory file
    gone = ok(run_one(_snap(t, name=name, state='absent')))
    assert gone['changed'] is True
    assert glob.glob(os.path.join(t.memdir, '*')) == []
    assert _info(t, name) == []
    assert ok(run_one(t.task('snapshot_info', name=name)))['snapshots'] == []
    assert ok(run_one(_snap(t, name=name, state='absent')))['changed'] is False


def test_instant_refusals_change_nothing(inst):
    t = inst
    t.wait_counter(2)
    results, proc = run_tasks([
        _snap(t, name='i-bad', disks=['root', 'varstore']),
        _snap(t, name='i-bad', memory_dir='/nonexistent/dir'),
        _snap(t, name='i-bad', vmstate_disk='root'),
        _snap(t, name='i-none', state='reverted'),
        t.task('snapshot', name='i-int', memory=False),
        _snap(t, name='i-int'),
        _snap(t, name='i-int', state='absent'),
        t.task('snapshot', name='i-int', state='absent'),
        {'vmfleet.kvm.snapshot': {'domain': 'no-such-domain-xyz', 'name': 'x', 'mode': 'instant'}},
    ])
    failed(results[0], 'varstore', 'raw')
    failed(results[1], '/nonexistent/dir')
    failed(results[2], 'vmstate_disk', 'instant')
    failed(results[3], 'i-none', 'no instant snapshot')
    ok(results[4])
    failed(results[5], 'internal snapshot', 'nothing was changed')
    failed(results[6], 'internal snapshot', 'mode: internal')
    ok(results[7])
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert glob.glob(os.path.join(t.memdir, '*')) == []
    assert ok(run_one(t.task('snapshot_info')))['snapshots'] == []
    # the guest was never paused for long
    c = t.counter()
    t.wait_counter(c + 1, timeout=5)


def test_instant_on_a_libvirt_domain_is_refused_before_anything_is_touched(shared_libvirt, tmp_path):
    t = shared_libvirt
    before = ok(run_one(t.task('snapshot_info')))['snapshots']
    c = t.wait_counter(1)
    r = run_one(t.task('snapshot', name='i-lv', mode='instant', memory_dir=str(tmp_path)))
    failed(r, 'libvirt', 'mode: internal')
    assert ok(run_one(t.task('snapshot_info')))['snapshots'] == before
    assert list(tmp_path.iterdir()) == []
    t.wait_counter(c + 1, timeout=10)  # the guest was never stopped
