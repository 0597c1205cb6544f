"""Quiesce without a VM: the agent's socket found on a QEMU command line, the agent
client against a stand-in agent, and the thaw watchdog's three endings (told the
module thawed, the module gone, the timer)."""

import json
import time

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import guest_agent
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing, OperationTimeout
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot import quiesce

from rig.qga import StandInAgent

FREEZABLE = {'version': '7.2', 'supported_commands': [{'name': 'guest-fsfreeze-freeze', 'enabled': True},
                                                      {'name': 'guest-fsfreeze-thaw', 'enabled': True}]}


@pytest.fixture
def agent(tmp_path):
    a = StandInAgent(str(tmp_path / 'qga.sock'), answers={
        'guest-info': FREEZABLE, 'guest-fsfreeze-freeze': 2, 'guest-fsfreeze-thaw': 2,
        'guest-fsfreeze-status': 'thawed', 'guest-exec': {'error': {'class': 'GenericError', 'desc': 'blocked'}}})
    yield a
    a.close()


def test_agent_socket_found_on_the_command_line(tmp_path):
    sock = tmp_path / 'qga.sock'
    sock.write_text('')
    argv = ['qemu-system-x86_64', '-chardev', 'socket,id=other,path=/nonexistent', '-chardev',
            'socket,id=qga0,path=%s,server=on,wait=off' % sock, '-device', 'virtio-serial',
            '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0']
    assert guest_agent.socket_from_argv(argv) == str(sock)
    as_json = argv[:-1] + [json.dumps({'driver': 'virtserialport', 'chardev': 'qga0', 'name': 'org.qemu.guest_agent.0'})]
    assert guest_agent.socket_from_argv(as_json) == str(sock)
    # another port's chardev, or none at all, is no agent
    assert guest_agent.socket_from_argv(argv[:-1] + ['virtserialport,chardev=qga0,name=com.example.0']) is None
    assert guest_agent.socket_from_argv(['qemu-system-x86_64']) is None


def test_agent_client_speaks_the_protocol(agent):
    a = guest_agent.GuestAgent(agent.path)
    assert a.check(5)['version'] == '7.2'
    assert a.freeze(5) == 2 and a.status(5) == 'thawed' and a.thaw(5) == 2
    with pytest.raises(guest_agent.AgentError, match='blocked'):
        a.execute('guest-exec', 5)
    # every exchange starts with its own sync
    assert agent.seen.count('guest-sync-delimited') == 5


def test_agent_client_refusals(tmp_path):
    silent = StandInAgent(str(tmp_path / 'silent.sock'))
    blocked = StandInAgent(str(tmp_path / 'blocked.sock'), answers={'guest-info': dict(FREEZABLE, supported_commands=[
        {'name': 'guest-fsfreeze-freeze', 'enabled': False}])})
    try:
        with pytest.raises(OperationTimeout, match='did not answer'):
            guest_agent.GuestAgent(silent.path).check(0.5)
        with pytest.raises(CapabilityMissing, match='guest-fsfreeze-freeze'):
            guest_agent.GuestAgent(blocked.path).check(5)
    finally:
        silent.close()
        blocked.close()
    with pytest.raises(CapabilityMissing, match='cannot reach the QEMU guest agent'):
        guest_agent.GuestAgent(str(tmp_path / 'none.sock')).check(1)


class _Vm:
    """A raw QEMU VM's handle as quiesce sees it, its agent the stand-in."""

    name = 'vm1'

    def __init__(self, path):
        self.agent = guest_agent.GuestAgent(path)
        self.path = path

    def fs_freeze(self, deadline):
        return self.agent.freeze(deadline.remaining(1.0))

    def fs_thaw(self):
        return self.agent.thaw(5)

    def thaw_spec(self):
        return dict(backend='qemu', socket=self.path)


def _wait_thaws(agent, n, timeout):
    end = time.monotonic() + timeout
    while agent.seen.count('guest-fsfreeze-thaw') < n and time.monotonic() < end:
        time.sleep(0.05)
    return agent.seen.count('guest-fsfreeze-thaw')


def test_quiesced_thaws_and_the_watchdog_stays_quiet(agent):
    with quiesce.quiesced(_Vm(agent.path), True, Deadline(60)) as info:
        assert info['filesystems'] == 2
        assert agent.seen.count('guest-fsfreeze-freeze') == 1 and 'guest-fsfreeze-thaw' not in agent.seen
    assert info['frozen_ms'] > 0
    # the module's own thaw, and no second one from the watchdog it told
    assert _wait_thaws(agent, 2, 1.5) == 1


def test_watchdog_thaws_when_the_module_is_gone(agent):
    dog = quiesce.ThawWatchdog(_Vm(agent.path), 60)
    t0 = time.monotonic()
    dog.release(thawed=False)  # what the kernel does to the pipe of a dead module
    assert _wait_thaws(agent, 1, 10) == 1
    assert time.monotonic() - t0 < 10
    assert dog.proc.wait(10) == 0


def test_watchdog_thaws_when_its_time_is_up(agent):
    dog = quiesce.ThawWatchdog(_Vm(agent.path), 1.0)
    assert _wait_thaws(agent, 1, 10) == 1
    assert dog.proc.wait(10) == 0
    dog.release(thawed=True)  # too late to matter: it has thawed already
