"""vmfleet.kvm.snapshot mode: instant through ansible-playbook on a raw QEMU VM
and on a libvirt domain: the guest pauses for milliseconds, runs on while its
RAM is written, and a revert brings RAM and disks back to that moment."""

import fcntl
import glob
import json
import os
import signal
import subprocess
import time

import pytest

from rig.ansible_run import failed, ok, run_one, run_tasks, start_playbook, write_play
from rig.guest import wait_serial
from rig.targets import BACKENDS


@pytest.fixture(scope='module')
def inst(module_vms):
    """A raw QEMU VM for the two tests below: each leaves it running with no snapshot and its
    memory directory empty (what each checks at its end), so the second needs no VM of its own."""
    t = module_vms.boot('qemu', cmdline_extra='vmfleet.fill=32')
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
    # QEMU's own loader read the pages the bitmap filled in from the file marks: the 32 MiB the guest filled
    assert r['load']['mode'] == 'full' and r['load']['loader'] == 'qemu', r['load']
    assert r['load']['pages'] >= 32 * 256, r['load']
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
        # absent finds the snapshot by its name, whatever mode the task gives
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
    assert ok(results[6])['changed'] is True and results[6]['mode'] == 'internal', results[6]
    assert ok(results[7])['changed'] is False
    failed(results[8], 'no-such-domain-xyz')
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert glob.glob(os.path.join(t.memdir, '*')) == []
    assert ok(run_one(t.task('snapshot_info')))['snapshots'] == []
    # the guest was never paused for long
    c = t.counter()
    t.wait_counter(c + 1, timeout=5)


# -- libvirt domains: the memory file is a libvirt save image, the revert libvirt's own restore --

LV_DISKS = (('root', 'qcow2', 64), ('data', 'qcow2', 64))  # all qcow2: libvirt's own snapshot API works too


def _monitor(vm, command):
    out = vm.virsh('qemu-monitor-command', vm.name, json.dumps({'execute': command})).stdout
    return json.loads(out)['return']


def _fill_sum(t, after=0, timeout=180):
    """The checksum of the guest's RAM fill: as made at boot (after=0) or the first one the guest made
    past byte ``after`` of its serial log."""
    pattern = r'VMFLEET-FILL 128 ([0-9a-f]{64})' if after == 0 else r'VMFLEET-FILLSUM \d+ ([0-9a-f]{64})'
    return wait_serial(t.vm.serial_log, pattern, timeout, after).group(1)


@pytest.fixture
def lv_inst(vms):
    t = vms.boot('libvirt', disks=LV_DISKS, cmdline_extra='vmfleet.fill=128')
    t.memdir = os.path.join(t.vm.workdir, 'mem')
    os.makedirs(t.memdir)
    return t


