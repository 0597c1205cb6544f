"""host_maintenance's evacuate and return phases across three simulated hypervisors
(tests/rig/hypervisors.py), over real SSH: the rolling playbook vmfleet.kvm.host_evacuate
moves hv1's libvirt domain and raw QEMU VM live to hv2 and hv3, runs the maintenance tasks
on hv1 with nothing running there, and brings both back; the guests count on throughout."""

import json
import os

import pytest
import yaml

from rig.accel import detect_accel
from rig.ansible_run import run_playbook
from rig.hypervisors import FleetView
from rig.qmp import qmp
from rig.targets import Target, assert_consecutive, host_targets

# a moved raw QEMU's QMP socket at its destination: each host's own directory (the rig's
# directory, where the sockets are at home, is shared by all hosts)
DEST_QMP_DIR = '/var/lib/vmfleet'


@pytest.fixture(scope='module')
def fleet(session_fleet):
    """Three hypervisors of the session fleet (its inventory names only them); hv1 runs a libvirt
    domain and a raw QEMU VM (disks on the rig's shared storage), hv2 and hv3 are where they go."""
    with FleetView(session_fleet, 'evacuate', 3,
                   host_vars=dict((h.name, {'host_maintenance_destination_qmp_dir': DEST_QMP_DIR})
                                  for h in session_fleet.hosts[:3])) as f:
        h = f.hosts[0]
        for backend, name in (('libvirt', 'lv1'), ('qemu', 'raw2')):
            h.add_vm(backend, '%s-%s' % (h.ns, name), 256, detect_accel(), False)
        for vm in h.vms:
            vm.wait_booted(300)
        f.write_inventory()
        yield f


def _unix_sockets(host):
    """The paths of the unix sockets bound in the host's network namespace."""
    return host.run(['cat', '/proc/net/unix']).stdout


def _listed(host):
    return host.virsh('list', '--name').stdout.split()


def test_the_rolling_evacuation_moves_every_vm_away_and_back_with_no_guest_downtime(fleet, tmp_path):
    hv1, hv2, hv3 = fleet.hosts
    lv, raw = hv1.vms
    targets = host_targets(hv1)
    starts = dict((t.vm.name, t.serial_size()) for t in targets)
    befores = dict((t.vm.name, t.wait_counter(1)) for t in targets)
    # the operator's maintenance: what runs on each host while its VMs are away
    during = tmp_path / 'during'
    during.mkdir()
    tasks = tmp_path / 'maintenance.yml'
    tasks.write_text(yaml.safe_dump([
        {'name': 'the libvirt domains running here', 'ansible.builtin.command': 'virsh -c qemu:///system list --name',
         'register': 'listed', 'changed_when': False},
        {'name': 'the unix sockets bound here', 'ansible.builtin.slurp': {'src': '/proc/net/unix'}, 'register': 'unix'},
        {'name': 'the evacuation report', 'ansible.builtin.slurp': {'src': '/var/lib/vmfleet/reports/host_maintenance.json'},
         'register': 'report'},
        {'name': 'hand them to the test', 'delegate_to': 'localhost', 'become': False,
         'vars': {'ansible_connection': 'local'},
         'ansible.builtin.copy': {'dest': str(during) + '/{{ inventory_hostname }}.json', 'mode': '0600',
                                  'content': "{{ {'domains': listed.stdout_lines, 'unix': unix.content | b64decode,"
                                             " 'report': (report.content | b64decode | from_json)"
                                             " if report.content is defined else none} | to_json }}"}}]))

    proc = run_playbook('vmfleet.kvm.host_evacuate', inventory=fleet.inventory, timeout=1800,
                        extra_vars={'vmfleet_maintenance_tasks': str(tasks)}, extra_args=['-v'])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and 'Traceback' not in out, out[-6000:]

    # while hv1 was maintained, nothing of it ran there, and its evacuation says where each VM went
    seen = json.loads((during / (hv1.name + '.json')).read_text())
    assert seen['domains'] == [], seen['domains']
    assert raw.qmp_socket not in seen['unix'] and os.path.basename(raw.qmp_socket) not in seen['unix']
    moved = dict((r['vm'], r) for r in seen['report']['vms'])
    assert set(moved) == {lv.name, raw.name}, moved
    for r in moved.values():
        assert r['status'] == 'ok' and r['changed'] and not r.get('saved_instead'), r
        assert isinstance(r['downtime_ms'], int) and r['bytes'] > 0, r
    # spread by free memory: two VMs of the same size on two hosts, one each
    assert {r['destination'] for r in moved.values()} == {hv2.name, hv3.name}, moved
    assert moved[lv.name]['route'] == 'libvirt-p2p' and moved[raw.name]['route'] == 'qemu-incoming', moved
    # hv2 and hv3 had nothing to move and were maintained too
    for h in (hv2, hv3):
        assert json.loads((during / (h.name + '.json')).read_text())['report']['vms'] == []

    # both run on hv1 again (the raw QEMU in hv1's namespace, on its old socket), nowhere else
    assert hv1.virsh('domstate', lv.name).stdout.strip() == 'running'
    assert _listed(hv2) == [] and _listed(hv3) == []
    assert qmp(raw.qmp_socket, 'query-status')['status'] == 'running'
    assert raw.qmp_socket in _unix_sockets(hv1)
    assert raw.qmp_socket not in _unix_sockets(hv2) + _unix_sockets(hv3)
    assert not os.path.exists(hv1.path('vmfleet', 'save', 'evacuated-vms.json'))
    # the guests counted on through both moves, never back, never skipping; the disks hold every write
    for t in targets:
        last = t.counter()
        t.wait_counter(last + 3, timeout=180)
        counters = t.counters_after(starts[t.vm.name])
        assert counters[0] <= befores[t.vm.name] + 1, counters[:5]
        assert_consecutive(counters)
        t.wait_disk_counter('root', last + 1, timeout=120)


