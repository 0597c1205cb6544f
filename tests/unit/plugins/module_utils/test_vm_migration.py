"""vm_migration's pure parts: the destination host a URI names, and the command line a raw
QEMU's destination starts with."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument
from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.vm_migration import destination_argv, destination_host

SRC = ['qemu-system-x86_64', '-name', 'vm1', '-m', '256',
       '-serial', 'file:/srv/vm1/serial,log',
       '-qmp', 'unix:/srv/vm1/vm1.qmp,server=on,wait=off',
       '-pidfile', '/srv/vm1/vm1.pid',
       '-incoming', 'tcp:0:4444',
       '-blockdev', 'driver=file,filename=/srv/vm1/root.qcow2,node-name=root-file']


@pytest.mark.parametrize('uri, host', [
    ('qemu+ssh://vmfleet@hv2.example.com/system', 'hv2.example.com'),
    ('qemu+tcp://10.0.0.2/system', '10.0.0.2'),
    ('ssh://root@[fd00::2]:2222', 'fd00::2'),
])
def test_destination_host(uri, host):
    assert destination_host(uri) == host


def test_a_uri_without_a_host_is_refused():
    with pytest.raises(InvalidArgument):
        destination_host('qemu:///system')


def test_the_destination_starts_incoming_daemonized_with_its_own_socket_and_an_appended_log():
    argv = destination_argv(SRC, '/run/vms/vm1.qmp')
    assert argv[argv.index('-qmp') + 1] == 'unix:/run/vms/vm1.qmp,server=on,wait=off'
    assert argv[argv.index('-pidfile') + 1] == '/run/vms/vm1.pid'  # moved beside the socket
    # one -incoming, deferred (the old one dropped)
    assert argv.count('-incoming') == 1 and argv[argv.index('-incoming') + 1] == 'defer'
    assert '-daemonize' in argv
    # the serial log reopened for appending, the comma in its path escaped
    assert '-chardev' in argv and argv[argv.index('-chardev') + 1] == \
        'file,id=vmfleet-serial0,path=/srv/vm1/serial,,log,append=on'
    assert argv[argv.index('-serial') + 1] == 'chardev:vmfleet-serial0'
    # the disks stay (shared storage)
    assert 'driver=file,filename=/srv/vm1/root.qcow2,node-name=root-file' in argv


def test_the_same_socket_path_keeps_the_pidfile():
    argv = destination_argv(SRC, '/srv/vm1/vm1.qmp')
    assert argv[argv.index('-pidfile') + 1] == '/srv/vm1/vm1.pid'


def test_a_socket_moved_within_the_pidfiles_directory_gets_a_pidfile_of_its_own():
    # on storage both hosts see, the source QEMU holds /srv/vm1/vm1.pid locked
    argv = destination_argv(SRC, '/srv/vm1/vm1-hv2.qmp')
    assert argv[argv.index('-pidfile') + 1] == '/srv/vm1/vm1-hv2.pid'


class _Deadline(object):
    def remaining(self, floor=0.0):
        return 60.0


def _remote(monkeypatch, answer):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate import vm_migration
    r = vm_migration.Remote('ssh://vmfleet@hv2.example.com', _Deadline(), '/opt/vmfleet/venv/bin/python')
    calls = []

    def ssh(argv, what, timeout=None, check=True):
        calls.append(argv)
        if isinstance(answer, Exception):
            raise answer
        return answer
    monkeypatch.setattr(r, 'ssh', ssh)
    return r, calls


def test_the_destination_qmp_runs_qemu_qmp_with_the_destination_python_under_sudo(monkeypatch):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.vm_migration import REMOTE_QMP
    r, calls = _remote(monkeypatch, '[{"return": {"status": "inmigrate"}}]\n')
    assert r.qmp('/run/vm.qmp', [{'execute': 'query-status'}], 'asking') == [{'status': 'inmigrate'}]
    assert calls[0][:5] == ['sudo', '-n', '--', '/opt/vmfleet/venv/bin/python', '-c']
    assert 'qemu.qmp' in REMOTE_QMP and 'socket.socket' not in REMOTE_QMP


def test_a_qemu_error_names_the_command(monkeypatch):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import DestinationProblem
    r, _calls = _remote(monkeypatch, '[{"return": {}}, {"error": {"class": "GenericError", "desc": "no"}}]')
    with pytest.raises(DestinationProblem, match='refused migrate-incoming: no'):
        r.qmp('/run/vm.qmp', [{'execute': 'migrate-set-capabilities'}, {'execute': 'migrate-incoming'}], 'preparing')


def test_a_connect_error_is_handed_back(monkeypatch):
    r, _calls = _remote(monkeypatch, '{"connect-error": "Failed to establish connection"}')
    assert r.qmp('/run/vm.qmp', [{'execute': 'query-status'}], 'asking') == {'connect-error': 'Failed to establish connection'}
    assert r.alive('/run/vm.qmp') is None


@pytest.mark.parametrize('answer', [
    '{"import-error": "No module named \'qemu\'"}',
    'DestinationProblem',
])
def test_a_destination_python_without_qemu_qmp_fails_clearly(monkeypatch, answer):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import DestinationProblem
    if answer == 'DestinationProblem':
        answer = DestinationProblem("asking at hv2.example.com failed (1): sudo: /opt/vmfleet/venv/bin/python: command not found")
    r, _calls = _remote(monkeypatch, answer)
    with pytest.raises(DestinationProblem) as e:
        r.qmp('/run/vm.qmp', [{'execute': 'query-status'}], 'asking')
    assert '/opt/vmfleet/venv/bin/python' in e.value.message
    assert 'destination_python' in e.value.message and 'vmfleet.kvm.hypervisor' in e.value.message


def test_a_failure_after_the_switch_to_postcopy_stops_and_cancels_nothing():
    """Past the switch the destination holds the guest's newest state: undoing would lose the VM."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.vm_migration import QemuMigration

    class Touched(object):
        calls = []

        def __getattr__(self, name):
            def record(*args, **kw):
                self.calls.append(name)
            return record
    m = object.__new__(QemuMigration)
    m.postcopy_started = 'the guest dirtied memory faster than the link carried it'
    m.remote = Touched()
    vm = Touched()
    m._undo(vm, started=True)
    assert Touched.calls == []
