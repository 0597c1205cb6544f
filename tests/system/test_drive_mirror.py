"""vmfleet.kvm.drive_mirror through ansible-playbook, on raw QEMU VMs and
libvirt domains whose guest writes sequential records to its data disk
(``vmfleet.writer=vdb``) the whole time: the copy must lose none of them."""

import glob
import hashlib
import json
import os
import re
import stat
import subprocess
import time

import pytest

from rig.ansible_run import failed, kill_play, ok, run_one, run_tasks, start_playbook, write_play
from rig.guest import seq_records, wait_serial
from rig.targets import BACKENDS

WRITER = 'vmfleet.writer=vdb'


def _boot(vms, backend, **kw):
    t = vms.boot(backend, cmdline_extra=WRITER, **kw)
    # the writer is going: a few hundred records are on the data disk
    wait_serial(t.vm.serial_log, r'VMFLEET-SEQ [1-9]\d*00\r?\n', 60)
    return t


@pytest.fixture(scope='module')
def writer(module_vms):
    """The writing VM of a backend, booted once for this file: each test that leaves it running
    on its copy mirrors the data disk from wherever it runs now to a target of its own
    (_newdir with the test's name), and says where it runs then (_moved)."""
    booted = {}

    def get(backend):
        if backend not in booted:
            booted[backend] = _boot(module_vms, backend)
        return booted[backend]
    return get


def _moved(t, target, role='data'):
    """The VM runs disk ``role`` on ``target`` now: the rig's record of it says so (the next
    test mirrors from there, and checks that a failed or cancelled copy left it there)."""
    assert _live_file(t, role) == target
    t.vm.disks[role] = (target, t.vm.disks[role][1])


def _newdir(t, name='new'):
    # libvirt's QEMU runs as another user: the target's directory must be reachable
    d = os.path.join(t.vm.workdir, name)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    return d


def _seq_written(t):
    """The highest record number the guest reported writing (every 100)."""
    with open(t.vm.serial_log, 'rb') as f:
        found = re.findall(rb'VMFLEET-SEQ (\d+)\r?\n', f.read())
    return int(found[-1]) if found else 0


def _sha(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _phases(journal):
    return [h['phase'] for h in journal['history']]


def _journal_files(jdir):
    return sorted(glob.glob(os.path.join(jdir, '*.json')))


def _live_file(t, role):
    """The image the VM runs disk ``role`` on, asked of QEMU / libvirt directly."""
    if t.backend == 'qemu':
        for dev in t.qmp('query-block'):
            if dev.get('qdev', '').startswith('/machine/peripheral/%s/' % t.vm.device_id(role)) and dev.get('inserted'):
                return dev['inserted']['file']
        raise AssertionError('disk %s not found' % role)
    out = t.vm.virsh('domblklist', t.vm.name, '--details').stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] == t.disk(role):
            return f[3]
    raise AssertionError('disk %s not in %s' % (role, out))


def _assert_no_record_lost(t, target, fmt='qcow2'):
    """Every record the guest wrote is on the target: exactly 1..k, no hole."""
    written = _seq_written(t)
    values = seq_records(target, fmt, written + 2000)
    assert values, 'no records on the target'
    holes = [i + 1 for i, v in enumerate(values) if v != i + 1]
    assert not holes, 'records missing or wrong on the target at %s' % holes[:20]
    assert len(values) >= written, (len(values), written)
    return len(values)


