"""vmfleet.kvm.snapshot with quiesce: true on a guest that runs the QEMU guest agent (qemu-ga, from
initrd-qga.img) and has an ext4 filesystem mounted (vmfleet.fs=vdb): the filesystems are frozen
during the disk snapshot, the snapshot holds the filesystem clean, and the guest is thawed even
when the module dies while it is frozen. One raw QEMU VM and one libvirt domain."""

import os
import signal
import subprocess
import time

import pytest

from rig.ansible_run import failed, ok, read_results, run_one, run_tasks, start_tasks
from rig.qga import StandInAgent, agent_command, wait_agent
from rig.targets import BACKENDS

DISKS = (('root', 'qcow2', 32), ('data', 'qcow2', 64))
HOLD_ENV = 'VMFLEET_TEST_HOLD_FROZEN'  # plugins/module_utils/snapshot/quiesce.py


@pytest.fixture(scope='module', params=BACKENDS)
def target(request, module_vms):
    """A guest with the agent and /data (ext4 on its disk 'data'), per backend, shared by the tests."""
    t = module_vms.boot(request.param, disks=DISKS, ext4_disks=('data',), guest_agent=True,
                        cmdline_extra='vmfleet.qga=1 vmfleet.fs=vdb')
    wait_agent(t.vm)
    return t


def _snapshots(t, name):
    r = ok(run_one(t.task('snapshot_info', name=name)))
    return r['snapshots']


def _ext4_of(image, tmp_path, snapshot=None):
    """(the ext4 superblock's features, the text of /tick) of the filesystem in ``image``, as the
    snapshot ``snapshot`` holds it (else as the image is now), read without the guest."""
    raw = str(tmp_path / 'fs.raw')
    argv = ['qemu-img', 'convert', '-U', '-O', 'raw'] + (['-l', 'snapshot.name=' + snapshot] if snapshot else [])
    subprocess.run(argv + [image, raw], check=True, capture_output=True)
    try:
        head = subprocess.run(['dumpe2fs', '-h', raw], check=True, capture_output=True, text=True).stdout
        features = [ln.split(':', 1)[1].split() for ln in head.splitlines() if ln.startswith('Filesystem features:')][0]
        tick = subprocess.run(['debugfs', '-R', 'cat /tick', raw], check=True, capture_output=True, text=True).stdout.strip()
        fsck = subprocess.run(['e2fsck', '-fn', raw], check=False, capture_output=True, text=True)
        return features, tick, fsck
    finally:
        os.unlink(raw)


def _wait_file(path, proc, timeout=120):
    end = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError('the play ended before the freeze:\n%s' % proc.stdout.read()[-4000:])
        assert time.time() < end, 'the module never froze the guest'
        time.sleep(0.05)
    with open(path) as f:
        return int(f.read().strip() or 0)


def _wait_status(vm, want, timeout):
    end = time.time() + timeout
    while True:
        got = agent_command(vm, 'guest-fsfreeze-status')
        if got == want or time.time() > end:
            return got
        time.sleep(0.2)


def test_quiesced_snapshot_holds_the_filesystem_clean(target, tmp_path):
    t = target
    data = t.vm.disk_path('data')
    t.wait_counter(3)
    hold = str(tmp_path / 'hold')
    open(hold, 'w').close()
    # the same disk-only snapshot without quiesce first: what the test tells apart
    snap = dict(mode='internal', memory=False)
    proc, out = start_tasks([t.task('snapshot', name='s-plain', **snap),
                             t.task('snapshot', name='s-quiesced', quiesce=True, **snap)],
                            str(tmp_path), env={HOLD_ENV: hold})
    try:
        _wait_file(hold + '.frozen', proc)
        # the module holds the guest frozen here (the test hook): the agent says so
        assert agent_command(t.vm, 'guest-fsfreeze-status') == 'frozen'
        counted = t.counter()
    finally:
        os.unlink(hold)
    log = proc.communicate(timeout=300)[0]
    plain, r = read_results(out, log)
    try:
        assert 'quiesced' not in ok(plain)
        ok(r)
        assert r['mode'] == 'internal' and r['changed'] is True
        assert r['quiesced']['filesystems'] >= 1 and r['quiesced']['frozen_ms'] > 0, r
        assert r['snapshot']['vmstate_disk'] is None
        # thawed when the task returned: the guest writes /data again
        assert agent_command(t.vm, 'guest-fsfreeze-status') == 'thawed'
        t.wait_counter(counted + 2)
        # a mounted ext4 snapshotted as it runs: its journal holds what a mount must replay
        assert 'needs_recovery' in _ext4_of(data, tmp_path, 's-plain')[0]
        features, tick, fsck = _ext4_of(data, tmp_path, 's-quiesced')
        # quiesced, the snapshot holds the filesystem as an unmount leaves it: journal flushed, consistent,
        # and with the guest's last write before the freeze (made through its page cache)
        assert 'needs_recovery' not in features, features
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert tick.isdigit() and counted - 2 <= int(tick) <= counted, (tick, counted)
    finally:
        for r in run_tasks([t.task('snapshot', name=n, state='absent') for n in ('s-plain', 's-quiesced')])[0]:
            ok(r)


