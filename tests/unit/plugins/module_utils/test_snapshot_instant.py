"""snapshot/instant.py: the partial-file locks that tell a dead run's memory file from
a live one, and one guest of a run paused at a time. Instant snapshots themselves are
proven in tests/system."""

import fcntl
import os
import threading
import time

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmfleetError
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot import instant
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import InstantSnapshots, remove_stale_partials


def test_only_partial_files_no_one_holds_are_stale(tmp_path):
    d = str(tmp_path)
    live = os.path.join(d, 'web01.a.vmstate.partial')
    fd = manifest_store.create_locked(live)
    assert os.stat(live).st_mode & 0o777 == 0o600
    for n in ('web01.b.vmstate.partial', 'web02.c.vmstate.partial', 'web01.d.vmstate'):
        open(os.path.join(d, n), 'w').close()
    try:
        assert remove_stale_partials(d, 'web01') == [os.path.join(d, 'web01.b.vmstate.partial')]
        assert sorted(os.listdir(d)) == ['web01.a.vmstate.partial', 'web01.d.vmstate', 'web02.c.vmstate.partial']
        with pytest.raises(OSError):
            manifest_store.create_locked(live)  # never two writers of one file
    finally:
        os.close(fd)
    assert remove_stale_partials(d, 'web01') == [live]
    with open(os.path.join(d, 'web02.c.vmstate.partial')) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert remove_stale_partials(d, 'web02') == []
    assert remove_stale_partials(str(tmp_path / 'none'), 'web01') == []


class _PausingVm(object):
    """Just what moment() drives, logging when the guest pauses and resumes."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def state(self):
        return 'running'

    def pause(self):
        self.log.append(('pause', self.name))
        time.sleep(0.05)  # the other thread runs meanwhile: it must still wait

    def resume(self):
        self.log.append(('resume', self.name))

    def prepare_memory_write(self, *a):
        pass

    def start_memory_write(self, *a):
        pass

    def finish_memory_write(self, *a):
        pass

    def qmp(self, *a, **kw):
        return {}

    def drain_events(self):
        return []


@pytest.fixture
def moment_alone(monkeypatch):
    """moment() with QEMU's side of it (capabilities, the write, its tracking) taken out."""
    monkeypatch.setattr(instant.migration, 'wait', lambda *a: {})
    monkeypatch.setattr(InstantSnapshots, '_arm', lambda self, caps: None)
    monkeypatch.setattr(InstantSnapshots, '_disarm', lambda self: None)
    monkeypatch.setattr(InstantSnapshots, '_wait_tracking', lambda self: None)


def test_one_guest_of_a_run_is_paused_at_a_time(moment_alone):
    """A fleet run's first VMs reach their pause together; two pauses at once stretched each other."""
    log = []
    snaps = [InstantSnapshots(_PausingVm('vm%d' % i, log), 30, '/nonexistent') for i in range(3)]
    threads = [threading.Thread(target=s.moment, args=([], 'tmp', -1, {})) for s in snaps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [what for what, _vm in log] == ['pause', 'resume'] * 3
    assert [vm for _what, vm in log[::2]] == [vm for _what, vm in log[1::2]]


def test_a_failed_pause_lets_the_next_guest_pause(moment_alone):
    log = []

    class Refusing(_PausingVm):
        def qmp(self, command, **kw):
            raise VmfleetError('QEMU refused the transaction')

        def unprepare_memory_write(self, *a):
            pass

    with pytest.raises(VmfleetError):
        InstantSnapshots(Refusing('bad', log), 30, '/nonexistent').moment([], 'tmp', -1, {})
    assert log == [('pause', 'bad'), ('resume', 'bad')]
    InstantSnapshots(_PausingVm('next', log), 1, '/nonexistent').moment([], 'tmp', -1, {})
    assert log[2:] == [('pause', 'next'), ('resume', 'next')]
