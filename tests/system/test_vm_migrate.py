"""vmfleet.kvm.vm_migrate between two simulated hypervisors (tests/rig/hypervisors.py), over
real SSH: ansible-playbook reaches hv1 as the rig's login user, the module runs there as root,
and hv1's libvirtd migrates peer to peer to hv2's libvirtd through qemu+ssh."""

import contextlib
import os
import re
import subprocess
import time

import pytest

from rig.accel import detect_accel
from rig.ansible_run import read_results, start_tasks
from rig.guest import disk_counter, wait_serial
from rig.hypervisors import FleetView
from rig.libvirt_guest import LibvirtGuest
from rig.qemu_guest import QemuGuest
from rig.qmp import qmp
from rig.targets import Target, assert_consecutive


@pytest.fixture(scope='module')
def fleet(session_fleet):
    """Two hypervisors of the session fleet with one libvirt domain each, and a raw QEMU VM on
    hv1; their disks are under the rig's directory, which both hosts see (shared storage)."""
    with FleetView(session_fleet, 'migrate', 2) as f:
        f.boot_vms(f.hosts, 1, wait=False)
        h = f.hosts[0]
        h.add_vm('qemu', '%s-raw1' % h.ns, 256, detect_accel(), False)
        # shared_raw's, booting with the others (hv1 lists it after raw1: _raw() is raw1 still)
        h.add_vm('qemu', '%s-raw2' % h.ns, 256, detect_accel(), False)
        f.wait_booted(f.hosts)
        f.write_inventory()
        yield f


def _persistent(host, name):
    r = host.virsh('dominfo', name, check=False)
    m = re.search(r'^Persistent:\s+(\w+)', r.stdout, re.M)
    return m and m.group(1) == 'yes'


def _runs_at_source_only(src, dst, t, wait_s):
    """The domain of Target ``t`` runs at ``src`` and counts on; within ``wait_s`` nothing of it is left at ``dst``."""
    name = t.vm.name
    assert src.domstate(name) == 'running'
    end = time.monotonic() + wait_s
    while dst.domstate(name) is not None and time.monotonic() < end:
        time.sleep(0.5)
    assert dst.domstate(name) is None, dst.virsh('list', '--all').stdout
    t.wait_counter(t.counter() + 2, timeout=120)


def _domain(host):
    return next(vm for vm in host.vms if isinstance(vm, LibvirtGuest))


def _counts_on(t, start, before):
    """After a move: the guest counts on (3 more), from where it was (``before``, at serial
    offset ``start``), never back, never skipping; the counter it had when the move ended."""
    last = t.counter()
    t.wait_counter(last + 3, timeout=180)
    counters = t.counters_after(start)
    assert counters[0] <= before + 1
    assert_consecutive(counters)
    return last


