"""A libvirt domain with a snapshot (and an instant one) moves between two simulated hypervisors
(shared storage) with vm_migrate, through ansible-playbook over SSH: its snapshots are listed at the
destination and the reverts there go back in time; copied storage is refused naming the snapshot; the destination's
libvirtd killed mid-migration leaves the domain at the source with its snapshot listed and revertible. Then the
operator's chain: pre_upgrade_snapshot, host_evacuate (the VMs move live, none is saved, and come
back; a raw QEMU VM's instant snapshot with them), snapshot_rollback (both guests go back),
snapshot_cleanup, the instant snapshot's revert at home, and its revert at the destination of a vm_migrate."""

import json
import os
import signal
import time

import yaml

import pytest

from rig.accel import detect_accel
from rig.ansible_run import read_results, run_playbook, start_tasks
from rig.hypervisors import FleetView
from rig.targets import Target, assert_consecutive, host_targets

SNAP = 's-mig'
# a moved raw QEMU's QMP socket at its destination: each host's own directory (the rig's directory,
# where the sockets are at home, is shared by all hosts)
DEST_QMP_DIR = '/var/lib/vmfleet'
MEMORY_DIR = '/var/lib/vmfleet/snapshots'


@pytest.fixture(scope='module')
def fleet(session_fleet):
    """hv1 and hv2 of the session fleet, with one all-qcow2 libvirt domain on hv1 (so libvirt's own
    snapshot API takes the snapshot, and libvirt holds its metadata); its disks are under the rig's
    directory, which both hosts see."""
    with FleetView(session_fleet, 'snapmig', 2,
                   host_vars=dict((h.name, {'host_maintenance_destination_qmp_dir': DEST_QMP_DIR})
                                  for h in session_fleet.hosts[:2])) as f:
        h = f.hosts[0]
        h.add_vm('libvirt', '%s-snap1' % h.ns, 256, detect_accel(), False,
                 disks=(('root', 'qcow2', 64), ('data', 'qcow2', 64)))
        f.wait_booted([h])
        f.write_inventory()
        yield f


def _listed(host, name):
    return sorted(host.virsh('snapshot-list', name, '--name').stdout.split())


def _memory_dir(host):
    """The instant snapshots' directory (the default memory_dir) on ``host``: its own, made as an operator does."""
    host.run(['mkdir', '-p', '-m', '0700', MEMORY_DIR])


def _moved(vm, src, dst):
    """The rig's record: ``vm`` runs at ``dst`` now (torn down there, driven with its virsh)."""
    src.vms.remove(vm)
    vm.uri = dst.uri
    dst.vms.append(vm)


