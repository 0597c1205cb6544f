"""snapshot/instant.py: the partial-file locks that tell a dead run's memory file from
a live one. Instant snapshots themselves are proven in tests/system."""

import fcntl
import os

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import remove_stale_partials


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