def test_an_unreachable_destination_fails_and_the_domain_runs_on(fleet, tmp_path):
    hv1 = fleet.hosts[0]
    vm = _domain(hv1)
    t = Target(vm, 'libvirt')
    before = t.counter()
    # an address of the fleet's network where no host answers
    bad = 'qemu+ssh://vmfleet@%s.%d.2/system' % (fleet.subnet, 99)
    (r,), log = fleet.play(hv1.name, [
        {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': bad, 'timeout': 60}}])
    assert r.get('failed') is True and r.get('error') == 'ConnectionFailed', r
    assert 'unreachable' in r['msg'] and bad in r['msg'], r['msg']
    assert 'Traceback' not in log
    assert hv1.domstate(vm.name) == 'running'
    t.wait_counter(before + 2, timeout=120)


def test_a_libvirt_domain_moves_with_shared_storage(fleet, tmp_path):
    hv1, hv2 = fleet.hosts
    vm = _domain(hv1)
    t = Target(vm, 'libvirt')
    task = {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': hv2.ssh_uri,
                                       'parallel_connections': 2, 'max_downtime_ms': 500, 'timeout': 600}}
    # check mode: the destination is checked, nothing moves
    (r,), log = fleet.play(hv1.name, [task], check=True)
    assert r.get('changed') is True and not r.get('failed'), r
    assert hv1.domstate(vm.name) == 'running' and hv2.domstate(vm.name) is None

    start = t.serial_size()
    before = t.wait_counter(1)
    (r,), log = fleet.play(hv1.name, [task])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert r['route'] == 'libvirt-p2p' and r['mode'] == 'precopy', r
    assert isinstance(r['downtime_ms'], int) and r['downtime_ms'] >= 0, r
    assert r['bytes'] > 0 and r['progress']['samples'], r
    # the source no longer has it, the destination runs it and keeps its definition
    assert hv1.domstate(vm.name) is None, hv1.virsh('list', '--all').stdout
    assert hv2.domstate(vm.name) == 'running'
    assert _persistent(hv2, vm.name)
    # the guest counts on at the destination (only hv2's QEMU writes the log now), never back, never skipping
    last = _counts_on(t, start, before)
    # its disk holds what it wrote after the move
    t.wait_disk_counter('root', last + 1, timeout=120)

    # idempotent: it runs at the destination already
    (r,), log = fleet.play(hv1.name, [task])
    assert r.get('changed') is False and not r.get('failed'), r
    assert hv2.domstate(vm.name) == 'running'
    # the rig tears down what it knows on each host: hv2 holds the domain now
    hv1.vms.remove(vm)
    vm.uri = hv2.uri
    hv2.vms.append(vm)


def test_copy_storage_onto_the_same_files_is_refused_and_the_domain_runs_on(fleet, tmp_path):
    """The rig's disk paths are shared by both hosts: copying "to the same path" would copy
    a disk onto itself. The module finds the image at the destination and touches nothing."""
    hv1, hv2 = fleet.hosts
    vm = _domain(hv2)
    (r,), log = fleet.play(hv2.name, [
        {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': hv1.ssh_uri, 'storage': 'copy',
                                    'timeout': 120}}])
    assert r.get('failed') is True and r.get('error') == 'TargetProblem', r
    assert 'exists already' in r['msg'], r['msg']
    assert hv2.domstate(vm.name) == 'running' and hv1.domstate(vm.name) is None
    # no storage pool left behind at the destination
    assert 'vmfleet-migrate' not in hv1.virsh('pool-list', '--all').stdout


def test_a_libvirt_domain_moves_with_its_disks_copied(fleet, tmp_path):
    """hv2's domain goes to hv1 with its disks copied into hv1's own /var/lib/libvirt/images
    (a per-host directory: storage hv2 does not see)."""
    hv1, hv2 = fleet.hosts
    vm = _domain(hv2)
    t = Target(vm, 'libvirt')
    start = t.serial_size()
    before = t.wait_counter(1)
    dest_dir = '/var/lib/libvirt/images'  # on hv1: hv1.path('lib', 'images')
    (r,), log = fleet.play(hv2.name, [
        {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': hv1.ssh_uri, 'storage': 'copy',
                                    'destination_dir': dest_dir, 'timeout': 600}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert sorted(d['target'] for d in r['disks']) == ['vda', 'vdb', 'vdc'], r['disks']
    assert r['disk_bytes'] > 0 and isinstance(r['downtime_ms'], int), r
    assert hv2.domstate(vm.name) is None and hv1.domstate(vm.name) == 'running'
    # the domain at hv1 uses the copies
    xml = hv1.virsh('dumpxml', vm.name).stdout
    sources = re.findall(r"<source file='([^']+)'", xml)
    assert sources and all(s.startswith(dest_dir + '/') for s in sources), sources
    last = _counts_on(t, start, before)
    # the copies hold every write: the guest's latest counter lands in the copy, the source image stopped
    old_root = vm.disk_path('root')
    for role in ('root', 'data'):
        vm.disks[role] = (hv1.path('lib', 'images', os.path.basename(vm.disk_path(role))), 'qcow2')
    t.wait_disk_counter('root', last + 1, timeout=120)
    t.wait_disk_counter('data', last + 1, timeout=120)
    assert disk_counter(old_root, 'qcow2') <= last + 1
    hv2.vms.remove(vm)
    vm.uri = hv1.uri
    hv1.vms.append(vm)


def _home(fleet, vm):
    """The host the domain runs on."""
    running = [h for h in fleet.hosts if h.domstate(vm.name) == 'running']
    assert len(running) == 1, [(h.name, h.domstate(vm.name)) for h in fleet.hosts]
    return running[0]


def _shared_domain(fleet):
    """The domain whose disks are under the rig's directory (both hosts see them), and the host it runs on."""
    vm = next(vm for h in fleet.hosts for vm in h.vms if isinstance(vm, LibvirtGuest) and vm.name == '%s1-lv1' % fleet.prefix)
    return vm, _home(fleet, vm)


def test_the_timeout_cancels_the_migration_and_the_domain_runs_on_at_the_source(fleet, tmp_path):
    vm, src = _shared_domain(fleet)
    dst = next(h for h in fleet.hosts if h is not src)
    t = Target(vm, 'libvirt')
    # 1 MiB/s: the guest's RAM cannot cross within the timeout
    (r,), log = fleet.play(src.name, [
        {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': dst.ssh_uri, 'bandwidth_mib_s': 1,
                                    'timeout': 25}}])
    assert r.get('failed') is True and r.get('error') == 'OperationTimeout', r
    assert 'cancelled' in r['msg'] and r['source_state'] == 'running', r
    assert r['progress']['samples'], r
    # nothing half-made at the destination (libvirt removes the incoming domain once the job is gone)
    _runs_at_source_only(src, dst, t, 60)


def test_the_destination_libvirtd_killed_mid_migration_leaves_the_domain_at_the_source(fleet, tmp_path):
    vm, src = _shared_domain(fleet)
    dst = next(h for h in fleet.hosts if h is not src)
    t = Target(vm, 'libvirt')
    proc, out = start_tasks([
        {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': dst.ssh_uri, 'bandwidth_mib_s': 1,
                                    'timeout': 300}}], str(tmp_path), inventory=fleet.inventory, hosts=src.name)
    try:
        # the incoming domain appears at the destination: the migration runs
        dst.wait_incoming(vm.name, proc)
        dst.stop_libvirtd()
        text = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not _pid_alive_libvirtd(dst):
            dst.start_libvirtd()
    (r,) = read_results(out, text)
    assert r.get('failed') is True and r.get('error') in ('ConnectionFailed', 'JobFailed'), r
    assert r['source_state'] == 'running', r
    # the restarted libvirtd at the destination drops the half-migrated domain
    _runs_at_source_only(src, dst, t, 120)


def _kill_the_controller_mid_migration(fleet, tmp_path, src, dst, task):
    """Kill ansible-playbook (its process group) once ``task``'s stream crosses to ``dst``; return
    once the module on ``src`` has ended (within the task's timeout)."""
    proc, _out = _start_moving(fleet, tmp_path, src, dst, task)
    os.killpg(proc.pid, 9)
    proc.wait()
    end = time.monotonic() + 330
    while src.procs('AnsiballZ_vm_migrate'):
        assert time.monotonic() < end, 'the module runs on past its timeout'
        time.sleep(0.5)


def test_the_controller_killed_mid_migration_of_a_domain_the_host_finishes_it(fleet, tmp_path):
    """ansible-playbook is killed (its process group) while a libvirt domain moves: the module on the
    host is not hung up with it, the domain ends defined and running at the destination only, and a
    re-run finds it done."""
    vm, src = _shared_domain(fleet)
    dst = next(h for h in fleet.hosts if h is not src)
    t = Target(vm, 'libvirt')
    task = {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': dst.ssh_uri, 'bandwidth_mib_s': 8,
                                       'timeout': 300}}
    start = t.serial_size()
    before = t.wait_counter(1)
    _kill_the_controller_mid_migration(fleet, tmp_path, src, dst, task)
    assert src.domstate(vm.name) is None, src.virsh('list', '--all').stdout
    assert dst.domstate(vm.name) == 'running' and _persistent(dst, vm.name)
    _counts_on(t, start, before)
    (r,), log = fleet.play(src.name, [task])
    assert r.get('changed') is False and not r.get('failed'), r