def test_a_domain_with_a_snapshot_moves_and_reverts_at_the_destination(fleet):
    hv1, hv2 = fleet.hosts
    vm = hv1.vms[0]
    t = Target(vm, 'libvirt')
    t.wait_counter(3)
    before = t.counter()
    (r,), log = fleet.play(hv1, [{'vmfleet.kvm.snapshot': {'domain': vm.name, 'name': SNAP}}])
    after = t.counter()
    assert r.get('route') == 'libvirt', (r, log[-2000:])
    assert _listed(hv1, vm.name) == [SNAP]
    # and an instant one (its memory file and manifest in memory_dir, each host's own; libvirt knows nothing of it)
    _memory_dir(hv1)
    inst = [t.counter()]
    (r,), log = fleet.play(hv1, [{'vmfleet.kvm.snapshot': {'domain': vm.name, 'name': 'inst', 'mode': 'instant'}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    inst.append(t.counter())
    ran_to = t.wait_counter(inst[1] + 3)

    (r,), log = fleet.play(hv1, [{'vmfleet.kvm.vm_migrate': {
        'domain': vm.name, 'destination_uri': hv2.ssh_uri, 'timeout': 600}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert r['snapshots'] == [SNAP] and r['snapshots_defined'] == [SNAP], r
    assert r['snapshot_files'] == ['inst'] and r['snapshots_carried'] == ['inst'], r
    left = hv1.run(['sh', '-c', 'ls %s 2>/dev/null; true' % MEMORY_DIR]).stdout.split()
    assert not [f for f in left if vm.name in f], left
    assert hv1.domstate(vm.name) is None and hv2.domstate(vm.name) == 'running'
    _moved(vm, hv1, hv2)
    # the metadata came along, the current snapshot current again
    assert _listed(hv2, vm.name) == [SNAP]
    assert hv2.virsh('snapshot-current', vm.name, '--name').stdout.strip() == SNAP

    # the instant snapshot (the later one) is listed there, complete, and its revert there goes back to its moment
    (r,), log = fleet.play(hv2, [{'vmfleet.kvm.snapshot_info': {'domain': vm.name, 'name': 'inst'}}])
    assert [(s['name'], s['mode'], s['consistent']) for s in r['snapshots']] == [('inst', 'instant', True)], r
    offset, last = t.serial_size(), t.counter()
    (r,), log = fleet.play(hv2, [{'vmfleet.kvm.snapshot': {'domain': vm.name, 'name': 'inst', 'mode': 'instant',
                                                           'state': 'reverted'}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    resumed = t.counters_after_going_back(offset, last)
    assert inst[0] <= resumed[0] - 1 <= inst[1] + 1, (inst, resumed)

    # then the revert of the first, earlier still, goes back to its moment
    offset, last = t.serial_size(), t.counter()
    (r,), log = fleet.play(hv2, [{'vmfleet.kvm.snapshot': {'domain': vm.name, 'name': SNAP, 'state': 'reverted'}}])
    assert r.get('changed') is True and r.get('state') == 'running', (r, log[-3000:])
    resumed = t.counters_after_going_back(offset, last)
    assert before <= resumed[0] - 1 <= after + 1 and resumed[0] < ran_to, (before, after, resumed)

    (r,), log = fleet.play(hv2, [{'vmfleet.kvm.snapshot': {'domain': vm.name, 'name': 'inst', 'mode': 'instant',
                                                           'state': 'absent'}}])
    assert r.get('changed') is True, (r, log[-3000:])


def test_copied_storage_is_refused_naming_the_snapshot(fleet):
    hv1, hv2 = fleet.hosts
    vm = hv2.vms[0]
    (r,), log = fleet.play(hv2, [{'vmfleet.kvm.vm_migrate': {
        'domain': vm.name, 'destination_uri': hv1.ssh_uri, 'storage': 'copy',
        'destination_dir': '/var/lib/libvirt/images', 'timeout': 120}}])
    assert r.get('failed') is True and r.get('error') == 'InvalidArgument', r
    assert SNAP in r['msg'] and 'nothing was changed' in r['msg'].lower(), r['msg']
    assert hv2.domstate(vm.name) == 'running' and hv1.domstate(vm.name) is None
    assert _listed(hv2, vm.name) == [SNAP]


def test_the_destination_libvirtd_killed_leaves_the_domain_at_the_source_with_its_snapshot(fleet, tmp_path):
    hv1, hv2 = fleet.hosts
    vm = hv2.vms[0]
    t = Target(vm, 'libvirt')
    # 1 MiB/s: the migration runs long enough for the kill, after the metadata was taken off
    proc, out = start_tasks([{'vmfleet.kvm.vm_migrate': {
        'domain': vm.name, 'destination_uri': hv1.ssh_uri, 'bandwidth_mib_s': 1, 'timeout': 300}}],
        str(tmp_path), inventory=fleet.inventory, hosts=hv2.name)
    try:
        hv1.wait_incoming(vm.name, proc)
        # killed once the source streams: QEMU then refuses its own load of the snapshot (the revert below
        # goes through libvirt's); killed before, as a quiet host often did, the revert never met that
        end = time.monotonic() + 120
        while 'Memory processed' not in hv2.virsh('domjobinfo', vm.name, check=False).stdout:
            assert proc.poll() is None and time.monotonic() < end, 'the migration never streamed'
            time.sleep(0.1)
        # the migration runs: libvirt migrates no domain with snapshot metadata, so it is off the source now
        assert _listed(hv2, vm.name) == []
        hv1.stop_libvirtd()
        text = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if hv1.virsh('version', check=False).returncode != 0:
            hv1.start_libvirtd()
    (r,) = read_results(out, text)
    assert r.get('failed') is True and r['source_state'] == 'running', r
    assert r.get('snapshots_defined') == [SNAP], r
    # the domain runs on at the source, its snapshot listed there again
    assert hv2.domstate(vm.name) == 'running'
    assert _listed(hv2, vm.name) == [SNAP]
    t.wait_counter(t.counter() + 2, timeout=120)
    # and revertible there: the guest goes back to the snapshot's moment
    offset, last = t.serial_size(), t.counter()
    (r,), log = fleet.play(hv2, [{'vmfleet.kvm.snapshot': {'domain': vm.name, 'name': SNAP, 'state': 'reverted'}}])
    assert r.get('changed') is True and r.get('state') == 'running', (r, log[-3000:])
    resumed = t.counters_after_going_back(offset, last)
    assert resumed[0] < last, (last, resumed)


def _playbook(fleet, name, **extra_vars):
    proc = run_playbook(name, inventory=fleet.inventory, timeout=1800, extra_vars=extra_vars, extra_args=['-v'])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and 'Traceback' not in out, out[-6000:]
    return out


def test_the_fleet_chain_snapshot_evacuate_return_rollback_cleanup(fleet, tmp_path):
    """hv2 holds the domain (with its earlier snapshot) and a raw QEMU VM: pre_upgrade_snapshot, then
    host_evacuate moves both live to hv1 (none saved) and back, snapshot_rollback takes both guests
    back to the snapshot, snapshot_cleanup deletes it."""
    hv1, hv2 = fleet.hosts
    raw = hv2.add_vm('qemu', '%s-raw1' % hv2.ns, 256, detect_accel(), False)
    raw.wait_booted(300)
    fleet.write_inventory()
    lv = next(vm for vm in hv2.vms if vm is not raw)
    targets = host_targets(hv2)
    for t in targets:
        t.wait_counter(3)

    # an instant snapshot of the raw QEMU VM (memory file and manifest in memory_dir, each host's own):
    # it moves with the VM, is listed at hv1 while the VM is there, and reverts once the VM is home
    rt = next(t for t in targets if t.vm is raw)
    _memory_dir(hv2)
    inst = [rt.counter()]
    (r,), log = fleet.play(hv2, [rt.task('snapshot', name='inst', mode='instant')])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    inst.append(rt.counter())

    marks = {}
    for t in targets:
        marks[t.vm.name] = [t.counter()]
    _playbook(fleet, 'vmfleet.kvm.pre_upgrade_snapshot', vmfleet_snapshot_name='chain')
    for t in targets:
        marks[t.vm.name].append(t.counter())
    assert _listed(hv2, lv.name) == sorted([SNAP, 'vmfleet-chain'])

    # the evacuation report, read on hv2 while its VMs are away (the return phase writes its own)
    during = tmp_path / 'during'
    during.mkdir()
    tasks = tmp_path / 'maintenance.yml'
    tasks.write_text(yaml.safe_dump([
        {'name': 'the evacuation report', 'ansible.builtin.slurp': {'src': '/var/lib/vmfleet/reports/host_maintenance.json'},
         'register': 'report'},
        {'name': 'hand it to the test', 'delegate_to': 'localhost', 'become': False,
         'vars': {'ansible_connection': 'local'},
         'ansible.builtin.copy': {'dest': str(during) + '/{{ inventory_hostname }}.json', 'mode': '0600',
                                  'content': '{{ report.content | b64decode }}'}},
        {'name': "the raw VM's snapshots where it runs now", 'delegate_to': hv1.name,
         'when': "inventory_hostname == '%s'" % hv2.name,
         'vmfleet.kvm.snapshot_info': {'qmp_socket': os.path.join(DEST_QMP_DIR, os.path.basename(raw.qmp_socket))},
         'register': 'away'},
        {'name': 'hand them to the test', 'delegate_to': 'localhost', 'become': False,
         'when': "inventory_hostname == '%s'" % hv2.name,
         'vars': {'ansible_connection': 'local'},
         'ansible.builtin.copy': {'dest': str(during) + '/away.json', 'mode': '0600',
                                  'content': '{{ away.snapshots | to_json }}'}}]))
    starts = dict((t.vm.name, (t.serial_size(), t.wait_counter(marks[t.vm.name][1] + 2))) for t in targets)
    _playbook(fleet, 'vmfleet.kvm.host_evacuate', vmfleet_maintenance_tasks=str(tasks))
    moved = dict((r['vm'], r) for r in json.loads((during / (hv2.name + '.json')).read_text())['vms'])
    assert set(moved) == {lv.name, raw.name}, moved
    for r in moved.values():
        # moved live: neither saved instead
        assert r['status'] == 'ok' and r['destination'] == hv1.name and not r.get('saved_instead'), r
    # both back on hv2, the domain with its snapshots; the guests counted on, never back, never skipping
    assert hv2.domstate(lv.name) == 'running' and hv1.domstate(lv.name) is None
    assert _listed(hv2, lv.name) == sorted([SNAP, 'vmfleet-chain'])
    assert hv2.virsh('snapshot-current', lv.name, '--name').stdout.strip() == 'vmfleet-chain'
    for t in targets:
        start, before = starts[t.vm.name]
        t.wait_counter(t.counter() + 2, timeout=180)
        counters = t.counters_after(start)
        assert counters[0] <= before + 1, counters[:5]
        assert_consecutive(counters)

    last = dict((t.vm.name, (t.serial_size(), t.counter())) for t in targets)
    _playbook(fleet, 'vmfleet.kvm.snapshot_rollback', vmfleet_snapshot_name='chain')
    for t in targets:
        offset, was = last[t.vm.name]
        resumed = t.counters_after_going_back(offset, was)
        lo, hi = marks[t.vm.name]
        assert lo <= resumed[0] - 1 <= hi + 1, (t.vm.name, marks[t.vm.name], resumed)

    _playbook(fleet, 'vmfleet.kvm.snapshot_cleanup', vmfleet_snapshot_name='chain')
    assert _listed(hv2, lv.name) == [SNAP]

    # the instant snapshot was at hv1 with the VM (listed, complete), and came home with it: hv1 keeps no file
    away = dict((s['name'], s) for s in json.loads((during / 'away.json').read_text()))
    assert away.get('inst', {}).get('mode') == 'instant' and away['inst']['consistent'] is True, away
    left = hv1.run(['sh', '-c', 'ls %s 2>/dev/null; true' % MEMORY_DIR]).stdout.split()
    assert not [f for f in left if raw.name in f], left
    offset, was = rt.serial_size(), rt.counter()
    (r,), log = fleet.play(hv2, [rt.task('snapshot', name='inst', mode='instant', state='reverted')])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    resumed = rt.counters_after_going_back(offset, was)
    assert inst[0] <= resumed[0] - 1 <= inst[1] + 1, (inst, resumed)
    _revert_at_the_destination(fleet, rt, inst)
    (r,), log = fleet.play(hv2, [rt.task('snapshot', name='inst', mode='instant', state='absent')])
    assert r.get('changed') is True, (r, log[-3000:])


def _resumed_after_revert(t, offset, was, timeout=180):
    """The counters from where the guest went back: a revert that relaunched QEMU opened the serial file anew
    (it is shorter than ``offset`` then), one that loaded in place fell back past ``was``."""
    end = time.time() + timeout
    while time.time() < end:
        if t.serial_size() < offset:
            seen = t.counters_after(0)
            if len(seen) >= 3:
                return seen
        else:
            seen = [was] + t.counters_after(offset)
            drops = [i for i in range(1, len(seen)) if seen[i] < seen[i - 1]]
            if drops and len(seen) - drops[0] >= 3:
                return seen[drops[0]:]
        time.sleep(0.3)
    raise AssertionError('the guest counter never went back: %s' % t.counters_after(0))


def _revert_at_the_destination(fleet, rt, inst):
    """The raw QEMU VM moves to hv1 with vm_migrate, its instant snapshot (taken at hv2) is reverted there,
    at the destination, and goes back to its moment; then it moves home again."""
    hv1, hv2 = fleet.hosts
    _memory_dir(hv1)
    away = os.path.join(DEST_QMP_DIR, os.path.basename(rt.vm.qmp_socket))
    (r,), log = fleet.play(hv2, [{'vmfleet.kvm.vm_migrate': {
        'qmp_socket': rt.vm.qmp_socket, 'destination_uri': 'ssh://vmfleet@%s' % hv1.address,
        'destination_qmp_socket': away, 'timeout': 600}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    rt.wait_counter(rt.counter() + 2, timeout=180)
    offset, was = rt.serial_size(), rt.counter()
    (r,), log = fleet.play(hv1, [{'vmfleet.kvm.snapshot': {'qmp_socket': away, 'name': 'inst', 'mode': 'instant',
                                                           'state': 'reverted'}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    resumed = _resumed_after_revert(rt, offset, was)
    assert inst[0] <= resumed[0] - 1 <= inst[1] + 1 and resumed[0] < was, (inst, was, resumed)
    (r,), log = fleet.play(hv1, [{'vmfleet.kvm.vm_migrate': {
        'qmp_socket': away, 'destination_uri': 'ssh://vmfleet@%s' % hv2.address,
        'destination_qmp_socket': rt.vm.qmp_socket, 'timeout': 600}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    rt.wait_counter(rt.counter() + 2, timeout=180)


def test_the_module_killed_after_the_metadata_moved_a_re_run_defines_it_where_the_domain_runs(fleet, tmp_path):
    """The module itself is killed (SIGKILL) while the domain migrates, its snapshot metadata off the
    source and only in the journal: whether libvirt finished the move or not, a re-run of the task
    defines the snapshot where the domain runs and ends with the domain at the destination."""
    hv1, hv2 = fleet.hosts
    lv = next(vm for vm in hv2.vms if not vm.name.endswith('-raw1'))
    t = Target(lv, 'libvirt')
    task = {'vmfleet.kvm.vm_migrate': {'domain': lv.name, 'destination_uri': hv1.ssh_uri, 'bandwidth_mib_s': 8,
                                       'timeout': 300}}
    proc, _out = start_tasks([task], str(tmp_path), inventory=fleet.inventory, hosts=hv2.name)
    try:
        hv1.wait_incoming(lv.name, proc)
        assert _listed(hv2, lv.name) == []
        killed = 0
        for pid in hv2.procs('AnsiballZ_vm_migrate'):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass  # a wrapper shell that ended
        assert killed, 'no module process to kill'
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # libvirt's job ends on its own (done, or given up with its client): then the re-run
    end = time.monotonic() + 240
    while time.monotonic() < end:
        job = hv2.virsh('domjobinfo', lv.name, check=False).stdout.strip()  # empty: the domain left hv2
        if not job or 'None' in job:
            break
        time.sleep(0.5)
    (r,), log = fleet.play(hv2, [task])
    assert not r.get('failed'), (r, log[-3000:])
    assert r.get('snapshots_defined') == [SNAP], r
    assert hv1.domstate(lv.name) == 'running' and hv2.domstate(lv.name) is None
    _moved(lv, hv2, hv1)
    assert _listed(hv1, lv.name) == [SNAP]
    t.wait_counter(t.counter() + 2, timeout=120)