def test_libvirt_instant_snapshot_revert_and_later_saves(lv_inst, tmp_path):
    t = lv_inst
    vm = t.vm
    name = 'lv-inst'
    boot_sum = _fill_sum(t)
    t.wait_counter(3)
    before = t.counter()
    r = ok(run_one(_snap(t, name=name)))
    after = t.counter()
    assert r['changed'] is True and r['mode'] == 'instant' and r['route'] == 'qmp', r
    # paused from the controller's clock (Python and libvirt included): milliseconds, not the RAM's write
    assert 0 < r['paused_ms'] < 1500, r['paused_ms']
    mem = r['snapshot']['memory_file']
    assert os.stat(mem).st_mode & 0o777 == 0o600
    with open(mem, 'rb') as f:
        assert f.read(16) == b'LibvirtQemudSave'
    assert os.path.getsize(mem) > 128 * 2**20
    assert sorted(os.listdir(t.memdir)) == sorted([os.path.basename(mem), os.path.basename(mem) + '.manifest.json'])
    [listed] = _info(t, name)
    assert listed['mode'] == 'instant' and listed['consistent'] is True and listed['memory_file'] == mem, listed
    assert listed['paused_ms'] == r['paused_ms'] and sorted(listed['disks']) == ['vda', 'vdb']
    assert ok(run_one(_snap(t, name=name)))['changed'] is False
    # nothing left behind on the domain's QEMU
    caps = dict((c['capability'], c['state']) for c in _monitor(vm, 'query-migrate-capabilities'))
    assert caps['background-snapshot'] is False
    assert _monitor(vm, 'query-migrate').get('status') == 'completed'

    # the guest runs on, and its later saves and snapshots still work
    ran_to = t.wait_counter(after + 3)
    assert t.disk_counter('root') >= after + 1
    vm.virsh('snapshot-create-as', vm.name, 'lv-native')
    vm.virsh('snapshot-delete', vm.name, 'lv-native')
    saved = str(tmp_path / 'virsh.save')
    vm.virsh('save', vm.name, saved)
    vm.virsh('restore', saved)
    img = str(tmp_path / 'vm_save.img')
    assert ok(run_one(t.task('vm_save', path=img)))['changed'] is True
    assert ok(run_one({'vmfleet.kvm.vm_restore': {'path': img}}))['state'] == 'running'
    ran_to = t.wait_counter(t.counter() + 2)

    # a domain loads its RAM in full: load: background is refused before anything stops
    last = t.counter()
    failed(run_one(t.task('snapshot', name=name, state='reverted', load='background', memory_dir=t.memdir)),
           'cannot be reverted with load: background', 'libvirt', 'nothing was changed')
    t.wait_counter(last + 2)

    # revert without naming the mode: the snapshot is found by its name
    offset, last = t.serial_size(), t.counter()
    r = ok(run_one(t.task('snapshot', name=name, state='reverted', memory_dir=t.memdir)))
    assert r['changed'] is True and r['mode'] == 'instant' and r['route'] == 'libvirt-restore', r
    assert r['state'] == 'running' and vm.virsh('domstate', vm.name).stdout.strip() == 'running'
    # the log is appended to: the old run may print a few more before it is destroyed
    resumed = t.counters_after_going_back(offset, last)
    assert before <= resumed[0] - 1 <= after + 1 and resumed[0] < ran_to, (before, after, ran_to, resumed)
    assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))
    assert resumed[0] - 1 <= t.disk_counter('root') <= resumed[-1] + 1
    # the RAM came back whole: the guest's checksum of its fill matches the one it made at boot
    assert _fill_sum(t, after=offset) == boot_sum
    # the reverted domain saves and snapshots as before
    vm.virsh('snapshot-create-as', vm.name, 'lv-native2')
    vm.virsh('snapshot-delete', vm.name, 'lv-native2')

    gone = ok(run_one(t.task('snapshot', name=name, state='absent', memory_dir=t.memdir)))
    assert gone['changed'] is True and gone['mode'] == 'instant'
    assert os.listdir(t.memdir) == []
    assert _info(t, name) == []
    assert not any(name in _image_snapshot_names(vm.disk_path(d)) for d in ('root', 'data'))
    assert ok(run_one(_snap(t, name=name, state='absent')))['changed'] is False


def _image_snapshot_names(path):
    out = subprocess.run(['qemu-img', 'info', '-U', '--output=json', path], capture_output=True, text=True,
                         check=True)
    return [s['name'] for s in json.loads(out.stdout).get('snapshots', [])]


def _qemu_pid(t):
    if t.backend == 'qemu':
        return t.vm.pid
    with open('/run/libvirt/qemu/%s.pid' % t.vm.name) as f:
        return int(f.read())


@pytest.mark.parametrize('backend', BACKENDS)
def test_qemu_killed_mid_instant_snapshot_leaves_no_memory_file(vms, backend, tmp_path):
    # big enough that the memory takes a while to write, so the kill lands in the middle
    t = vms.boot(backend, memory_mib=512, cmdline_extra='vmfleet.fill=320')
    t.memdir = str(tmp_path / 'mem')
    os.makedirs(t.memdir)
    t.wait_counter(1)
    proc = start_playbook(write_play([_snap(t, name='i-killed')], str(tmp_path / 'kill.yml')))
    partial = os.path.join(t.memdir, '%s.i-killed.vmstate.partial' % t.vm.name)
    end = time.time() + 120
    while time.time() < end and not (os.path.exists(partial) and os.path.getsize(partial) > (8 << 20)):
        assert proc.poll() is None, 'the snapshot ended before QEMU could be killed: ' + proc.stdout.read()[-3000:]
        time.sleep(0.005)
    assert os.path.exists(partial), 'the memory write never started'
    os.kill(_qemu_pid(t), signal.SIGKILL)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode != 0, out[-3000:]
    assert 'Traceback' not in out
    assert 'undone' in out or 'went away' in out or 'not running' in out, out[-3000:]
    assert os.listdir(t.memdir) == []


def test_stale_partial_memory_file_is_removed_by_the_next_run(shared_qemu, tmp_path):
    """A run killed with its QEMU leaves a partial file no one holds: the next task removes it;
    one a live run holds (its lock) stays."""
    t = shared_qemu
    vm_name = ok(run_one(t.task('vm_info')))['vms'][0]['name']
    stale = tmp_path / ('%s.dead.vmstate.partial' % vm_name)
    live = tmp_path / ('%s.live.vmstate.partial' % vm_name)
    other = tmp_path / 'another-vm.dead.vmstate.partial'
    for p in (stale, live, other):
        p.write_bytes(b'x' * 4096)
    with open(live, 'rb') as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = ok(run_one(t.task('snapshot', name='no-such', state='absent', memory_dir=str(tmp_path))))
        assert r['changed'] is False
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])