def test_postcopy_takes_over_when_precopy_does_not_converge(fleet, tmp_path):
    """Held to 1 MiB/s, precopy cannot carry the guest's RAM within half the timeout: the module
    switches to postcopy, the guest runs at the destination at once and the rest follows."""
    vm, src = _shared_domain(fleet)
    dst = next(h for h in fleet.hosts if h is not src)
    t = Target(vm, 'libvirt')
    start = t.serial_size()
    before = t.wait_counter(1)
    (r,), log = fleet.play(src.name, [
        {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': dst.ssh_uri, 'bandwidth_mib_s': 1,
                                    'postcopy': True, 'timeout': 40}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert r['mode'] == 'postcopy' and 'half the timeout' in r['why'], r
    assert src.domstate(vm.name) is None and dst.domstate(vm.name) == 'running'
    _counts_on(t, start, before)


def test_a_libvirt_domain_moves_over_qemu_tcp(fleet, tmp_path):
    """A fleet whose libvirtds listen on TCP (no SSH between hypervisors): the same move through
    qemu+tcp://, then a re-run finds it done."""
    vm, src = _shared_domain(fleet)
    dst = next(h for h in fleet.hosts if h is not src)
    t = Target(vm, 'libvirt')
    start = t.serial_size()
    before = t.wait_counter(1)
    task = {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': 'qemu+tcp://%s/system' % dst.address,
                                       'timeout': 600}}
    (r,), log = fleet.play(src.name, [task])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert r['route'] == 'libvirt-p2p' and isinstance(r['downtime_ms'], int), r
    assert src.domstate(vm.name) is None and dst.domstate(vm.name) == 'running'
    assert _persistent(dst, vm.name)
    last = _counts_on(t, start, before)
    t.wait_disk_counter('root', last + 1, timeout=120)
    (r,), log = fleet.play(src.name, [task])
    assert r.get('changed') is False and not r.get('failed'), r


def _pid_alive_libvirtd(host):
    return host.virsh('version', check=False).returncode == 0


def _raw(fleet):
    return next(v for v in fleet.hosts[0].vms if isinstance(v, QemuGuest))


def test_a_raw_qemu_vm_with_an_unreachable_destination_runs_on(fleet, tmp_path):
    hv1, hv2 = fleet.hosts
    vm = _raw(fleet)
    t = Target(vm, 'qemu')
    bad = 'ssh://vmfleet@%s.%d.2' % (fleet.subnet, 99)
    (r,), log = fleet.play(hv1.name, [
        {'vmfleet.kvm.vm_migrate': {'qmp_socket': vm.qmp_socket, 'destination_uri': bad, 'timeout': 60}}])
    assert r.get('failed') is True and r.get('error') == 'ConnectionFailed', r
    assert 'unreachable' in r['msg'], r['msg']
    assert 'Traceback' not in log
    assert t.qmp('query-status')['status'] == 'running'
    last = t.counter()
    t.wait_counter(last + 2, timeout=120)


def test_a_raw_qemu_vm_whose_migration_times_out_runs_on_and_nothing_is_left_at_the_destination(fleet, tmp_path):
    hv1, hv2 = fleet.hosts
    vm = _raw(fleet)
    t = Target(vm, 'qemu')
    dest_sock = '/var/lib/vmfleet/%s.qmp' % vm.name
    (r,), log = fleet.play(hv1.name, [
        {'vmfleet.kvm.vm_migrate': {'qmp_socket': vm.qmp_socket, 'destination_uri': 'ssh://vmfleet@%s' % hv2.address,
                                    'destination_qmp_socket': dest_sock, 'bandwidth_mib_s': 1, 'timeout': 30}}])
    assert r.get('failed') is True and r.get('error') == 'OperationTimeout', r
    assert r['source_state'] == 'running' and r['progress']['samples'], r
    assert 'Traceback' not in log
    assert t.qmp('query-status')['status'] == 'running'
    # the destination QEMU was stopped and its socket removed
    assert not os.path.exists(hv2.path('vmfleet', vm.name + '.qmp'))
    assert not hv2.run(['pgrep', '-f', dest_sock], check=False).stdout.split(), 'destination QEMU left'
    last = t.counter()
    t.wait_counter(last + 2, timeout=120)


def test_a_raw_qemu_vm_moves_with_shared_storage(fleet, tmp_path):
    """Its QEMU starts at hv2 from the source's command line (over SSH from hv1), takes the
    guest over, and the source QEMU quits."""
    hv1, hv2 = fleet.hosts
    vm = _raw(fleet)
    t = Target(vm, 'qemu')
    dest_sock = '/var/lib/vmfleet/%s.qmp' % vm.name  # hv2's own directory
    task = {'vmfleet.kvm.vm_migrate': {'qmp_socket': vm.qmp_socket, 'destination_uri': 'ssh://vmfleet@%s' % hv2.address,
                                       'destination_qmp_socket': dest_sock, 'parallel_connections': 2,
                                       'timeout': 600}}
    (r,), log = fleet.play(hv1.name, [task], check=True)
    assert r.get('changed') is True and not r.get('failed'), r
    assert '-incoming' in r['destination_argv'] and not os.path.exists(hv2.path('vmfleet', vm.name + '.qmp'))

    start = t.serial_size()
    before = t.wait_counter(1)
    (r,), log = fleet.play(hv1.name, [task])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert r['route'] == 'qemu-incoming' and r['mode'] == 'precopy', r
    assert isinstance(r['downtime_ms'], int) and r['bytes'] > 0, r
    # the source QEMU is gone, the destination's runs
    vm.proc.wait(timeout=60)  # the source QEMU quit (this test's child: reaped here)
    assert qmp(hv2.path('vmfleet', vm.name + '.qmp'), 'query-status')['status'] == 'running'
    last = _counts_on(t, start, before)
    t.wait_disk_counter('root', last + 1, timeout=120)
    # idempotent
    (r,), log = fleet.play(hv1.name, [task])
    assert r.get('changed') is False and not r.get('failed'), r


def test_a_raw_qemu_vm_moves_back_with_its_disks_copied(fleet, tmp_path):
    """The raw VM (at hv2 after the test before) goes back to hv1 with its disks copied into hv1's
    own /var/lib/vmfleet (a per-host directory): the destination exports empty copies over NBD,
    the source mirrors into them while the guest runs, the switch waits until they are in sync."""
    hv1, hv2 = fleet.hosts
    vm = _raw(fleet)
    t = Target(vm, 'qemu')
    src_sock = '/var/lib/vmfleet/%s.qmp' % vm.name
    assert qmp(hv2.path('vmfleet', vm.name + '.qmp'), 'query-status')['status'] == 'running'
    os.makedirs(hv1.path('vmfleet', 'copies'))
    dest_dir = '/var/lib/vmfleet/copies'
    task = {'vmfleet.kvm.vm_migrate': {'qmp_socket': src_sock, 'destination_uri': 'ssh://vmfleet@%s' % hv1.address,
                                       'destination_qmp_socket': vm.qmp_socket, 'storage': 'copy',
                                       'destination_dir': dest_dir, 'timeout': 600}}
    start = t.serial_size()
    before = t.wait_counter(1)
    (r,), log = fleet.play(hv2.name, [task])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert sorted(d['target'] for d in r['disks']) == ['data', 'root', 'varstore'], r['disks']
    assert r['disk_bytes'] > 0 and isinstance(r['downtime_ms'], int), r
    assert qmp(vm.qmp_socket, 'query-status')['status'] == 'running'
    files = [b['inserted']['file'] for b in qmp(vm.qmp_socket, 'query-block') if b.get('inserted')]
    assert files and all(f.startswith(dest_dir + '/') for f in files), files
    last = _counts_on(t, start, before)
    # the copies hold every write: what the guest wrote before the move and what it writes now
    old_root = vm.disk_path('root')
    for role, fmt in (('root', 'qcow2'), ('data', 'qcow2')):
        vm.disks[role] = (hv1.path('vmfleet', 'copies', os.path.basename(vm.disk_path(role))), fmt)
    t.wait_disk_counter('root', last + 1, timeout=120)
    t.wait_disk_counter('data', last + 1, timeout=120)
    assert disk_counter(old_root, 'qcow2') <= last + 1


def test_a_destination_without_the_space_for_the_copies_is_refused_and_the_vm_runs_on(fleet, tmp_path):
    """hv2's destination_dir is a 64 KiB tmpfs (in hv2's own mount namespace): the disks do not fit,
    nothing starts there, the VM runs on at hv1."""
    hv1, hv2 = fleet.hosts
    vm = _raw(fleet)
    t = Target(vm, 'qemu')
    assert t.qmp('query-status')['status'] == 'running'  # at hv1, after the test before
    small = hv2.path('vmfleet', 'small')
    os.makedirs(small)
    hv2.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'vmfleet-small', '/var/lib/vmfleet/small'])
    try:
        (r,), log = fleet.play(hv1.name, [
            {'vmfleet.kvm.vm_migrate': {'qmp_socket': vm.qmp_socket, 'destination_uri': 'ssh://vmfleet@%s' % hv2.address,
                                        'destination_qmp_socket': '/var/lib/vmfleet/%s.qmp' % vm.name, 'storage': 'copy',
                                        'destination_dir': '/var/lib/vmfleet/small', 'timeout': 120}}])
        assert r.get('failed') is True and r.get('error') == 'SpaceTooSmall', r
        assert 'not enough space' in r['msg'], r['msg']
        assert hv2.run(['ls', '-A', '/var/lib/vmfleet/small']).stdout.strip() == ''
    finally:
        hv2.run(['umount', '/var/lib/vmfleet/small'], check=False)
    assert not os.path.exists(hv2.path('vmfleet', vm.name + '.qmp'))
    assert t.qmp('query-status')['status'] == 'running'
    last = t.counter()
    t.wait_counter(last + 2, timeout=120)