def test_quiesced_external_snapshot_leaves_the_image_under_it_clean(target, tmp_path):
    """mode external: the image under the overlay holds the snapshot's moment; quiesced, its ext4 is clean
    (raw QEMU frozen by this collection around the switch, libvirt by its own QUIESCE flag)."""
    t = target
    data = t.vm.disk_path('data')
    counted = t.wait_counter(t.counter() + 2)
    r = ok(run_one(t.task('snapshot', name='s-ext-q', mode='external', memory=False, quiesce=True)))
    try:
        assert r['mode'] == 'external' and r['changed'] is True, r
        if t.backend == 'qemu':
            assert r['quiesced']['filesystems'] >= 1, r
        assert agent_command(t.vm, 'guest-fsfreeze-status') == 'thawed'
        features, tick, fsck = _ext4_of(data, tmp_path)
        assert 'needs_recovery' not in features, features
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert tick.isdigit() and int(tick) >= counted - 2, (tick, counted)
    finally:
        ok(run_one(t.task('snapshot', name='s-ext-q', state='absent')))
    t.wait_counter(t.counter() + 2)


def test_module_killed_while_frozen_the_guest_is_thawed(target, tmp_path):
    t = target
    hold = str(tmp_path / 'hold')
    open(hold, 'w').close()
    task = t.task('snapshot', name='s-killed', mode='internal', memory=False, quiesce=True)
    proc, _out = start_tasks([task], str(tmp_path), env={HOLD_ENV: hold})
    try:
        pid = _wait_file(hold + '.frozen', proc)
        assert agent_command(t.vm, 'guest-fsfreeze-status') == 'frozen'
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        # the watchdog sees the module's end of its pipe close and thaws at once
        assert _wait_status(t.vm, 'thawed', 30) == 'thawed'
        assert time.time() - killed < 30
        proc.communicate(timeout=120)
    finally:
        if os.path.exists(hold):
            os.unlink(hold)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # it died before the snapshot: none was taken, and the guest writes on
    assert _snapshots(t, 's-killed') == []
    t.wait_counter(t.counter() + 2)


def test_quiesce_with_memory_is_refused(target):
    t = target
    (internal, instant, info), _proc = run_tasks([
        t.task('snapshot', name='s-mem', mode='internal', quiesce=True),
        t.task('snapshot', name='s-mem', mode='instant', quiesce=True),
        t.task('snapshot_info', name='s-mem')])
    failed(internal, 'quiesce', 'memory: false')
    failed(instant, 'quiesce', 'instant')
    assert ok(info)['snapshots'] == []


def test_no_agent_fails_before_anything_changes(target, tmp_path):
    t = target
    if t.backend != 'qemu':
        pytest.skip('a stand-in agent takes the place of a raw QEMU VM\'s socket; libvirt: the test below')
    # a socket where no agent answers, and one whose agent refuses to freeze
    silent = StandInAgent(str(tmp_path / 'silent.sock'))
    blocked = StandInAgent(str(tmp_path / 'blocked.sock'), answers={'guest-info': {
        'version': '7.2', 'supported_commands': [{'name': 'guest-fsfreeze-freeze', 'enabled': False},
                                                 {'name': 'guest-fsfreeze-thaw', 'enabled': True}]}})
    task = dict(name='s-noagent', mode='internal', memory=False, quiesce=True)
    try:
        (r_silent, r_blocked, r_none, info), _proc = run_tasks([
            t.task('snapshot', guest_agent_socket=silent.path, **task),
            t.task('snapshot', guest_agent_socket=blocked.path, **task),
            t.task('snapshot', guest_agent_socket=str(tmp_path / 'nothing.sock'), **task),
            t.task('snapshot_info', name='s-noagent')])
    finally:
        silent.close()
        blocked.close()
    failed(r_silent, 'QEMU guest agent', silent.path, 'does not answer')
    assert 'guest-sync-delimited' in silent.seen
    failed(r_blocked, 'QEMU guest agent', 'guest-fsfreeze-freeze')
    assert 'guest-info' in blocked.seen and 'guest-fsfreeze-freeze' not in blocked.seen
    failed(r_none, 'QEMU guest agent', 'does not exist')
    assert ok(info)['snapshots'] == []
    # never frozen by any of them
    assert agent_command(t.vm, 'guest-fsfreeze-status') == 'thawed'


@pytest.mark.parametrize('backend', BACKENDS)
def test_vm_without_agent_fails_before_anything_changes(backend, request):
    """The rig's usual guest: no agent channel on its QEMU command line or in its domain XML."""
    t = request.getfixturevalue('shared_qemu' if backend == 'qemu' else 'shared_libvirt')
    r = run_one(t.task('snapshot', name='s-noagent', mode='internal', memory=False, quiesce=True))
    failed(r, 'QEMU guest agent', 'org.qemu.guest_agent.0')
    assert _snapshots(t, 's-noagent') == []
