"""Live migration's pure parts: the destination host a URI names, the command line a raw QEMU's
destination starts with, the SSH remote that starts it, the engine's postcopy policy."""

import json
import subprocess

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.process import destination_argv
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.remote import Remote
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.addresses import destination_host
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import DestinationProblem, InvalidArgument

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
    r = Remote('ssh://vmfleet@hv2.example.com', _Deadline(), '/opt/vmfleet/venv/bin/python')
    calls = []

    def ssh(argv, what, timeout=None, check=True, stdin=None, secrets=()):
        calls.append(argv)
        if isinstance(answer, Exception):
            raise answer
        return answer
    monkeypatch.setattr(r, 'ssh', ssh)
    return r, calls


def test_the_destination_qmp_runs_qemu_qmp_with_the_destination_python_under_sudo(monkeypatch):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.remote import REMOTE_QMP
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
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.migrator import QemuMigrator
    from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.vm_migration import Progress

    class Touched(object):
        calls = []

        def __getattr__(self, name):
            def record(*args, **kw):
                self.calls.append(name)
            return record
    m = object.__new__(QemuMigrator)
    progress = Progress(dict(postcopy=True), _Deadline())
    progress.switched('the guest dirtied memory faster than the link carried it')
    m.remote = Touched()
    vm = Touched()
    m._undo(vm, True, progress)
    assert Touched.calls == []


class _Timed(object):
    timeout = 100.0

    def expired(self):
        return False


def test_postcopy_is_due_when_the_guest_dirties_faster_than_the_link_and_only_once():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.vm_migration import Progress
    p = Progress(dict(postcopy=True, auto_converge=False), _Timed())
    fast = dict(memory_iteration=3, memory_dirty_rate=10000, memory_page_size=4096, memory_bps=16 << 20)
    assert p.postcopy_due(dict(fast, memory_iteration=1)) is None
    why = p.postcopy_due(fast)
    assert why.startswith('pass 3')
    p.switched(why)
    assert p.postcopy_due(fast) is None and not p.out_of_time()
    assert p.mode({})[0] == 'postcopy'
    assert Progress(dict(postcopy=False, auto_converge=False), _Timed()).postcopy_due(fast) is None


def test_copied_disks_are_followed_through_the_blockdev_chain_with_escaped_commas():
    src = SRC[:-1] + ['driver=file,filename=/srv/vm1/root,,a.qcow2,node-name=root-file',
                      '-blockdev', 'driver=qcow2,file=root-file,node-name=root',
                      '-device', 'virtio-blk-pci,drive=root,id=vda']
    moved = [Disk('vda', 'root', '/new/root,a.qcow2', 'qcow2', 1 << 30, False)]
    argv = destination_argv(src, '/run/vms/vm1.qmp', moved)
    assert 'driver=file,filename=/new/root,,a.qcow2,node-name=root-file' in argv


def test_a_copied_disk_the_command_line_does_not_name_is_refused():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmfleetError
    with pytest.raises(VmfleetError, match='vdz'):
        destination_argv(SRC, '/run/vms/vm1.qmp', [Disk('vdz', 'nope', '/new/x.qcow2', 'qcow2', 1, False)])


@pytest.mark.parametrize('uri', [
    'ssh://-oProxyCommand=touch${IFS}/tmp/pwned@hv2',
    'ssh://vmfleet@-oProxyCommand=x',
    'ssh://vm fleet@hv2',
    'ssh://vmfleet@hv2;reboot',
])
def test_an_ssh_destination_whose_user_or_host_is_not_plain_is_refused_before_any_command(uri, monkeypatch):
    import subprocess
    monkeypatch.setattr(subprocess, 'run', lambda *a, **kw: pytest.fail('a command ran'))
    with pytest.raises(InvalidArgument) as e:
        Remote(uri, _Deadline())
    assert 'not a plain user name' in e.value.message or 'not a host name' in e.value.message


def test_ssh_gets_the_destination_after_double_dash_and_the_command_line_on_stdin(monkeypatch):
    import subprocess
    seen = {}

    class Done(object):
        returncode = 0
        stdout = b''
        stderr = b''

    def run(cmd, **kw):
        seen.update(cmd=cmd, input=kw.get('input'))
        return Done()
    monkeypatch.setattr(subprocess, 'run', run)
    r = Remote('ssh://vmfleet@hv2.example.com:2222', _Deadline(), '/usr/bin/python3')
    r.launch(['qemu-system-x86_64', '-object', 'secret,id=s0,data=TOPSECRET', '-m', '256'], 'starting')
    cmd = seen['cmd']
    assert cmd[cmd.index('--') + 1] == 'vmfleet@hv2.example.com' and cmd.index('-p') < cmd.index('--')
    assert not any('TOPSECRET' in a for a in cmd) and 'TOPSECRET' in seen['input'].decode()
    payload = json.loads(seen['input'])
    assert payload['argv'][2] == 'secret,id=s0,file=@vmfleet-secret-0@' and payload['secrets'] == ['TOPSECRET']