# --- faults mid-migration -----------------------------------------------------------------------
def _sent_to(host):
    """Bytes the machine has sent towards ``host`` (its veth's root side)."""
    with open('/sys/class/net/%s/statistics/tx_bytes' % host.veth) as f:
        return int(f.read())


def _start_moving(fleet, tmp_path, src, dst, task):
    """Start ansible-playbook migrating with ``task`` on ``src``; return once the migration stream
    is crossing to ``dst`` (4 MiB went its way): (the Popen, its results path)."""
    base = _sent_to(dst)
    proc, out = start_tasks([task], str(tmp_path), inventory=fleet.inventory, hosts=src.name)
    end = time.monotonic() + 240
    while _sent_to(dst) - base < 4 << 20:
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError('no migration stream towards %s: %s' % (dst.name, proc.communicate()[0][-3000:]))
        time.sleep(0.2)
    return proc, out


def _finish(proc, out, timeout=600):
    """Wait for a playbook from _start_moving; what its task registered."""
    try:
        text = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    (r,) = read_results(out, text)
    assert 'Traceback' not in text
    return r


def _link(host, state):
    subprocess.run(['ip', 'link', 'set', host.veth, state], check=True)


def _cut_link_mid_migration(fleet, tmp_path, src, dst, task):
    """Run ``task`` on ``src``, bring ``dst``'s link down once the stream crosses, up again once
    the task ended: (what it registered, seconds from the cut to its end)."""
    proc, out = _start_moving(fleet, tmp_path, src, dst, task)
    t0 = time.monotonic()
    try:
        _link(dst, 'down')
        r = _finish(proc, out)
        return r, time.monotonic() - t0
    finally:
        _link(dst, 'up')


