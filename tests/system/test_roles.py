"""The fleet roles' promise when one VM fails: the others are done, the failed
one is left as it was, and the host fails at the end naming each failed VM and
why. (Each role's happy path is its molecule scenario in extensions/molecule.)"""

import json
import os
import re

from rig.ansible_run import ok, run_one, run_playbook, write_inventory


def _playbook(name, tmp_path, **extra):
    return run_playbook('vmfleet.kvm.' + name, inventory=write_inventory(tmp_path), extra_vars=extra)


def test_one_failed_vm_does_not_stop_the_others_and_fails_the_host_naming_it(vms, tmp_path):
    good = vms.boot('qemu')
    # a VM with nothing but a raw disk: no disk of it can hold an internal snapshot
    bare = vms.boot('qemu', disks=(('root', 'raw', 16),))
    reports = tmp_path / 'reports'
    c = good.wait_counter(1)
    proc = _playbook('pre_upgrade_snapshot', tmp_path, vmfleet_snapshot_name='fail-test', vmfleet_snapshot_mode='internal',
                     vmfleet_vms=[good.vm.qmp_socket, bare.vm.qmp_socket, '/nonexistent/vm.qmp', 'no-such-domain-xyz'],
                     pre_upgrade_snapshot_report_dir=str(reports))
    assert proc.returncode != 0, proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    assert 'Traceback' not in out
    assert 'pre_upgrade_snapshot failed on 3 VM(s)' in out, out[-3000:]
    for why in ('/nonexistent/vm.qmp', 'no-such-domain-xyz', 'no disk of this VM can hold an internal snapshot'):
        assert why in out, (why, out[-3000:])

    report = json.loads((reports / 'pre_upgrade_snapshot.json').read_text())
    status = dict((r['vm'], r['status']) for r in report['vms'])
    assert status[good.vm.name] == 'ok' and status[bare.vm.name] == 'failed', status
    assert status['/nonexistent/vm.qmp'] == 'failed' and status['no-such-domain-xyz'] == 'failed', status
    mine = next(r for r in report['vms'] if r['vm'] == good.vm.name)
    assert mine['changed'] is True and mine['state_before'] == mine['state_after'] == 'running'
    assert os.stat(reports / 'pre_upgrade_snapshot.json').st_mode & 0o777 == 0o600

    # the good VM holds the snapshot on its qcow2 disks, not on the raw one; both guests run on
    snaps = ok(run_one(good.task('snapshot_info', name='vmfleet-fail-test')))['snapshots']
    assert snaps and sorted(snaps[0]['disks']) == ['data', 'root'], snaps
    good.wait_counter(c + 1)
    bare.wait_counter(bare.counter() + 1)


def test_destructive_playbooks_want_the_snapshot_by_name_and_bad_extra_vars_fail_naming_them(tmp_path):
    """A bare rollback or cleanup must not act on every VM with a default name, and a
    mistyped extra var must fail before any host is touched (not become 0). Check mode,
    so that a broken guard could not revert or delete anything of the other tests."""
    for playbook, words in (('snapshot_rollback', ('vmfleet_snapshot_name', 'revert')),
                            ('snapshot_cleanup', ('vmfleet_snapshot_name', 'vmfleet_snapshot_keep'))):
        proc = run_playbook('vmfleet.kvm.' + playbook, inventory=write_inventory(tmp_path), check=True)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and 'Traceback' not in out, out[-3000:]
        for w in words:
            assert w in out, (playbook, w, out[-3000:])
        # it failed on the missing name (the task's arguments), before its module could run
        assert re.search(r'fatal: .*Task failed: %s needs the snapshot' % playbook, out), out[-3000:]
    for playbook, extra, words in (
            ('snapshot_cleanup', dict(vmfleet_snapshot_name='x', vmfleet_snapshot_keep='three'),
             ("'vmfleet_snapshot_keep'", "'three'", 'int')),
            ('pre_upgrade_snapshot', dict(vmfleet_snapshot_name='x', vmfleet_snapshot_mode='fast'),
             ('vmfleet_snapshot_mode', 'auto, internal, instant, external', 'fast')),
            ('host_maintenance', dict(vmfleet_phase='later'), ('vmfleet_phase', 'save, restore'))):
        proc = run_playbook('vmfleet.kvm.' + playbook, inventory=write_inventory(tmp_path), check=True,
                            extra_vars=extra)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and 'Traceback' not in out, out[-3000:]
        assert 'Validation of arguments failed' in out, out[-3000:]
        for w in words:
            assert w in out, (playbook, w, out[-3000:])
        assert "Validating arguments against arg spec 'extra_vars'" in out, out[-3000:]
