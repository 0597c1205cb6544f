"""migrate/snapshot_files.py: an instant snapshot's files on their way with vm_migrate, against a
stand-in for the destination's SSH (a directory of its own, or the very same one when shared). The
moves themselves are proven on the fleet (tests/system/test_snapshot_migrate.py)."""

import hashlib
import json
import os
import shutil

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument, TargetProblem
from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.snapshot_files import SnapshotFiles
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot import instant


class FakeRemote:
    """The destination: every path under ``root`` ('' when it sees this host's files)."""
    host = 'hv2'
    sudo = []

    def __init__(self, root):
        self.root = root

    def there(self, path):
        return self.root + path

    def put(self, local, path, what):
        os.makedirs(os.path.dirname(self.there(path)), exist_ok=True)
        shutil.copyfile(local, self.there(path))

    def write(self, path, data, what):
        os.makedirs(os.path.dirname(self.there(path)), exist_ok=True)
        with open(self.there(path), 'wb') as f:
            f.write(data)

    def ssh(self, argv, what, **kw):
        if argv[0] == 'rm':
            for p in argv[3:]:
                if os.path.exists(self.there(p)):
                    os.unlink(self.there(p))
            return ''
        raise AssertionError('unexpected command %r' % argv)

    def sums(self, paths, what):
        out = {}
        for p in paths:
            if os.path.exists(self.there(p)):
                with open(self.there(p), 'rb') as f:
                    out[p] = hashlib.sha256(f.read()).hexdigest()
        return out


@pytest.fixture
def memdir(tmp_path):
    d = str(tmp_path / 'snapshots')
    os.makedirs(d, 0o700)
    path = instant.memory_path(d, 'web01', 's1')
    with open(path, 'wb') as f:
        f.write(b'RAM' * 1000)
    manifest_store.write_manifest(path, dict(kind='instant', name='s1', version=manifest_store.MANIFEST_VERSION,
                                             vm=dict(name='web01', qmp_socket='/run/a.sock'), disks=[],
                                             qemu=dict(argv=['qemu', '-qmp', 'unix:/run/a.sock,server=on'])))
    return d


def _carrier(tmp_path, memdir, root):
    return SnapshotFiles(memdir, str(tmp_path / 'journal'), '/run/a.sock', FakeRemote(root))


def _rewrite(kind, content):
    return dict(content, qemu=dict(content['qemu'], argv=['qemu', '-qmp', 'unix:/var/lib/b.sock,server=on']))


def test_copied_storage_is_refused_naming_the_snapshot(tmp_path, memdir):
    with pytest.raises(InvalidArgument, match=r"s1 \(instant\).*nothing was changed"):
        _carrier(tmp_path, memdir, str(tmp_path / 'hv2')).plan('copy', 'web01')


def test_the_files_move_the_manifest_written_there_last_then_the_source_files_go(tmp_path, memdir):
    root = str(tmp_path / 'hv2')
    c = _carrier(tmp_path, memdir, root)
    assert c.plan('shared', 'web01') == ['s1'] and not c.shared
    c.send(_rewrite)
    mem = instant.memory_path(memdir, 'web01', 's1')
    # the memory file is there, its manifest not yet (no snapshot there until the VM is), the journal names it
    assert os.path.exists(root + mem) and not os.path.exists(root + manifest_store.manifest_path(mem))
    assert os.path.exists(c.path) and os.path.exists(mem)
    assert c.finish() == ['s1']
    moved = json.load(open(root + manifest_store.manifest_path(mem)))
    assert moved['qemu']['argv'][-1] == 'unix:/var/lib/b.sock,server=on' and moved['name'] == 's1'
    assert os.listdir(memdir) == [] and not os.path.exists(c.path)


def test_a_failed_migration_removes_the_copies_and_keeps_the_snapshot(tmp_path, memdir):
    root = str(tmp_path / 'hv2')
    c = _carrier(tmp_path, memdir, root)
    c.plan('shared', 'web01')
    c.send(_rewrite)
    # a re-run (another carrier) finds the journal
    assert _carrier(tmp_path, memdir, root).undo() == ['s1']
    assert os.listdir(root + memdir) == [] and not os.path.exists(c.path)
    assert list(instant.find_manifests(memdir, 'web01')) == ['s1']


def test_a_shared_memory_dir_is_rewritten_in_place_and_kept(tmp_path, memdir):
    c = _carrier(tmp_path, memdir, '')
    c.plan('shared', 'web01')
    assert c.shared
    c.send(_rewrite)
    assert c.finish() == ['s1']
    path, m = instant.find_manifests(memdir, 'web01')['s1']
    assert os.path.exists(path) and m['qemu']['argv'][-1] == 'unix:/var/lib/b.sock,server=on'


def test_another_file_of_that_name_there_is_refused(tmp_path, memdir):
    root = str(tmp_path / 'hv2')
    mem = instant.memory_path(memdir, 'web01', 's1')
    os.makedirs(root + memdir)
    open(root + mem, 'wb').close()
    with pytest.raises(TargetProblem, match='exists already'):
        _carrier(tmp_path, memdir, root).plan('shared', 'web01')
    assert os.path.getsize(root + mem) == 0


def test_a_raw_qemu_snapshot_relaunches_on_the_socket_the_vm_has_at_the_destination(tmp_path):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.migrator import QemuMigrator
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline
    m = QemuMigrator(None, dict(qmp_socket='/run/vms/a.sock', destination_qmp_socket='/var/lib/vmfleet/a.sock',
                                destination_uri='ssh://root@hv2', journal_dir=str(tmp_path)), Deadline(10))
    argv = ['qemu', '-qmp', 'unix:/run/vms/a.sock,server=on,wait=off', '-pidfile', '/run/vms/a.pid']
    for kind, key in (('instant', 'qemu'), ('external', 'relaunch')):
        out = m._rewrite(kind, {key: dict(argv=argv, exe='/usr/bin/qemu'), 'vm': dict(name='a', qmp_socket='/run/vms/a.sock')})
        new = out[key]['argv']
        assert 'unix:/var/lib/vmfleet/a.sock,server=on,wait=off' in new and '-incoming' not in new, new
        assert '/var/lib/vmfleet/a.pid' in new and '-daemonize' in new and out[key]['exe'] == '/usr/bin/qemu'
        assert out['vm'] == dict(name='a', qmp_socket='/var/lib/vmfleet/a.sock')