def test_a_link_cut_mid_migration_fails_naming_the_destination_and_the_domain_runs_on(fleet, tmp_path):
    vm, src = _shared_domain(fleet)
    dst = next(h for h in fleet.hosts if h is not src)
    t = Target(vm, 'libvirt')
    task = {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': dst.ssh_uri, 'bandwidth_mib_s': 4,
                                       'timeout': 120}}
    r, took = _cut_link_mid_migration(fleet, tmp_path, src, dst, task)
    assert r.get('failed') is True and r.get('error') == 'ConnectionFailed', r
    assert dst.address in r['msg'], r['msg']
    assert r['source_state'] == 'running' and took < 120, (took, r)
    assert src.domstate(vm.name) == 'running'
    last = t.counter()
    t.wait_counter(last + 2, timeout=120)
    # the link back: the destination's libvirtd drops the incoming domain, a re-run moves it
    end = time.monotonic() + 120
    while dst.domstate(vm.name) is not None and time.monotonic() < end:
        time.sleep(0.5)
    assert dst.domstate(vm.name) is None, dst.virsh('list', '--all').stdout
    start = t.serial_size()
    before = t.counter()
    (r,), log = fleet.play(src.name, [dict(task, **{'vmfleet.kvm.vm_migrate': dict(
        task['vmfleet.kvm.vm_migrate'], bandwidth_mib_s=0, timeout=300)})])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert src.domstate(vm.name) is None and dst.domstate(vm.name) == 'running'
    _counts_on(t, start, before)


