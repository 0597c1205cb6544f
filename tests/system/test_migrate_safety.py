"""vm_migrate's root-safety on real raw QEMU VMs (issue #34, holes 4 and 5), through
ansible-playbook: an SSH user that would be an option of ssh is refused before any command runs,
and a secret on the source QEMU's command line reaches neither the result, the output, nor the
destination's process list. Two hypervisors of the session's simulated fleet."""

import os
import subprocess

import pytest

from rig.accel import detect_accel
from rig.ansible_run import run_tasks
from rig.hypervisors import FleetView, HostQemuGuest
from rig.qmp import qmp

PWNED = '/tmp/vmfleet-pwned-by-migrate'
MARKER = 'vmfleet-secret-marker-5f3a9c'


@pytest.fixture(scope='module')
def fleet(session_fleet):
    """Two hypervisors of the session fleet, no VMs of the rig's own; the tests add theirs."""
    with FleetView(session_fleet, 'safety', 2) as f:
        f.write_inventory()
        yield f


def _raw_vm(host, name, extra=()):
    """A raw QEMU VM of ``host`` whose command line ends with ``extra``, booted."""
    vm = HostQemuGuest(host, host.path('vms', name), name, detach=False, memory_mib=256, accel=detect_accel())
    vm._argv = vm._build_argv() + list(extra)
    os.makedirs(host.path('vms'), exist_ok=True)
    os.chmod(host.path('vms'), 0o755)
    host.vms.append(vm)
    vm.start()
    vm.wait_booted(300)
    return vm


def _netns_cmdlines(host):
    """The command lines of every process in ``host``'s network namespace."""
    pids = subprocess.run(['ip', 'netns', 'pids', host.ns], capture_output=True, text=True, check=True).stdout.split()
    out = []
    for pid in pids:
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                out.append(f.read().replace(b'\0', b' ').decode('utf-8', 'replace'))
        except OSError:
            pass
    return out


def test_an_ssh_user_that_is_an_ssh_option_is_refused_and_nothing_runs(fleet):
    hv1, hv2 = fleet.hosts
    vm = _raw_vm(hv1, '%s-raw1' % hv1.ns)
    if os.path.exists(PWNED):
        os.unlink(PWNED)
    uri = 'ssh://-oProxyCommand=touch${IFS}%s@%s' % (PWNED, hv2.address)
    task = {'vmfleet.kvm.vm_migrate': {'qmp_socket': vm.qmp_socket, 'destination_uri': uri, 'timeout': 60}}
    (r,), proc = run_tasks([task], inventory=fleet.inventory, hosts=hv1.name)
    log = proc.stdout + proc.stderr
    assert r.get('failed') is True and r.get('error') == 'InvalidArgument', r
    # urlsplit reads the host up to the first '/': the refusal names the user or the host it found
    assert '-oProxyCommand' in r['msg'] and ('not a plain user name' in r['msg'] or 'not a host name' in r['msg']), r['msg']
    assert 'Traceback' not in log
    assert not os.path.exists(PWNED), 'a command from the URI ran'
    assert qmp(vm.qmp_socket, 'query-status')['status'] == 'running'


def test_a_secret_on_the_command_line_is_in_no_result_output_or_destination_process(fleet):
    hv1, hv2 = fleet.hosts
    vm = _raw_vm(hv1, '%s-raw2' % hv1.ns, ['-object', 'secret,id=vmfleet-s0,data=%s' % MARKER])
    dest_sock = '/var/lib/vmfleet/%s.qmp' % vm.name
    task = {'vmfleet.kvm.vm_migrate': {'qmp_socket': vm.qmp_socket,
                                       'destination_uri': 'ssh://vmfleet@%s' % hv2.address,
                                       'destination_qmp_socket': dest_sock, 'timeout': 600}}
    (r,), proc = run_tasks([task], inventory=fleet.inventory, hosts=hv1.name, extra_args=['-vvv'])
    log = proc.stdout + proc.stderr
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert MARKER not in str(r) and MARKER not in log, 'the secret reached the result or the output'
    assert any('data=********' in a for a in r['destination_argv']), r['destination_argv']
    vm.proc.wait(timeout=60)  # the source QEMU quit
    at_hv2 = hv2.path('vmfleet', vm.name + '.qmp')
    assert qmp(at_hv2, 'query-status')['status'] == 'running'
    # the destination QEMU was started with the secret (from a file it read, now gone), not in its argv
    assert qmp(at_hv2, 'qom-list', path='/objects/vmfleet-s0'), 'no secret object at the destination'
    cmdlines = _netns_cmdlines(hv2)
    assert any(vm.name in c for c in cmdlines), cmdlines
    assert not any(MARKER in c for c in cmdlines), [c for c in cmdlines if MARKER in c]
    try:
        qmp(at_hv2, 'quit')
    except Exception:  # QEMU closes its monitor as it quits
        pass
