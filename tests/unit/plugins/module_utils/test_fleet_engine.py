"""The fleet engine's pool: per-VM isolation, order, the concurrency bound, one
deadline, progress and the final verdict. Fake work, no VM: each workflow's
behaviour on real VMs is proven by the molecule scenarios and tests/system."""

import json
import threading
import time

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import FleetFailed, InvalidArgument
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import vm_lock
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.run import FleetRun


@pytest.fixture(autouse=True)
def _locks(tmp_path, monkeypatch):
    monkeypatch.setattr(vm_lock, 'LOCK_DIR', str(tmp_path / 'locks'))


class _Module(object):
    check_mode = False

    def __init__(self):
        self.logged = []

    def log(self, msg):
        self.logged.append(msg)

    def warn(self, msg):
        raise AssertionError(msg)


def _run(tmp_path=None, concurrency=2, timeout=60, check_mode=False):
    module = _Module()
    module.check_mode = check_mode
    params = dict(uri='', vms=[], exclude=[], name_pattern='', qmp_sockets=[], concurrency=concurrency,
                  timeout=timeout, progress_file=str(tmp_path / 'p' / 'progress.json') if tmp_path else None)
    run = FleetRun(module, 'test', params)
    run.state_of = lambda target: 'running'
    return run


def _targets(n):
    return [dict(name='vm%d' % i, backend='qemu', state='running', connection={'qmp_socket': '/run/vm%d' % i})
            for i in range(n)]


def test_one_failed_vm_does_not_stop_the_others_and_the_run_names_it(tmp_path):
    def work(run, target, record):
        record['step'] = 'started'
        if target['name'] == 'vm1':
            raise InvalidArgument("VM 'vm1' has no disk 'vdz'", hint='its disks are: vda')
        if target['name'] == 'vm2':
            raise KeyError('oops')
        record['changed'] = True

    run = _run(tmp_path)
    before = time.time()
    missing = [dict(vm='gone', msg="no VM named 'gone' on this host", status='failed', changed=False)]
    records = run.run(_targets(4), work, missing)
    assert [r['vm'] for r in records] == ['gone', 'vm0', 'vm1', 'vm2', 'vm3']
    by = dict((r['vm'], r) for r in records)
    assert by['vm0']['status'] == by['vm3']['status'] == 'ok' and by['vm0']['changed'] is True
    assert by['vm1']['status'] == 'failed' and by['vm1']['step'] == 'started'
    assert by['vm1']['msg'] == "VM 'vm1' has no disk 'vdz'. Its disks are: vda"
    assert by['vm2']['status'] == 'failed' and 'internal error: KeyError' in by['vm2']['msg']
    assert all(r.get('state_after') == 'running' for r in records if r['vm'] != 'gone')
    # when each VM's work ran, failed or not, for the fleet report's timeline
    assert all(before <= r['started_at'] <= r['ended_at'] <= time.time() for r in records if r['vm'] != 'gone')
    with pytest.raises(FleetFailed) as e:
        run.result()
    assert e.value.msg.startswith('test failed on 3 of 5 VM(s)')
    for name in ('gone', 'vm1', 'vm2'):
        assert name in e.value.msg
    assert e.value.result['failed_vms'] == ['gone', 'vm1', 'vm2'] and e.value.result['changed'] is True
    progress = json.loads((tmp_path / 'p' / 'progress.json').read_text())
    assert progress['finished'] is True and progress['done'] == progress['total'] == 5
    assert sorted(v['vm'] for v in progress['vms']) == ['vm0', 'vm1', 'vm2', 'vm3']


def test_no_more_vms_at_once_than_the_concurrency():
    lock = threading.Lock()
    now = {'in': 0, 'max': 0}

    def work(run, target, record):
        with lock:
            now['in'] += 1
            now['max'] = max(now['max'], now['in'])
        time.sleep(0.05)
        with lock:
            now['in'] -= 1

    run = _run(concurrency=3)
    run.run(_targets(10), work)
    assert now['max'] == 3
    assert run.result()['failed_vms'] == []


def test_a_vm_not_started_before_the_deadline_fails_saying_so():
    def work(run, target, record):
        time.sleep(0.3)

    run = _run(concurrency=1, timeout=0.2)
    records = run.run(_targets(2), work)
    assert records[0]['status'] == 'ok'
    assert records[1]['status'] == 'failed' and 'ran out before' in records[1]['msg']


def test_check_mode_writes_no_progress_file(tmp_path):
    run = _run(tmp_path, check_mode=True)
    run.run(_targets(1), lambda run, target, record: None)
    assert not (tmp_path / 'p').exists()


def test_each_vm_is_worked_in_the_state_it_has_once_its_lock_is_held(tmp_path):
    """Another run that held the lock may have left the VM otherwise than it was listed:
    a VM seen paused mid-revert by the other run is running again when this run's turn comes."""
    seen = {}

    def work(run, target, record):
        seen[target['name']] = target['state']

    run = _run(tmp_path)
    targets = [dict(t, state='paused') for t in _targets(2)]
    records = run.run(targets, work)
    assert seen == {'vm0': 'running', 'vm1': 'running'}
    assert [r['state_before'] for r in records] == ['running', 'running']