@pytest.fixture(scope='module')
def shared_raw(fleet):
    """A raw QEMU VM on hv1 with its disks on shared storage (the first one's are in hv1's own
    directory once it moved back with them copied); booted with the file's other VMs."""
    return next(vm for vm in fleet.hosts[0].vms if vm.name == '%s-raw2' % fleet.hosts[0].ns)


def test_a_link_cut_mid_migration_of_a_raw_qemu_vm_fails_naming_the_destination_and_it_runs_on(
        fleet, shared_raw, tmp_path):
    hv1, hv2 = fleet.hosts
    vm = shared_raw
    t = Target(vm, 'qemu')
    assert t.qmp('query-status')['status'] == 'running'  # at hv1
    dest_sock = '/var/lib/vmfleet/%s.qmp' % vm.name
    task = {'vmfleet.kvm.vm_migrate': {'qmp_socket': vm.qmp_socket, 'destination_uri': 'ssh://vmfleet@%s' % hv2.address,
                                       'destination_qmp_socket': dest_sock, 'bandwidth_mib_s': 4, 'timeout': 120}}
    r, took = _cut_link_mid_migration(fleet, tmp_path, hv1, hv2, task)
    # nothing crossed for STALL_S (30 s): lost, long before TCP would say so
    assert r.get('failed') is True and r.get('error') == 'ConnectionFailed' and 'stalled' in r['msg'], r
    assert hv2.address in r['msg'], r['msg']
    assert r['source_state'] == 'running' and took < 120, (took, r)
    assert t.qmp('query-status')['status'] == 'running'
    last = t.counter()
    t.wait_counter(last + 2, timeout=120)
    # the link back: a re-run finds no QEMU of an earlier try in its way and moves the VM
    start = t.serial_size()
    before = t.counter()
    (r,), log = fleet.play(hv1.name, [{'vmfleet.kvm.vm_migrate': dict(
        task['vmfleet.kvm.vm_migrate'], bandwidth_mib_s=0, timeout=300)}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    vm.proc.wait(timeout=60)
    assert qmp(hv2.path('vmfleet', vm.name + '.qmp'), 'query-status')['status'] == 'running'
    _counts_on(t, start, before)


def _raw_moves(fleet, vm):
    """Where the raw VM runs and where it would go: (source host, its socket, destination host, the
    socket there). At hv1 it has the rig's socket, at hv2 one under hv2's own /var/lib/vmfleet."""
    hv1, hv2 = fleet.hosts
    at_hv2 = '/var/lib/vmfleet/%s.qmp' % vm.name
    try:
        qmp(hv2.path('vmfleet', vm.name + '.qmp'), 'query-status')
    except Exception:  # no QEMU answers there
        return hv1, vm.qmp_socket, hv2, at_hv2
    return hv2, at_hv2, hv1, vm.qmp_socket


def _raw_task(vm, src_sock, dst, dst_sock, **args):
    return {'vmfleet.kvm.vm_migrate': dict({'qmp_socket': src_sock, 'destination_uri': 'ssh://vmfleet@%s' % dst.address,
                                            'destination_qmp_socket': dst_sock}, **args)}


def _host_sock(host, sock):
    """A host's socket path as this (root namespace) process reaches it."""
    return host.path('vmfleet', os.path.basename(sock)) if sock.startswith('/var/lib/vmfleet/') else sock


def test_the_controller_killed_mid_migration_the_host_finishes_it(fleet, shared_raw, tmp_path):
    """ansible-playbook is killed (its process group) while a raw QEMU VM moves: the module on the
    host is not hung up with it, it ends the migration as it would have; a re-run finds it done."""
    vm = shared_raw
    t = Target(vm, 'qemu')
    src, src_sock, dst, dst_sock = _raw_moves(fleet, vm)
    task = _raw_task(vm, src_sock, dst, dst_sock, bandwidth_mib_s=8, timeout=300)
    start = t.serial_size()
    before = t.counter()
    _kill_the_controller_mid_migration(fleet, tmp_path, src, dst, task)
    # it ran exactly once, at the destination; nothing of it at the source
    assert qmp(_host_sock(dst, dst_sock), 'query-status')['status'] == 'running'
    assert not src.procs(src_sock), 'a QEMU is left at the source'
    if vm.proc is not None:
        vm.proc.wait(timeout=60)
    _counts_on(t, start, before)
    (r,), log = fleet.play(src.name, [task])
    assert r.get('changed') is False and not r.get('failed') and r['state'] == 'running-at-destination', r


def test_the_destination_qemu_killed_mid_migration_leaves_the_raw_vm_running_at_the_source(fleet, shared_raw, tmp_path):
    vm = shared_raw
    t = Target(vm, 'qemu')
    src, src_sock, dst, dst_sock = _raw_moves(fleet, vm)
    proc, out = _start_moving(fleet, tmp_path, src, dst, _raw_task(vm, src_sock, dst, dst_sock, bandwidth_mib_s=4,
                                                                   timeout=300))
    (pid,) = [p for p in dst.procs(dst_sock) if b'qemu-system' in open('/proc/%d/cmdline' % p, 'rb').read()]
    os.kill(pid, 9)
    r = _finish(proc, out)
    assert r.get('failed') is True and r.get('error') == 'JobFailed', r
    assert dst.address in r['msg'] and r['source_state'] == 'running', r
    assert qmp(_host_sock(src, src_sock), 'query-status')['status'] == 'running'
    assert not dst.procs(dst_sock) and not os.path.exists(_host_sock(dst, dst_sock))
    last = t.counter()
    t.wait_counter(last + 2, timeout=120)


@contextlib.contextmanager
def _short_of_memory(host):
    """``host`` has 64 MiB free and nothing reclaimable: a /proc/meminfo of its own, bind-mounted in
    its mount namespace, which a shell over SSH there and its libvirtd both read."""
    small = host.path('meminfo')
    with open('/proc/meminfo') as f:
        lines = f.read().splitlines()
    with open(small, 'w') as f:
        f.write('\n'.join(re.sub(r'^(MemFree|MemAvailable|Buffers|Cached):(\s+)\d+',
                                 lambda m: '%s:%s%d' % (m.group(1), m.group(2), 65536 if m.group(1).startswith('Mem') else 0),
                                 line) for line in lines) + '\n')
    host.run(['mount', '--bind', small, '/proc/meminfo'])
    try:
        yield
    finally:
        host.run(['umount', '/proc/meminfo'], check=False)


def test_a_destination_without_the_memory_is_refused_and_the_domain_runs_on(fleet, tmp_path):
    vm, src = _shared_domain(fleet)
    dst = next(h for h in fleet.hosts if h is not src)
    t = Target(vm, 'libvirt')
    with _short_of_memory(dst):
        (r,), log = fleet.play(src.name, [
            {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': dst.ssh_uri, 'timeout': 60}}])
    assert r.get('failed') is True and r.get('error') == 'DestinationProblem', r
    assert 'not enough memory' in r['msg'] and dst.address in r['msg'] and '64 MiB' in r['msg'], r['msg']
    assert 'Traceback' not in log
    assert src.domstate(vm.name) == 'running' and dst.domstate(vm.name) is None
    last = t.counter()
    t.wait_counter(last + 2, timeout=120)


def test_a_destination_without_the_memory_is_refused_and_the_raw_vm_runs_on(fleet, shared_raw, tmp_path):
    """hv2 has 64 MiB available: a raw QEMU VM of 256 MiB does not go there."""
    hv1, hv2 = fleet.hosts
    src, raw_sock, dst, raw_dst_sock = _raw_moves(fleet, shared_raw)
    assert (src, dst) == (hv1, hv2)
    with _short_of_memory(hv2):
        (r,), log = fleet.play(hv1.name, [_raw_task(shared_raw, raw_sock, hv2, raw_dst_sock, timeout=60)])
    assert r.get('failed') is True and r.get('error') == 'DestinationProblem', r
    assert 'not enough memory' in r['msg'] and hv2.address in r['msg'] and '64 MiB' in r['msg'], r['msg']
    assert not hv2.procs(raw_dst_sock), 'a QEMU was started at the destination'
    assert qmp(raw_sock, 'query-status')['status'] == 'running'


# --- a guest that writes memory fast (tests/guest/init vmfleet.dirty) --------------------------
# Measured under TCG on this 2-core machine: the dirtier rewrites its 2 x 16 MiB several times a
# second (~200 MiB/s written), so every pass of a precopy held to 16 MiB/s (2 s for the set) finds
# the whole set dirty again, where its downtime (300 ms) carries 4.8 MiB: it never converges. A
# host three times slower still rewrites the set within a pass.
DIRTY_MIB = 16
DIRTY_BANDWIDTH = 16


def _dirty_vm(host, backend, name):
    """A guest of ``host`` rewriting DIRTY_MIB x 2 of its memory in a loop, booted and dirtying."""
    vm = host.add_vm(backend, name, 256, detect_accel(), False, cmdline_extra='vmfleet.dirty=%d' % DIRTY_MIB)
    vm.wait_booted(300)
    wait_serial(vm.serial_log, r'VMFLEET-DIRTY-PASS \d+', 300)
    return vm


def _precopy_could_not_converge(r):
    """Passes after the first started with more dirty memory than the DIRTY_MIB the downtime
    could carry three times over: precopy alone would go on forever."""
    left = [s['remaining_mib'] for s in r['progress']['samples'] if (s.get('iteration') or 0) >= 2 and s.get('remaining_mib')]
    assert left and max(left) > DIRTY_MIB, r['progress']['samples']


def test_auto_converge_moves_a_domain_that_dirties_memory_faster_than_the_link(fleet, tmp_path):
    hv1, hv2 = fleet.hosts
    vm = _dirty_vm(hv1, 'libvirt', '%s-dirty' % hv1.ns)
    t = Target(vm, 'libvirt')
    start = t.serial_size()
    before = t.wait_counter(1)
    (r,), log = fleet.play(hv1.name, [
        {'vmfleet.kvm.vm_migrate': {'domain': vm.name, 'destination_uri': hv2.ssh_uri,
                                    'bandwidth_mib_s': DIRTY_BANDWIDTH, 'auto_converge': True, 'timeout': 600}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert r['mode'] == 'auto-converge' and 'throttled' in r['why'], r
    _precopy_could_not_converge(r)
    assert max(s.get('throttle_pct') or 0 for s in r['progress']['samples']) > 0, r['progress']
    assert hv1.domstate(vm.name) is None and hv2.domstate(vm.name) == 'running'
    hv1.vms.remove(vm)
    vm.uri = hv2.uri
    hv2.vms.append(vm)
    _counts_on(t, start, before)
    # the dirtier runs on at the destination
    wait_serial(vm.serial_log, r'VMFLEET-DIRTY-PASS \d+', 120, start)
    vm.stop()
    hv2.vms.remove(vm)


@pytest.fixture(scope='module')
def dirty_raw(fleet):
    """A raw QEMU VM on hv1 whose guest dirties memory fast; stopped once the module's tests are done."""
    return _dirty_vm(fleet.hosts[0], 'qemu', '%s-rawdirty' % fleet.hosts[0].ns)


def test_postcopy_moves_a_raw_qemu_vm_that_dirties_memory_faster_than_the_link(fleet, dirty_raw, tmp_path):
    hv1, hv2 = fleet.hosts
    vm = dirty_raw
    t = Target(vm, 'qemu')
    dest_sock = '/var/lib/vmfleet/%s.qmp' % vm.name
    start = t.serial_size()
    before = t.wait_counter(1)
    (r,), log = fleet.play(hv1.name, [
        {'vmfleet.kvm.vm_migrate': {'qmp_socket': vm.qmp_socket, 'destination_uri': 'ssh://vmfleet@%s' % hv2.address,
                                    'destination_qmp_socket': dest_sock, 'bandwidth_mib_s': DIRTY_BANDWIDTH,
                                    'postcopy': True, 'timeout': 300}}])
    assert r.get('changed') is True and not r.get('failed'), (r, log[-3000:])
    assert r['mode'] == 'postcopy' and 'switched to postcopy' in r['why'], r
    _precopy_could_not_converge(r)
    vm.proc.wait(timeout=60)  # the source QEMU quit
    assert qmp(hv2.path('vmfleet', vm.name + '.qmp'), 'query-status')['status'] == 'running'
    _counts_on(t, start, before)
    wait_serial(vm.serial_log, r'VMFLEET-DIRTY-PASS \d+', 120, start)
