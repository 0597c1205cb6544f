"""vmfleet.kvm.snapshot state: reverted with load: background (issue 18, seed 004): the
reverted raw QEMU guest runs at once while its RAM comes in behind it through postcopy,
every page it touches first fetched on demand; after the load its RAM is exactly the
snapshot's. A load whose helper dies fails clearly and leaves no half-loaded guest."""

import os
import re
import signal
import time

import pytest

from rig.ansible_run import ok, run_one, start_playbook, write_play
from rig.guest import wait_serial
from rig.qmp import qmp

FILL_MIB = 768


@pytest.fixture(scope='module')
def filled(module_vms, tmp_path_factory):
    """A 1 GiB guest that filled 768 MiB of its RAM with random data, and the checksum it printed."""
    t = module_vms.boot('qemu', memory_mib=1024, cmdline_extra='vmfleet.fill=%d' % FILL_MIB)
    # under TCG the guest writes ~20 MB/s; a loaded host is slower still
    m = wait_serial(t.vm.serial_log, r'VMFLEET-FILL %d ([0-9a-f]{64})' % FILL_MIB, 900)
    t.fill_sum = m.group(1)
    t.memdir = str(tmp_path_factory.mktemp('mem'))
    r = ok(run_one(t.task('snapshot', name='bg', mode='instant', memory_dir=t.memdir)))
    t.snap_counter = t.counter()
    assert r['changed'] is True, r
    return t


def _revert(t, **kw):
    return t.task('snapshot', name='bg', state='reverted', memory_dir=t.memdir, **kw)


def _back_to_the_snapshot(t):
    """The relaunched QEMU's serial file holds only what the guest printed since the revert:
    it counts on from the snapshot's moment."""
    end = time.time() + 300
    while len(t.counters_after(0)) < 3 and time.time() < end:
        time.sleep(0.3)
    resumed = t.counters_after(0)
    assert len(resumed) >= 3, resumed
    assert resumed[0] <= t.snap_counter + 1, (t.snap_counter, resumed)
    assert resumed == list(range(resumed[0], resumed[0] + len(resumed))), resumed


def test_background_revert_runs_the_guest_first_and_its_ram_is_the_snapshots(filled):
    t = filled
    t.wait_counter(t.snap_counter + 3)  # the guest ran on past the snapshot
    r = ok(run_one(_revert(t, load='background'), timeout=900))
    assert r['changed'] is True and r['state'] == 'running', r
    load = r['load']
    assert load['mode'] == 'background' and load['pages'] * 4096 >= 1 << 30, load
    # the guest ran before its RAM was all in: it asked for pages the background had not sent yet
    assert load['requested'] > 0, load
    assert isinstance(r['running_after_s'], float) and r['running_after_s'] >= 0, r
    assert load['progress'], load
    _back_to_the_snapshot(t)
    # the guest's own checksum of the RAM it filled before the snapshot, taken after the load
    m = wait_serial(t.vm.serial_log, r'VMFLEET-FILLSUM \d+ ([0-9a-f]{64})', 900)
    assert m.group(1) == t.fill_sum


def _helper_pids(memory_file):
    pids = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    argv = f.read().split(b'\0')
            except OSError:
                continue
            if any(b'postcopy_source' in a for a in argv) and memory_file.encode() in argv:
                pids.append(int(pid))
    return pids


def _read_bytes(pid):
    with open('/proc/%d/io' % pid) as f:
        return int(re.search(r'^rchar: (\d+)', f.read(), re.M).group(1))


def test_the_helper_killed_mid_load_fails_clearly_and_the_revert_run_again_brings_the_vm_back(filled, tmp_path):
    t = filled
    memory_file = os.path.join(t.memdir, '%s.bg.vmstate' % t.vm.name)
    assert os.path.exists(memory_file)
    proc = start_playbook(write_play([_revert(t, load='background')], str(tmp_path / 'kill.yml')))
    end = time.time() + 300
    pids = []
    while time.time() < end and not pids:
        assert proc.poll() is None, 'the revert ended before its helper was seen: ' + proc.stdout.read()[-3000:]
        pids = _helper_pids(memory_file)
        time.sleep(0.002)
    assert pids, 'no postcopy_source helper appeared'
    [pid] = pids
    # killed once it streams pages (it sends the device state and RUN before the first page),
    # long before its 1 GiB is out
    while _read_bytes(pid) < 128 << 20:
        assert proc.poll() is None, 'the revert ended before its helper was killed: ' + proc.stdout.read()[-3000:]
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out[-3000:]
    assert 'Traceback' not in out
    assert re.search(r'background load of \S+ stopped', out), out[-3000:]
    assert 'revert again' in out, out[-3000:]
    # the guest never runs on with pages missing: a QEMU waiting for a load took its place on the
    # socket (the frozen one's vCPU, waiting for a page, may hold QEMU's lock: it may never answer)
    assert qmp(t.vm.qmp_socket, 'query-status')['status'] == 'inmigrate', out[-3000:]
    # the snapshot is intact: the same revert run again brings the VM back to it, running as it was
    # then (a QEMU waiting for a load has no guest state to keep)
    r = ok(run_one(_revert(t, load='background'), timeout=900))
    assert r['load']['mode'] == 'background' and r['state'] == 'running', r
    _back_to_the_snapshot(t)