@pytest.mark.parametrize('opt, secret', [
    ('secret,id=s0,data=TOPSECRET', 'TOPSECRET'),
    ('secret,id=s0,format=base64,data=VE9Q,,U0VD', 'VE9Q,,U0VD'),
    ('{"qom-type": "secret", "id": "s0", "data": "TOPSECRET"}', 'TOPSECRET'),
])
def test_secret_objects_are_redacted(opt, secret):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.process import redact_argv
    argv = redact_argv(['qemu', '-object', opt, '-name', 'data=kept'])
    assert secret not in ' '.join(argv) and '********' in argv[2] and argv[4] == 'data=kept'


def test_passwords_and_rbd_keys_are_redacted():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.process import redact_argv
    argv = redact_argv(['qemu', '-iscsi', 'user=u,password=PW1', '-drive', 'file=rbd:p/i:id=a:key=K2:conf=/c,if=virtio',
                        '-spice', 'port=5900,password=PW3'])
    assert not any(s in ' '.join(argv) for s in ('PW1', 'K2', 'PW3'))
    assert 'conf=/c' in argv[4]


@pytest.mark.parametrize('uri', ['qemu+ssh://hv2/system?command=evil', 'ssh://hv2#x', 'qemu+ssh://-x@hv2/system'])
def test_uris_from_the_inventory_take_no_query_fragment_or_odd_user(uri):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common import addresses
    with pytest.raises(InvalidArgument):
        addresses.parse(uri, plain=True)


def test_a_password_switch_is_no_secret():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.process import redact_argv, secret_values
    argv = ['qemu', '-vnc', ':0,password=on', '-qmp', 'unix:/run/x.qmp,server=on,wait=off']
    assert redact_argv(argv) == argv and secret_values(argv) == []


@pytest.mark.parametrize('host', [
    {'name': 'hv2', 'address': '10.0.0.2', 'user': '-oProxyCommand=touch /tmp/x'},
    {'name': 'hv2', 'address': '-oProxyCommand=x'},
    {'name': 'hv2', 'ssh_uri': 'ssh://hv2?x=1'},
    {'name': 'hv2', 'libvirt_uri': 'qemu+ssh://hv2/system?command=/bin/evil'},
])
def test_an_evacuation_destination_from_the_inventory_is_checked(host):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import evacuation as ev
    with pytest.raises(InvalidArgument):
        ev.host_address(host)


def test_an_ipv6_destination_is_bracketed_in_its_uris():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import evacuation as ev
    h = ev.host_address({'name': 'hv2', 'address': 'fd00::2', 'user': 'vmfleet'})
    assert h['ssh_uri'] == 'ssh://vmfleet@[fd00::2]' and h['libvirt_uri'] == 'qemu+ssh://vmfleet@[fd00::2]/system'
    assert destination_host(h['ssh_uri']) == 'fd00::2'


def test_a_raw_qemu_of_another_user_is_not_moved_to_run_as_root_at_the_destination():
    """The destination's QEMU starts through sudo: a QEMU of an unprivileged user would gain root there."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.migrator import QemuMigrator
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing

    class Vm(object):
        name = 'web01'

        @staticmethod
        def relaunch_record():
            return dict(argv=['/usr/bin/qemu-system-x86_64', '-name', 'web01'], uid=65534, gid=65534)
    m = object.__new__(QemuMigrator)
    m.vm = Vm()
    with pytest.raises(CapabilityMissing) as e:
        m.plan()
    assert 'uid 65534' in e.value.message and 'as root' in e.value.message


def test_a_command_sudo_refuses_the_user_names_the_sudoers_lines(monkeypatch):
    class Refused(object):
        returncode = 1
        stdout = b''
        stderr = b'sudo: a password is required\n'
    monkeypatch.setattr(subprocess, 'run', lambda cmd, **kw: Refused())
    r = Remote('ssh://vmfleet@hv2.example.com', _Deadline(), '/opt/vmfleet/venv/bin/python')
    with pytest.raises(DestinationProblem) as e:
        r.ssh(r.sudo + ['qemu-img', 'create', '-q', '-f', 'qcow2', '/srv/a.qcow2', '1024'], 'creating /srv/a.qcow2')
    assert 'sudo refused vmfleet the command qemu-img' in e.value.msg and 'a password is required' in e.value.msg
    assert 'VMFLEET_MIGRATE' in e.value.hint and '/opt/vmfleet/venv/bin/python' in e.value.hint