@pytest.mark.parametrize('backend,copy_mode', [('qemu', 'background'), ('libvirt', 'write-blocking')])
def test_mirror_and_pivot_lose_no_write(vms, writer, tmp_path, backend, copy_mode):
    # raw QEMU: the data disk's device is vdb and the task names it by its block node, 'data',
    # which the switch replaces: the re-run below must still find the disk by that name (a VM
    # of its own: the shared one names its disks by device as well). libvirt: the shared VM.
    t = _boot(vms, backend, device_ids={'data': 'vdb'}) if backend == 'qemu' else writer(backend)
    jdir = str(tmp_path / 'journal')
    target = os.path.join(_newdir(t, 'pivot'), 'data-moved.qcow2')
    source = t.vm.disk_path('data')
    task = t.task('drive_mirror', disk=t.disk('data'), target=target, copy_mode=copy_mode, journal_dir=jdir)

    # check mode: predicts, touches nothing
    [pred], _proc = run_tasks([task], check=True, diff=True)
    ok(pred)
    assert pred['changed'] is True and 'diff' in pred
    assert [a['action'] for a in pred['actions']][:2] == ['create_target', 'start_copy']
    assert 'switch' in [a['action'] for a in pred['actions']]
    assert not os.path.exists(target) and not os.path.exists(jdir)

    at_start = _seq_written(t)
    r = ok(run_one(task, extra_args=['-vvv']))
    assert r['changed'] is True and r['on_target'] is True
    assert r['live_file'] == target and r['source'] == source
    assert r['bytes_total'] > 0 and r['bytes_copied'] > 0 and r['rate_mib_s'] > 0 and r['duration_s'] > 0
    assert r['progress'], 'no progress samples at -vvv'
    phases = _phases(r['journal'])
    expected = ['planned', 'target_created', 'copying', 'ready', 'switching', 'switched']
    if backend == 'libvirt':
        expected.append('config_updated')
    assert phases == expected + ['done'], phases
    [jf] = _journal_files(jdir)
    assert stat.S_IMODE(os.stat(jf).st_mode) == 0o600
    with open(jf) as f:
        assert json.load(f)['phase'] == 'done'
    assert _live_file(t, 'data') == target
    if backend == 'libvirt':
        inactive = t.vm.virsh('dumpxml', '--inactive', t.vm.name).stdout
        assert "file='%s'" % target in inactive and "file='%s'" % source not in inactive
    else:
        assert any('command line still names' in w for w in r.get('warnings', [])), r.get('warnings')
        # an instant snapshot records the command line a revert relaunches: it names the image
        # the disk runs on now, never the old one under this RAM
        memdir = str(tmp_path / 'mem')
        os.makedirs(memdir)
        ok(run_one(t.task('snapshot', name='i', mode='instant', memory_dir=memdir)))
        [manifest] = glob.glob(os.path.join(memdir, '*.manifest.json'))
        with open(manifest) as f:
            argv = json.load(f)['qemu']['argv']
        assert any(target in a for a in argv) and not any(source in a for a in argv), argv
        ok(run_one(t.task('snapshot', name='i', state='absent', memory_dir=memdir)))
        t.wait_counter(t.counter() + 1, timeout=60)

    # the guest runs on: its writes land on the target only, the source stays as it was
    sha = _sha(source)
    t.wait_counter(t.counter() + 3)
    assert _sha(source) == sha, 'the old source changed after the switch'
    n = _assert_no_record_lost(t, target)
    assert n > at_start
    # the source holds a gap-free prefix of them (what was written before the switch)
    old = seq_records(source, 'qcow2', n + 2000)
    assert old == list(range(1, len(old) + 1)) and at_start <= len(old) <= n

    again = ok(run_one(task))
    assert again['changed'] is False and again['on_target'] is True
    assert again['disk'] == r['disk'] == 'vdb'
    assert _phases(again['journal']) == phases

    if backend == 'libvirt':
        # the persistent definition drifts back to the old image (a libvirt that
        # does not update it at the pivot, or an edit): the re-run repairs it
        xml_path = os.path.join(t.vm.workdir, 'drifted.xml')
        with open(xml_path, 'w') as f:
            f.write(t.vm.virsh('dumpxml', '--inactive', t.vm.name).stdout.replace(target, source))
        t.vm.virsh('define', xml_path)
        fix = ok(run_one(task))
        assert fix['changed'] is True
        assert [a['action'] for a in fix['actions']] == ['update_config'], fix['actions']
        assert "file='%s'" % target in t.vm.virsh('dumpxml', '--inactive', t.vm.name).stdout
    _moved(t, target)


def _start_play(tasks, tmp_path, name):
    return start_playbook(write_play(tasks, str(tmp_path / name)))


