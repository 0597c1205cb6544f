"""A rollback point is always this run's: pre_upgrade_snapshot with its defaults names the snapshot for the
run (the date, or the AWX job), so next month's run takes a new one and the rollback goes to it; a name given
again whose snapshot is older than max_age fails, naming its age, instead of reporting last month's as done."""

import datetime
import json
import time

from rig.ansible_run import ok, run_one, run_playbook, write_inventory


def _pre_upgrade(tmp_path, vm, **extra):
    reports = tmp_path / 'reports'
    proc = run_playbook('vmfleet.kvm.pre_upgrade_snapshot', inventory=write_inventory(tmp_path),
                        extra_vars=dict(vmfleet_vms=[vm.vm.qmp_socket], pre_upgrade_snapshot_report_dir=str(reports),
                                        **extra))
    report = json.loads((reports / 'pre_upgrade_snapshot.json').read_text())
    (record,) = report['vms']
    return proc, record


def _ours(vm):
    snaps = ok(run_one(vm.task('snapshot_info')))['snapshots']
    return {s['name']: s for s in snaps if s['name'].startswith('vmfleet-')}


def test_next_months_run_with_the_defaults_takes_its_own_snapshot_and_rollback_goes_to_it(vms, tmp_path):
    vm = vms.boot('qemu')
    vm.wait_counter(2)
    # last month's run, as AWX launched it (its job id names the snapshot)
    proc, last_month = _pre_upgrade(tmp_path, vm, awx_job_id=41)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert last_month['snapshot'] == 'vmfleet-pre-upgrade-job41' and last_month['changed'], last_month
    at_last_month = vm.counter()

    # a "month" later the guest has run on; the same playbook, its defaults, from the command line
    vm.wait_counter(at_last_month + 4)
    proc, this_run = _pre_upgrade(tmp_path, vm)
    assert proc.returncode == 0, proc.stdout[-3000:]
    today = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d')
    assert this_run['snapshot'] == 'vmfleet-pre-upgrade-' + today and this_run['changed'], this_run
    at_this_run = vm.counter()
    assert at_this_run >= at_last_month + 4
    assert set(_ours(vm)) == {'vmfleet-pre-upgrade-job41', this_run['snapshot']}

    # the rollback to the name the report gave goes to this run's point, not last month's
    vm.wait_counter(at_this_run + 3)
    offset = vm.serial_size()
    proc = run_playbook('vmfleet.kvm.snapshot_rollback', inventory=write_inventory(tmp_path),
                        extra_vars=dict(vmfleet_vms=[vm.vm.qmp_socket], vmfleet_snapshot_name='pre-upgrade-' + today))
    assert proc.returncode == 0, proc.stdout[-3000:]
    back = vm.counters_after_going_back(offset, vm.counter())
    assert at_this_run - 2 <= back[0] <= at_this_run + 2, (back, at_last_month, at_this_run)


def test_a_name_given_again_whose_snapshot_is_old_fails_naming_its_age_and_takes_nothing(vms, tmp_path):
    vm = vms.boot('qemu')
    proc, first = _pre_upgrade(tmp_path, vm, vmfleet_snapshot_name='pre-upgrade')
    assert proc.returncode == 0 and first['changed'], proc.stdout[-3000:]
    before = _ours(vm)
    # a re-run within max_age is the same run: unchanged
    proc, again = _pre_upgrade(tmp_path, vm, vmfleet_snapshot_name='pre-upgrade')
    assert proc.returncode == 0 and not again['changed'], (again, proc.stdout[-3000:])
    # past max_age (1 s here; a day by default) it is an earlier run's point
    time.sleep(2.5)
    proc, stale = _pre_upgrade(tmp_path, vm, vmfleet_snapshot_name='pre-upgrade', pre_upgrade_snapshot_max_age=1)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'Traceback' not in out, out[-3000:]
    assert stale['status'] == 'failed', stale
    for words in ("snapshot 'vmfleet-pre-upgrade'", 'seconds ago', "an earlier run's rollback point"):
        assert words in stale['msg'], stale['msg']
    assert _ours(vm) == before