def test_a_vm_no_destination_has_room_for_is_saved_instead_and_the_return_restores_it(fleet, tmp_path):
    """hv2 says it has 1200 MiB free and keeps 1024 for itself: neither 256 MiB VM fits. Both are
    saved instead, the report saying why, and the return phase restores them."""
    hv1, hv2, hv3 = fleet.hosts
    lv, raw = hv1.vms
    targets = host_targets(hv1)
    play = tmp_path / 'play.yml'

    def phase(name, check=False):
        play.write_text(yaml.safe_dump([{
            'hosts': hv1.name, 'gather_facts': False,
            'roles': [{'role': 'vmfleet.kvm.host_maintenance', 'vars': {
                'host_maintenance_phase': name,
                'host_maintenance_destinations': [{'name': hv2.name, 'address': hv2.address, 'user': 'vmfleet',
                                                   'free_mib': 1200}],
                'host_maintenance_qmp_sockets': [raw.qmp_socket]}}]}]))
        proc = run_playbook(play, inventory=fleet.inventory, timeout=900, check=check, extra_args=['-v'])
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and 'Traceback' not in out, out[-6000:]
        if check:
            return out
        return json.loads(open(hv1.path('vmfleet', 'reports', 'host_maintenance.json')).read())

    before = dict((t.vm.name, t.wait_counter(1)) for t in targets)
    # check mode: says what it would do, does nothing
    out = phase('evacuate', check=True)
    assert 'saved instead of migrated' in out and 'changed=1' in out, out[-3000:]
    assert hv1.virsh('domstate', lv.name).stdout.strip() == 'running'
    assert qmp(raw.qmp_socket, 'query-status')['status'] == 'running'
    report = phase('evacuate')
    vms = dict((r['vm'], r) for r in report['vms'])
    for name in (lv.name, raw.name):
        r = vms[name]
        assert r['status'] == 'ok' and r['changed'] and r['destination'] is None, r
        assert 'no destination has 256 MiB free' in r['saved_instead'] and 'saved instead' in r['msg'], r
        assert r['image'].endswith('%s.vmstate' % name) and r['state_after'] in ('shutoff', 'unreachable'), r
    assert hv1.virsh('domstate', lv.name).stdout.strip() == 'shut off'
    assert _listed(hv2) == []
    record = json.loads(open(hv1.path('vmfleet', 'save', 'saved-vms.json')).read())
    assert sorted(v['vm'] for v in record['vms']) == sorted([lv.name, raw.name])
    # a re-run finds them done (the raw QEMU's socket no longer answers: not a failure)
    report = phase('evacuate')
    vms = dict((r['vm'], r) for r in report['vms'])
    assert set(vms) == {lv.name, raw.name}, vms
    assert all(r['status'] == 'ok' and not r['changed'] and 'earlier run' in r['msg'] for r in vms.values()), vms

    report = phase('return')
    vms = dict((r['vm'], r) for r in report['vms'])
    assert all(vms[n]['status'] == 'ok' and vms[n]['changed'] for n in (lv.name, raw.name)), vms
    assert not os.path.exists(hv1.path('vmfleet', 'save', 'saved-vms.json'))
    # each runs on from where it was saved
    for t in targets:
        t.wait_counter(before[t.vm.name] + 2, timeout=180)


def test_a_vm_whose_migration_fails_runs_on_until_it_is_saved_instead(fleet, tmp_path):
    """hv2's libvirtd is down: the domain's migration to it fails (hv2 answers over SSH, so it was
    given the VM), the domain still runs at hv1 and is saved instead, the report naming the failure;
    the return restores it."""
    hv1, hv2, hv3 = fleet.hosts
    lv = hv1.vms[0]
    t = Target(lv, 'libvirt')
    play = tmp_path / 'play.yml'

    def phase(name):
        play.write_text(yaml.safe_dump([{
            'hosts': hv1.name, 'gather_facts': False,
            'roles': [{'role': 'vmfleet.kvm.host_maintenance', 'vars': {
                'host_maintenance_phase': name, 'host_maintenance_vms': [lv.name], 'host_maintenance_timeout': 300,
                'host_maintenance_destinations': [hv2.name]}}]}]))
        proc = run_playbook(play, inventory=fleet.inventory, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and 'Traceback' not in out, out[-6000:]
        return dict((r['vm'], r) for r in json.loads(open(hv1.path('vmfleet', 'reports', 'host_maintenance.json')).read())['vms'])

    before = t.wait_counter(1)
    hv2.stop_libvirtd()
    try:
        r = phase('evacuate')[lv.name]
    finally:
        hv2.start_libvirtd()
    assert r['status'] == 'ok' and r['changed'] and r['destination'] is None, r
    assert r['saved_instead'].startswith('its migration to %s failed' % hv2.name) and 'unreachable' in r['saved_instead'], r
    assert hv1.virsh('domstate', lv.name).stdout.strip() == 'shut off' and _listed(hv2) == []
    r = phase('return')[lv.name]
    assert r['status'] == 'ok' and r['changed'], r
    t.wait_counter(before + 2, timeout=180)