def _wait_phase(jdir, phase, timeout=60, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        for jf in _journal_files(jdir):
            try:
                with open(jf) as f:
                    if json.load(f).get('phase') == phase:
                        return jf
            except (OSError, ValueError):
                pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError('the play ended before phase %s:\n%s' % (phase, proc.stdout.read()[-3000:]))
        time.sleep(0.05)
    raise AssertionError('journal never reached phase %s' % phase)


@pytest.mark.parametrize('backend', BACKENDS)
def test_killed_mid_copy_rerun_ends_pivoted(writer, tmp_path, backend):
    """The module is killed while copying (slowly: speed-limited). A re-run
    adopts the job QEMU/libvirt kept running, or (raw QEMU, job cancelled
    behind our back) starts over; either way it ends pivoted, and says so."""
    t = writer(backend)
    jdir = str(tmp_path / 'journal')
    target = os.path.join(_newdir(t, 'killed'), 'data-moved.qcow2')
    args = dict(disk=t.disk('data'), target=target, journal_dir=jdir)
    proc = _start_play([t.task('drive_mirror', speed=64 * 1024, **args)], tmp_path, 'slow.yml')
    try:
        _wait_phase(jdir, 'copying', proc=proc)
        time.sleep(1)
    finally:
        kill_play(proc)
    with open(_journal_files(jdir)[0]) as f:
        assert json.load(f)['phase'] == 'copying'
    assert _live_file(t, 'data') == t.vm.disk_path('data')
    if backend == 'qemu':
        # QEMU's job dies too (cancelled behind our back): the re-run must start over
        jobs = t.qmp('query-block-jobs')
        assert [j['device'] for j in jobs] == ['vmfleet-mirror-data'], jobs
        assert not jobs[0]['ready']
        t.qmp('block-job-cancel', device='vmfleet-mirror-data', force=True)
    r = ok(run_one(t.task('drive_mirror', **args)))
    assert r['changed'] is True and r['on_target'] is True
    phases = _phases(r['journal'])
    notes = ' '.join(h.get('note', '') for h in r['journal']['history'])
    if backend == 'qemu':
        assert 'failed' in phases or r['journal'].get('previous'), r['journal']
        assert 'ended' in notes + json.dumps(r['journal'].get('previous')) or phases.count('planned') >= 1
    else:
        assert phases[:3] == ['planned', 'target_created', 'copying'] and 'adopted' in notes, r['journal']
    assert phases[-3:] in (['switching', 'switched', 'done'], ['switched', 'config_updated', 'done']), phases
    _moved(t, target)
    _assert_no_record_lost(t, target)
    assert ok(run_one(t.task('drive_mirror', **args)))['changed'] is False


@pytest.mark.parametrize('backend', BACKENDS)
def test_ready_cancel_then_verified_pivot(writer, tmp_path, backend):
    t = writer(backend)
    jdir = str(tmp_path / 'journal')
    target = os.path.join(_newdir(t, 'ready'), 'data-moved.qcow2')
    args = dict(disk=t.disk('data'), target=target, journal_dir=jdir)

    r = ok(run_one(t.task('drive_mirror', state='ready', **args)))
    assert r['changed'] is True and r['on_target'] is False and r['journal']['phase'] == 'ready'
    again = ok(run_one(t.task('drive_mirror', state='ready', **args)))
    assert again['changed'] is False
    assert _live_file(t, 'data') == t.vm.disk_path('data')

    # cancel: the VM stays on its source, the copy (ours) is removed on request
    [pred], _proc = run_tasks([t.task('drive_mirror', state='cancelled', remove_target=True, **args)], check=True)
    assert pred['changed'] is True and os.path.exists(target)
    c = ok(run_one(t.task('drive_mirror', state='cancelled', remove_target=True, **args)))
    assert c['changed'] is True and c['on_target'] is False and not os.path.exists(target)
    assert _live_file(t, 'data') == t.vm.disk_path('data')
    assert ok(run_one(t.task('drive_mirror', state='cancelled', **args)))['changed'] is False
    t.wait_counter(t.counter() + 1)

    # again, and this time switch with the guest paused and the copy proven equal
    v = ok(run_one(t.task('drive_mirror', verify=True, **args)))
    assert v['changed'] is True and v['on_target'] is True
    assert v['verified'] is True and v['paused_ms'] > 0
    assert 'verify' in [a['action'] for a in v['actions']]
    assert v['journal']['previous']['phase'] == 'cancelled'
    _moved(t, target)
    t.wait_counter(t.counter() + 2)  # it runs again
    _assert_no_record_lost(t, target)


@pytest.mark.parametrize('backend', BACKENDS)
def test_timeout_names_the_running_job_or_cancels_it(writer, tmp_path, backend):
    t = writer(backend)
    jdir = str(tmp_path / 'journal')
    target = os.path.join(_newdir(t, 'timeout'), 'data-moved.qcow2')
    slow = dict(disk=t.disk('data'), target=target, journal_dir=jdir, speed=1 << 20, timeout=4)

    r = failed(run_one(t.task('drive_mirror', **slow)), 'not in sync within 4s', 'left running')
    jobs = ok(run_one(t.task('vm_info')))['vms'][0]['block_jobs']
    assert [j['disk'] for j in jobs] == [t.disk('data')], jobs
    assert _live_file(t, 'data') == t.vm.disk_path('data')
    assert r['journal']['phase'] == 'copying'

    # the re-run takes the running job over; this time the timeout cancels it
    failed(run_one(t.task('drive_mirror', cancel_on_timeout=True, **slow)), 'cancelled', 'runs on its source')
    assert ok(run_one(t.task('vm_info')))['vms'][0]['block_jobs'] == []
    assert _live_file(t, 'data') == t.vm.disk_path('data')
    t.wait_counter(t.counter() + 1)

    # and nothing stands in the way of a copy at full speed
    done = ok(run_one(t.task('drive_mirror', disk=t.disk('data'), target=target, journal_dir=jdir)))
    assert done['on_target'] is True
    _moved(t, target)
    _assert_no_record_lost(t, target)


def test_target_errors_fail_before_anything_starts(shared_qemu, tmp_path):
    # every run fails before anything starts (what the test proves): the session's shared VM
    t = shared_qemu
    jdir = str(tmp_path / 'journal')
    d = _newdir(t, 'mirror-errors')
    taken = os.path.join(d, 'taken.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', taken, '64M'], check=True)
    taken_sha = _sha(taken)
    results, proc = run_tasks([
        t.task('drive_mirror', disk='nosuchdisk', target=os.path.join(d, 'x.qcow2'), journal_dir=jdir),
        t.task('drive_mirror', disk='data', target=taken, journal_dir=jdir),
        t.task('drive_mirror', disk='data', target=os.path.join(d, 'missing', 'x.qcow2'), journal_dir=jdir),
        t.task('drive_mirror', disk='data', target=os.path.join(d, 'absent.qcow2'), create_target=False,
               journal_dir=jdir),
        t.task('drive_mirror', disk='data', target=t.vm.disk_path('root'), overwrite=True, journal_dir=jdir),
    ])
    failed(results[0], 'nosuchdisk', 'root', 'data')
    failed(results[1], taken, 'already exists', 'overwrite')
    failed(results[2], 'missing', 'does not exist')
    failed(results[3], 'absent.qcow2', 'create_target')
    failed(results[4], 'root')
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert _sha(taken) == taken_sha
    assert t.qmp('query-block-jobs') == []

    # a filesystem too small: refused before anything starts
    small = os.path.join(t.vm.workdir, 'mirror-errors-small')
    os.makedirs(small)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m,mode=0755', 'tmpfs', small], check=True)
    try:
        for check in (True, False):
            task = t.task('drive_mirror', disk='data', target=os.path.join(small, 'x.qcow2'), journal_dir=jdir)
            [r], _proc = run_tasks([task], check=check)
            failed(r, small, 'MiB free', 'needs about', 'nothing was started')
            assert r['space_needed'] > r['space_free']
            assert os.listdir(small) == []
    finally:
        subprocess.run(['umount', small], check=False)
    assert t.qmp('query-block-jobs') == []
    assert _live_file(t, 'data') == t.vm.disk_path('data')


