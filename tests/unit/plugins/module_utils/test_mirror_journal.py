"""The drive mirror journal: atomic, private, and a record of every phase."""

import json
import os
import stat

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror import journal as mj
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmfleetError


def test_phases_are_recorded_durably_and_privately(tmp_path):
    jdir = str(tmp_path / 'j')
    j = mj.Journal.open(jdir, 'web/01', 'vdb')
    assert not j.exists and os.path.basename(j.path) == 'web_01--vdb.json'
    assert stat.S_IMODE(os.stat(jdir).st_mode) == 0o700
    j.start(source='/a.qcow2', target='/b.qcow2')
    for phase in (mj.PLANNED, mj.TARGET_CREATED, mj.COPYING, mj.READY, mj.SWITCHING, mj.SWITCHED):
        j.record(phase)
    assert stat.S_IMODE(os.stat(j.path).st_mode) == 0o600
    again = mj.Journal.open(jdir, 'web/01', 'vdb')
    assert again.phase == mj.SWITCHED and again.phase in mj.TARGET_LIVE
    assert [h['phase'] for h in again.get('history')][-2:] == [mj.SWITCHING, mj.SWITCHED]
    assert os.listdir(jdir) == ['web_01--vdb.json'], 'a temporary file was left behind'
    # a new mirror of the same disk keeps the last one's outcome
    again.start(source='/b.qcow2', target='/c.qcow2')
    again.record(mj.PLANNED)
    with open(again.path) as f:
        data = json.load(f)
    assert data['previous']['phase'] == mj.SWITCHED and data['previous']['target'] == '/b.qcow2'
    with pytest.raises(ValueError):
        again.record('bogus')


def test_a_damaged_journal_is_reported_not_ignored(tmp_path):
    path = mj.journal_path(str(tmp_path), 'vm', 'vda')
    with open(path, 'w') as f:
        f.write('{"phase": "switch')
    with pytest.raises(VmfleetError) as e:
        mj.Journal.open(str(tmp_path), 'vm', 'vda')
    assert path in e.value.msg and 'which image' in e.value.message