def _fill(path):
    """Take every free byte of the filesystem holding ``path``."""
    with open(path, 'wb', buffering=0) as f:
        for chunk in (1 << 20, 4096):
            try:
                while True:
                    f.write(b'\xff' * chunk)
            except OSError:
                pass


def test_target_filling_up_mid_copy_leaves_vm_on_source(vms, tmp_path):
    # 40 MiB of data on the disk before the VM boots: the copy takes a few
    # seconds at 8 MiB/s, and the target's filesystem fills meanwhile
    name = 'vmfleet-test-fill'
    wd = os.path.join(vms.root, name)
    os.makedirs(wd)
    data = os.path.join(wd, 'data.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', data, '64M'], check=True)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 16M 40M', data], check=True, capture_output=True)
    t = _boot(vms, 'qemu', name=name)
    jdir = str(tmp_path / 'journal')
    fs = os.path.join(t.vm.workdir, 'fills')
    os.makedirs(fs)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=56m,mode=0755', 'tmpfs', fs], check=True)
    try:
        target = os.path.join(fs, 'data-moved.qcow2')
        proc = _start_play([t.task('drive_mirror', disk='data', target=target, speed=8 << 20,
                                   journal_dir=jdir)], tmp_path, 'fill.yml')
        try:
            _wait_phase(jdir, 'copying', proc=proc)
            _fill(os.path.join(fs, 'filler'))  # someone else takes the rest of the filesystem
            out = proc.communicate(timeout=180)[0]
        finally:
            if proc.poll() is None:
                kill_play(proc)
        assert 'No space left on device' in out, out[-3000:]
        assert 'keeps running on %s' % t.vm.disk_path('data') in out, out[-3000:]
        assert 'Traceback' not in out
        with open(_journal_files(jdir)[0]) as f:
            j = json.load(f)
        assert j['phase'] == 'failed' and 'No space' in j['history'][-1]['note']
        assert _live_file(t, 'data') == t.vm.disk_path('data')
        assert t.qmp('query-block-jobs') == []
        assert t.qmp('query-status')['status'] == 'running'
        t.wait_counter(t.counter() + 2)  # the guest runs on
        assert os.path.exists(target), 'the failed copy is left in place, nothing deleted'
    finally:
        subprocess.run(['umount', '-l', fs], check=False)
