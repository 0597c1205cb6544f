"""The fleet for real: simulated hypervisors (tests/rig/hypervisors.py), each its own
network namespace, sshd and libvirtd, reached by ansible-playbook over SSH as a
non-root user who becomes root."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rig.accel import detect_accel
from rig.ansible_run import run_playbook, run_tasks, start_playbook
from rig.guest import REPO, disk_counter
from rig.hypervisors import FleetView
from rig.libvirt_guest import LibvirtGuest
from rig.targets import Target, host_targets

HOSTS = 4
# each guest's counter must rise this far past where it was when the play ended
RUN_ON = 2


@pytest.fixture(scope='module')
def fleet(session_fleet):
    """4 hypervisors of the session fleet with 2 VMs each (a libvirt domain and a raw QEMU VM),
    plus its host with no VM whose python lacks libvirt-python and qemu.qmp ("not prepared").
    hv1 holds two failing VMs besides."""
    with FleetView(session_fleet, 'ssh', HOSTS, bare=True) as f:
        f.boot_vms(f.hosts, 2, wait=False)
        # faults that live on hv1 for every run: a VM whose only disk is raw (nothing can hold a
        # snapshot of it) and a raw QEMU VM that died leaving its socket (listed, never answering)
        h = f.hosts[0]
        h.add_vm('qemu', '%s-rawonly' % h.ns, 256, detect_accel(), False, disks=(('root', 'raw', 16),))
        h.add_dead_socket('%s-crashed' % h.ns)
        f.wait_booted(f.hosts)  # all nine booting at once
        f.write_inventory()
        yield f


def _recap(out):
    """PLAY RECAP: {host: {ok: n, changed: n, unreachable: n, failed: n, ...}}."""
    recap = {}
    for m in re.finditer(r'^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$', out.split('PLAY RECAP', 1)[-1], re.M):
        recap[m.group(1)] = dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', m.group(2)))
    return recap


def _snapshots(path):
    """Snapshot names in an image, read beside the QEMU that holds it."""
    info = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json', path], check=True,
                                     capture_output=True, text=True).stdout)
    return [s['name'] for s in info.get('snapshots', [])]


def test_a_module_on_a_host_without_the_libraries_says_which_to_install(fleet, tmp_path):
    bare = fleet.bare_hosts[0]
    (libvirt_r, qmp_r), proc = run_tasks([
        {'name': 'a libvirt VM', 'vmfleet.kvm.vm_info': {}},
        {'name': 'a raw QEMU VM', 'vmfleet.kvm.snapshot_info': {'qmp_socket': fleet.hosts[0].qmp_sockets[0]}},
    ], inventory=fleet.inventory, hosts=bare.name, timeout=300)
    log = proc.stdout + proc.stderr
    for r, lib in ((libvirt_r, 'libvirt-python'), (qmp_r, 'qemu.qmp')):
        assert r.get('failed') is True, r
        # Ansible's missing_required_lib message: the library, the host's python, what to do
        assert 'Failed to import the required Python library (%s)' % lib in r['msg'], r['msg']
        assert bare.python in r['msg'] and 'install' in r['msg'], r['msg']
        assert 'module_stderr' not in r and 'MODULE FAILURE' not in r['msg'], r
    assert 'Traceback' not in log, log[-4000:]


def test_the_hypervisor_role_prepares_a_host_then_the_modules_work_there(fleet, tmp_path):
    bare = fleet.bare_hosts[0]
    # the simulated hosts reach no package index (their only link is to this machine): the
    # controller fetches the wheels, the role installs from them as on an air-gapped hypervisor
    wheels = tmp_path / 'wheels'
    # the exact versions the role pins, as an operator's wheel directory would hold them
    with open(os.path.join(REPO, 'roles', 'hypervisor', 'defaults', 'main.yml')) as f:
        pinned = yaml.safe_load(f)['hypervisor_pip_packages']
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '-w', str(wheels)] + pinned, check=True, timeout=900)
    play = tmp_path / 'prepare.yml'
    play.write_text(yaml.safe_dump([{
        'hosts': bare.name, 'gather_facts': False,
        # the host's python is the venv to prepare
        'roles': [{'role': 'vmfleet.kvm.hypervisor',
                   'vars': {'hypervisor_venv': fleet.bare_venv,
                            'hypervisor_pip_environment': {'PIP_NO_INDEX': '1', 'PIP_FIND_LINKS': str(wheels)}}}]}]))

    def prepare(check=False):
        proc = run_playbook(play, inventory=fleet.inventory, check=check, timeout=900)
        recap = _recap(proc.stdout).get(bare.name)
        assert proc.returncode == 0 and recap and recap['failed'] == 0, (proc.stdout + proc.stderr)[-4000:]
        return recap, proc.stdout

    # check mode predicts the installs and makes none
    recap = prepare(check=True)[0]
    assert recap['changed'] >= 1, recap
    assert subprocess.run([bare.python, '-c', 'import libvirt'], capture_output=True, check=False).returncode != 0
    recap, out = prepare()
    assert recap['changed'] >= 1, recap
    assert 'set ansible_python_interpreter=%s' % bare.python in out, out[-3000:]
    # idempotent, and check mode agrees
    for check in (False, True):
        recap, out = prepare(check=check)
        assert recap['changed'] == 0, (check, out[-3000:])

    (libvirt_r, qmp_r), proc = run_tasks([
        {'name': 'libvirt', 'vmfleet.kvm.vm_info': {}},
        {'name': 'a raw QEMU VM', 'vmfleet.kvm.snapshot_info': {'qmp_socket': fleet.hosts[0].qmp_sockets[0]}},
    ], inventory=fleet.inventory, hosts=bare.name, timeout=300)
    assert not libvirt_r.get('failed') and libvirt_r['vms'] == [], libvirt_r
    assert not qmp_r.get('failed'), qmp_r


# -- every workflow over the fleet, with faults ---------------------------------------
# In each run: hv1 healthy but for its two failing VMs, hv2 healthy, hv3 unreachable (its sshd
# stopped), hv4 without libvirtd (its raw QEMU VM is worked, its domains fail as one record).
SNAP = 'fleet-ssh'
# each host's own (bind-mounted per host), where libvirt's QEMU (another user) reaches its images
MOVED = '/var/lib/libvirt/images/moved'


def _local(host, path):
    """A path of the host's mount namespace as a path of this machine."""
    for inside, here in (('/var/lib/libvirt/', host.path('lib') + '/'), ('/var/lib/vmfleet/', host.path('vmfleet') + '/')):
        if path.startswith(inside):
            return here + path[len(inside):]
    return path


def _reporting(directory):
    """The environment of a run whose fleet report goes to ``directory``."""
    return {'ANSIBLE_CALLBACKS_ENABLED': 'vmfleet.kvm.fleet_report', 'VMFLEET_REPORT_DIR': str(directory)}


def _faulty_run(fleet, tmp_path, playbook, extra, faults=True, hosts='hypervisors:!hv5'):
    """One ansible-playbook run over the fleet with the faults on; (proc, recap, fleet report)."""
    down_ssh, down_libvirt = fleet.hosts[2], fleet.hosts[3]
    reports = tmp_path / ('report-%s-%s' % (playbook, extra.get('vmfleet_phase', '')))
    if faults:
        down_ssh.stop_sshd()
        down_libvirt.stop_libvirtd()
    try:
        start = time.monotonic()
        proc = run_playbook('vmfleet.kvm.' + playbook, inventory=fleet.inventory, timeout=900,
                            extra_vars=dict(extra, vmfleet_hosts=hosts),
                            env=_reporting(reports))
        print('%s %s over the fleet: %.1f s' % (playbook, extra.get('vmfleet_phase', ''), time.monotonic() - start))
    finally:
        if faults:
            down_ssh.start_sshd()
            down_libvirt.start_libvirtd()
    out = proc.stdout + proc.stderr
    assert 'Traceback' not in out, out[-6000:]
    files = sorted(os.listdir(str(reports)))
    # one run: its HTML page, its JSON and its text summary, under one name
    assert [os.path.splitext(f)[1] for f in files] == ['.html', '.json', '.txt'], files
    assert files[0].startswith(playbook) and len(set(os.path.splitext(f)[0] for f in files)) == 1, files
    for f in files:
        assert os.stat(str(reports / f)).st_mode & 0o777 == 0o600
    report = json.loads((reports / files[1]).read_text())
    summary = (reports / files[2]).read_text()
    print(summary)
    assert summary in proc.stdout, summary
    return proc, _recap(proc.stdout), report, summary


def _check_faults(fleet, proc, recap, report, summary, failing=('crashed',)):
    """What every faulty run must say: the run failed, naming each bad host and VM and why."""
    hv1, hv2, hv3, hv4 = fleet.hosts
    out = proc.stdout + proc.stderr
    tail = summary + out[-6000:]
    assert proc.returncode != 0, tail
    assert recap[hv2.name]['failed'] == 0 and recap[hv2.name]['unreachable'] == 0, (recap, tail)
    assert recap[hv1.name]['failed'] == 1, (recap, tail)
    assert recap[hv3.name]['unreachable'] == 1, (recap, tail)
    assert recap[hv4.name]['failed'] == 1, (recap, tail)
    assert re.search(r'\[%s\]: UNREACHABLE!' % hv3.name, out), tail
    m = re.search(r'fatal: \[%s\]: FAILED! => (.*)' % hv4.name, out)
    assert m and 'qemu:///system: cannot connect to libvirt at qemu:///system' in m.group(1), tail
    m = re.search(r'fatal: \[%s\]: FAILED! => (.*)' % hv1.name, out)
    assert m and 'failed on %d VM(s) of %s' % (len(failing), hv1.name) in m.group(1), tail
    failing = [hv1.dead_sockets[0] if name == 'crashed' else '%s-%s' % (hv1.ns, name) for name in failing]
    for name in failing:
        assert name in m.group(1), (name, m.group(1))
    # the fleet's report on the controller: every host and VM, with why
    hosts = report['hosts']
    assert hosts[hv2.name]['status'] == 'ok' and hosts[hv3.name]['status'] == 'unreachable', hosts
    assert hosts[hv1.name]['status'] == hosts[hv4.name]['status'] == 'failed', hosts
    assert 'ssh' in hosts[hv3.name]['msg'] and hosts[hv3.name]['vms'] == [], hosts[hv3.name]
    vms = dict((v['vm'], v) for h in hosts.values() for v in h['vms'])
    for name in failing:
        assert vms[name]['status'] == 'failed', vms
    assert vms['qemu:///system']['status'] == 'failed' and 'libvirt' in vms['qemu:///system']['msg'], vms
    for h in (hv1, hv2, hv4):
        took = hosts[h.name]['workflows'][0]['duration_s']
        assert took and float(took) > 0, hosts[h.name]
        assert re.search(r'^  %s +%s ' % (h.name, hosts[h.name]['status']), summary, re.M), summary
    return vms


def _healthy_targets(fleet):
    """The VMs the faulty runs work: all of hv1 and hv2 but the failing ones, and hv4's raw QEMU VM."""
    hv1, hv2, hv3, hv4 = fleet.hosts
    ts = [t for h in (hv1, hv2) for t in host_targets(h) if not t.vm.name.endswith('-rawonly')]
    return ts + [t for t in host_targets(hv4) if t.backend == 'qemu']


@pytest.fixture(scope='module')
def snapshotted(fleet, tmp_path_factory):
    """pre_upgrade_snapshot over the fleet with its faults: (proc, recap, report, summary)."""
    # mode internal: the raw-only VM is the one no disk of which can hold that snapshot (auto would overlay it)
    return _faulty_run(fleet, tmp_path_factory.mktemp('pre'), 'pre_upgrade_snapshot',
                       {'vmfleet_snapshot_name': SNAP, 'vmfleet_snapshot_mode': 'internal'})


def test_pre_upgrade_snapshot_over_the_fleet_with_faults(fleet, snapshotted):
    proc, recap, report, summary = snapshotted
    vms = _check_faults(fleet, proc, recap, report, summary, failing=('rawonly', 'crashed'))
    hv1, hv2, hv3, hv4 = fleet.hosts
    assert 'hv5' not in recap, recap
    assert 'no disk of this VM can hold an internal snapshot' in vms['%s-rawonly' % hv1.ns]['msg'], vms
    for t in _healthy_targets(fleet):
        r = vms[t.vm.name]
        assert r['status'] == 'ok' and r['changed'] is True, r
        assert r['state_before'] == r['state_after'] == 'running' and r['paused_ms'] is not None, r
        for disk in ('root', 'data'):
            assert 'vmfleet-' + SNAP in _snapshots(t.vm.disk_path(disk)), (t.vm.name, disk)
    # each host keeps its own report too
    for h in (hv1, hv2):
        own = json.loads(open(h.path('vmfleet', 'reports', 'pre_upgrade_snapshot.json')).read())
        assert own['host'] == h.name and sorted(r['vm'] for r in own['vms']) == sorted(
            [vm.name for vm in h.vms] + h.dead_sockets), own
    assert not os.path.exists(hv3.path('vmfleet', 'reports', 'pre_upgrade_snapshot.json'))
    for t in host_targets(hv3):
        assert 'vmfleet-' + SNAP not in _snapshots(t.vm.disk_path('root'))
    for h in fleet.hosts:
        for t in host_targets(h):
            t.wait_counter(t.counter() + RUN_ON, timeout=120)


def test_rollback_over_the_fleet_with_faults(fleet, snapshotted, tmp_path):
    targets = _healthy_targets(fleet)
    last = dict((t.vm.name, (t.serial_size(), t.counter())) for t in targets)
    proc, recap, report, summary = _faulty_run(fleet, tmp_path, 'snapshot_rollback', {'vmfleet_snapshot_name': SNAP})
    vms = _check_faults(fleet, proc, recap, report, summary, failing=('rawonly', 'crashed'))
    for t in targets:
        assert vms[t.vm.name]['status'] == 'ok' and vms[t.vm.name]['changed'] is True, vms[t.vm.name]
        # the guest went back to the snapshot's moment and runs on from there
        offset, before = last[t.vm.name]
        after = t.counters_after_going_back(offset, before)
        assert after[0] < before and after[-1] > after[0], (t.vm.name, before, after)


def test_cleanup_over_the_fleet_with_faults(fleet, snapshotted, tmp_path):
    hv1, hv2, hv3, hv4 = fleet.hosts
    proc, recap, report, summary = _faulty_run(fleet, tmp_path, 'snapshot_cleanup', {'vmfleet_snapshot_name': SNAP})
    vms = _check_faults(fleet, proc, recap, report, summary)
    # a VM without the snapshot: nothing to delete, no failure
    rawonly = vms['%s-rawonly' % hv1.ns]
    assert rawonly['status'] == 'ok' and rawonly['changed'] is False, rawonly
    for t in _healthy_targets(fleet):
        assert vms[t.vm.name]['status'] == 'ok' and vms[t.vm.name]['changed'] is True, vms[t.vm.name]
        assert 'vmfleet-' + SNAP not in _snapshots(t.vm.disk_path('root')), t.vm.name


def test_storage_migration_over_the_fleet_with_faults(fleet, tmp_path):
    hv1, hv2, hv3, hv4 = fleet.hosts
    targets = _healthy_targets(fleet) + [t for t in host_targets(hv1) if t.vm.name.endswith('-rawonly')]
    written = dict((t.vm.name, t.disk_counter('root')) for t in targets
                   if t.backend == 'qemu' and not t.vm.name.endswith('-rawonly'))
    proc, recap, report, summary = _faulty_run(fleet, tmp_path, 'storage_migration', {'vmfleet_target_dir': MOVED, 'storage_migration_per_vm_dir': True})
    vms = _check_faults(fleet, proc, recap, report, summary)
    host_of = dict((vm.name, h) for h in fleet.hosts for vm in h.vms)
    for t in targets:
        r = vms[t.vm.name]
        assert r['status'] == 'ok' and r['changed'] is True, r
        h = host_of[t.vm.name]
        moved = next(m for m in json.loads(open(h.path('vmfleet', 'reports', 'storage_migration.json')).read())['vms']
                     if m['vm'] == t.vm.name)['moved']
        assert moved and all(m['target'].startswith(MOVED + '/') and m['on_target'] for m in moved), moved
        if t.vm.name in written:
            # the root disk runs on its new image, which the guest goes on writing
            root = next(m for m in moved if m['disk'] == 'root')
            new = _local(h, root['target'])
            before = written[t.vm.name]
            end = time.time() + 120
            while disk_counter(new, 'qcow2') <= before and time.time() < end:
                time.sleep(0.5)
            assert disk_counter(new, 'qcow2') > before, (t.vm.name, before)
    assert not os.path.exists(_local(hv3, MOVED))


def test_host_maintenance_rolling_over_the_fleet_with_faults(fleet, tmp_path):
    hv1, hv2, hv3, hv4 = fleet.hosts
    targets = _healthy_targets(fleet) + [t for t in host_targets(hv1) if t.vm.name.endswith('-rawonly')]
    before = dict((t.vm.name, t.counter()) for t in targets)
    # save, two hosts at a time: hv1+hv2, then hv3 (unreachable) + hv4 (no libvirtd)
    proc, recap, report, summary = _faulty_run(fleet, tmp_path, 'host_maintenance',
                                               {'vmfleet_phase': 'save', 'vmfleet_serial': 2})
    assert proc.stdout.count('PLAY [') == 2, proc.stdout[-3000:]  # two batches
    vms = _check_faults(fleet, proc, recap, report, summary)
    for t in targets:
        r = vms[t.vm.name]
        assert r['status'] == 'ok' and r['state_after'] in ('shutoff', 'gone', 'absent', 'unreachable'), r
    # restore one host at a time, stopping at the first batch with a failed host: hv3 is still down,
    # so hv4 is never reached and says so in the report
    fleet.hosts[2].stop_sshd()
    try:
        proc = run_playbook('vmfleet.kvm.host_maintenance', inventory=fleet.inventory, timeout=900,
                            extra_vars=dict(vmfleet_phase='restore', vmfleet_serial=1, vmfleet_max_fail_percentage=0,
                                            vmfleet_hosts='hypervisors:!hv5'),
                            env=_reporting(tmp_path / 'rolling'))
    finally:
        fleet.hosts[2].start_sshd()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'Traceback' not in out, out[-4000:]
    recap = _recap(proc.stdout)
    assert recap[hv1.name]['failed'] == recap[hv2.name]['failed'] == 0 and recap[hv3.name]['unreachable'] == 1, recap
    assert hv4.name not in recap, recap
    rolling = json.loads(next((tmp_path / 'rolling').glob('*.json')).read_text())
    assert rolling['hosts'][hv4.name]['status'] == 'not run', rolling['hosts']
    assert rolling['totals']['hosts_not_run'] == 1, rolling['totals']
    # the rest of the fleet, with the faults gone
    proc = run_playbook('vmfleet.kvm.host_maintenance', inventory=fleet.inventory, timeout=900,
                        extra_vars=dict(vmfleet_phase='restore', vmfleet_hosts='hv3:hv4'))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # every saved guest runs on from where it was saved
    for t in targets:
        t.wait_counter(before[t.vm.name] + RUN_ON, timeout=180)
    for h in fleet.hosts:
        for t in host_targets(h):
            t.wait_counter(t.counter() + RUN_ON, timeout=180)


# -- interrupted and concurrent runs (on hv2 alone, its two VMs) ------------------------
def _progress(host, playbook):
    path = host.path('vmfleet', 'reports', '%s.progress.json' % playbook)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _start_when_running(fleet, host, playbook, extra):
    """Start the playbook on ``host`` and return once its background job works on the VMs
    (its progress file says so, not finished): the Popen."""
    path = host.path('vmfleet', 'reports', '%s.progress.json' % playbook)
    if os.path.exists(path):
        os.unlink(path)
    proc = start_playbook('vmfleet.kvm.' + playbook, inventory=fleet.inventory,
                          extra_vars=dict(extra, vmfleet_hosts=host.name))
    end = time.monotonic() + 300
    while time.monotonic() < end:
        state = _progress(host, playbook)
        if state and state.get('total'):
            assert not state['finished'], ('too late: the job had finished', state)
            return proc
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        time.sleep(0.05)
    raise AssertionError('the job of %s never started on %s' % (playbook, host.name))


def _converged(fleet, host, playbook, extra):
    proc = run_playbook('vmfleet.kvm.' + playbook, inventory=fleet.inventory, timeout=900,
                        extra_vars=dict(extra, vmfleet_hosts=host.name))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and 'Traceback' not in out, out[-4000:]
    report = json.loads(open(host.path('vmfleet', 'reports', '%s.json' % playbook)).read())
    assert sorted(r['vm'] for r in report['vms'] if r['status'] == 'ok') == sorted(vm.name for vm in host.vms), report
    return report


def _no_half_made(host):
    """Nothing partial left under the host's state: no save image, memory file or journal half-written."""
    leftovers = []
    for root, _dirs, files in os.walk(host.path('vmfleet')):
        leftovers += [os.path.join(root, f) for f in files if f.endswith(('.partial', '.tmp')) or '.partial.' in f]
    assert not leftovers, leftovers


def _disk_files(host, t):
    """{disk: the image it runs on now}, as paths of this machine (a host's /var/lib/vmfleet is its own)."""
    if t.backend == 'libvirt':
        lines = host.virsh('domblklist', t.vm.name).stdout.split('\n')[2:]
        files = dict(line.split(None, 1) for line in lines if line.strip())
        files = {'root': files['vda'], 'data': files['vdb']}
    else:
        # qdev: the device id, or its QOM path /machine/peripheral/<id>/virtio-backend
        files = dict((b['qdev'].split('/')[3] if b['qdev'].startswith('/machine/peripheral/') else b['qdev'],
                      b['inserted']['file']) for b in t.qmp('query-block') if b.get('inserted'))
        files = dict((k, v) for k, v in files.items() if k in ('root', 'data'))
    return dict((k, _local(host, v)) for k, v in files.items())


def _held_snapshots(host, t):
    return dict((disk, _snapshots(path)) for disk, path in _disk_files(host, t).items())


def _killed_then_again(fleet, host, playbook, extra):
    """SIGKILL of ansible-playbook while the host's background job works; then the same
    command at once. The job goes on alone, the re-run waits for it VM by VM (the lock)."""
    proc = _start_when_running(fleet, host, playbook, extra)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return _converged(fleet, host, playbook, extra)


def _module_processes(module):
    """How many ``module`` runs are under way on the hosts (the module's own process, not its async wrapper)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().decode('utf-8', 'replace').split('\0')
        except OSError:
            continue  # gone meanwhile
        count += any(a.endswith('/AnsiballZ_%s.py' % module) for a in argv) and not any('async_wrapper' in a for a in argv)
    return count


def _at_once(fleet, host, playbook, extra, module):
    """Two runs launched together (two AWX jobs) over the same VMs. So that they surely
    overlap, the test holds every VM's lock until both runs' jobs are under way on the
    host (both waiting for it), then lets go: the runs take turns VM by VM, both end well."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common import vm_lock
    with contextlib.ExitStack() as held:
        for vm in host.vms:
            conn = dict(domain=vm.name, uri='qemu:///system') if isinstance(vm, LibvirtGuest) else dict(qmp_socket=vm.qmp_socket)
            held.enter_context(vm_lock.vm_locked(conn, 'the test, until both runs wait', 5, vm.name))
        before = _module_processes(module)
        runs = [start_playbook('vmfleet.kvm.' + playbook, inventory=fleet.inventory,
                               extra_vars=dict(extra, vmfleet_hosts=host.name)) for _run in range(2)]
        end = time.monotonic() + 300
        while _module_processes(module) < before + 2:
            assert time.monotonic() < end and all(r.poll() is None for r in runs), \
                [r.communicate()[0][-3000:] for r in runs if r.poll() is not None]
            time.sleep(0.2)
    for r in runs:
        out = r.communicate(timeout=900)[0]
        assert r.returncode == 0 and 'Traceback' not in out, out[-4000:]
    report = json.loads(open(host.path('vmfleet', 'reports', '%s.json' % playbook)).read())
    assert sorted(r['vm'] for r in report['vms'] if r['status'] == 'ok') == sorted(vm.name for vm in host.vms), report
    return report


def test_pre_upgrade_snapshot_killed_mid_run_then_run_again_converges(fleet):
    host = fleet.hosts[1]
    targets = host_targets(host)
    before = dict((t.vm.name, t.counter()) for t in targets)
    _killed_then_again(fleet, host, 'pre_upgrade_snapshot', {'vmfleet_snapshot_name': 'killed'})
    _no_half_made(host)
    for t in targets:
        for disk, names in _held_snapshots(host, t).items():
            assert names.count('vmfleet-killed') == 1, (t.vm.name, disk, names)
        t.wait_counter(before[t.vm.name] + RUN_ON, timeout=180)


@pytest.mark.parametrize('playbook', ['snapshot_rollback', 'snapshot_cleanup'])
def test_two_runs_at_once_on_the_same_vms_take_turns(fleet, playbook):
    host = fleet.hosts[1]
    targets = host_targets(host)
    _at_once(fleet, host, playbook, {'vmfleet_snapshot_name': 'killed'}, 'fleet_snapshot')
    _no_half_made(host)
    for t in targets:
        for disk, names in _held_snapshots(host, t).items():
            # reverted twice, one after the other, it still holds it; deleted once, it is gone
            assert names.count('vmfleet-killed') == (playbook == 'snapshot_rollback'), (t.vm.name, disk, names)
        t.wait_counter(t.counter() + RUN_ON, timeout=180)


def test_storage_migration_killed_mid_run_then_run_again_converges(fleet):
    host = fleet.hosts[1]
    targets = host_targets(host)
    written = dict((t.vm.name, t.disk_counter('root')) for t in targets if t.backend == 'qemu')
    before = dict((t.vm.name, t.counter()) for t in targets)
    _killed_then_again(fleet, host, 'storage_migration', {'vmfleet_target_dir': '/var/lib/libvirt/images/killed', 'storage_migration_per_vm_dir': True})
    _no_half_made(host)
    for t in targets:
        files = _disk_files(host, t)
        assert all(f.startswith(_local(host, '/var/lib/libvirt/images/killed/')) for f in files.values()), files
        if t.vm.name in written:
            # the guest's writes before the move are on the new image, and it goes on writing there
            end = time.time() + 120
            while disk_counter(files['root'], 'qcow2') <= written[t.vm.name] and time.time() < end:
                time.sleep(0.5)
            assert disk_counter(files['root'], 'qcow2') > written[t.vm.name], t.vm.name
        t.wait_counter(before[t.vm.name] + RUN_ON, timeout=180)


def test_host_maintenance_save_killed_mid_run_then_run_again_converges_and_two_restores_take_turns(fleet):
    host = fleet.hosts[1]
    targets = host_targets(host)
    extra = {'vmfleet_phase': 'save', 'vmfleet_save_dir': '/var/lib/vmfleet/save-killed'}
    before = dict((t.vm.name, t.counter()) for t in targets)
    _killed_then_again(fleet, host, 'host_maintenance', extra)
    _no_half_made(host)
    saved = json.loads(open(host.path('vmfleet', 'save-killed', 'saved-vms.json')).read())
    assert sorted(v['vm'] for v in saved['vms']) == sorted(before), saved
    report = _at_once(fleet, host, 'host_maintenance', dict(extra, vmfleet_phase='restore'), 'fleet_maintenance')
    assert all(r['state_after'] == 'running' for r in report['vms']), report
    # nothing lost: each guest runs on from its save
    for t in targets:
        t.wait_counter(before[t.vm.name] + RUN_ON, timeout=180)


def test_a_run_that_cannot_get_a_vm_in_its_timeout_fails_naming_the_holder(fleet, tmp_path):
    from ansible_collections.vmfleet.kvm.plugins.module_utils.common import vm_lock
    host = fleet.hosts[1]
    raw = next(vm for vm in host.vms if not isinstance(vm, LibvirtGuest))
    with vm_lock.vm_locked(dict(qmp_socket=raw.qmp_socket), 'an AWX job (test)', 5, raw.name):
        proc = run_playbook('vmfleet.kvm.pre_upgrade_snapshot', inventory=fleet.inventory, timeout=900,
                            extra_vars=dict(vmfleet_snapshot_name='busy', vmfleet_hosts=host.name,
                                            vmfleet_vms=[raw.qmp_socket], pre_upgrade_snapshot_timeout=20))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'Traceback' not in out, out[-4000:]
    assert re.search(r"VM '%s' is being changed by pid %d on this host \(an AWX job \(test\)" % (raw.name, os.getpid()),
                     out), out[-4000:]
    t = Target(raw, 'qemu')
    assert all('vmfleet-busy' not in names for names in _held_snapshots(host, t).values())


# -- AWX: the playbooks run as a job template runs them ----------------------------------
def test_every_playbook_through_ansible_runner_as_awx_runs_a_sliced_job(fleet, tmp_path):
    """A private data dir as AWX writes one (inventory, extra vars from a file, the project
    with a playbook importing the collection's, no prompt), run by ansible-runner as a job
    template of slice count 2 runs: two jobs at once, each limited to every second host; the
    job events carry each VM's result and set_stats reaches each slice's artifacts. Both
    slices of pre_upgrade_snapshot take one rollback point; host_evacuate refuses to run
    sliced, saying why."""
    import ansible_runner
    from rig.ansible_run import ansible_env

    hosts = fleet.hosts[1:3]
    pattern = ':'.join(h.name for h in hosts)
    # slice k of 2: every second host from the k-th (AWX's order: by name)
    slices = [hosts[k::2] for k in range(2)]
    pdd = tmp_path / 'awx'
    (pdd / 'inventory').mkdir(parents=True)
    (pdd / 'inventory' / 'hosts.yml').write_text(open(fleet.inventory).read())
    (pdd / 'project').mkdir()
    (pdd / 'env').mkdir()
    env = ansible_env(env=_reporting(tmp_path / 'reports'))
    (pdd / 'env' / 'envvars').write_text(yaml.safe_dump(dict((k, env[k]) for k in (
        'ANSIBLE_COLLECTIONS_PATH', 'ANSIBLE_PYTHON_INTERPRETER', 'ANSIBLE_CALLBACKS_ENABLED', 'VMFLEET_REPORT_DIR',
        'PATH'))))
    # the slices are jobs of one workflow job (AWX gives each its own awx_job_id)
    workflow_job = 500
    point = 'pre-upgrade-wf%d' % workflow_job
    runs = [
        ('pre_upgrade_snapshot', dict()),
        ('snapshot_rollback', dict(vmfleet_snapshot_name=point)),
        ('snapshot_cleanup', dict(vmfleet_snapshot_name=point)),
        ('storage_migration', dict(vmfleet_target_dir='/var/lib/libvirt/images/awx', storage_migration_per_vm_dir=True)),
        ('host_maintenance', dict(vmfleet_phase='save', vmfleet_save_dir='/var/lib/vmfleet/save-awx')),
        ('host_maintenance', dict(vmfleet_phase='restore', vmfleet_save_dir='/var/lib/vmfleet/save-awx')),
    ]
    begin = time.monotonic()
    for i, (playbook, extra) in enumerate(runs):
        (pdd / 'project' / (playbook + '.yml')).write_text(
            '- name: %s\n  ansible.builtin.import_playbook: vmfleet.kvm.%s\n' % (playbook, playbook))
        # a survey's answers: text, lists as a textarea's lines
        (pdd / 'env' / 'extravars').write_text(yaml.safe_dump(dict(extra, vmfleet_hosts=pattern)))
        start = time.monotonic()
        started = [ansible_runner.run_async(
            private_data_dir=str(pdd), playbook=playbook + '.yml', ident='job%d-slice%d' % (i, k), quiet=True,
            timeout=900, limit=','.join(h.name for h in part),
            extravars=dict(awx_job_id=1000 + 10 * i + k, awx_workflow_job_id=workflow_job))
            for k, part in enumerate(slices)]
        for thread, _runner in started:
            thread.join()
        took = time.monotonic() - start
        print('%s %s through ansible-runner, 2 slices at once: %.1f s' % (playbook, extra.get('vmfleet_phase', ''), took))
        for k, (part, (_thread, r)) in enumerate(zip(slices, started)):
            stdout = r.stdout.read()
            assert r.status == 'successful' and r.rc == 0, stdout[-4000:]
            events = list(r.events)
            # each VM's record rides on the job events (what AWX shows per host and task)
            records = {}
            for e in events:
                if e['event'] in ('runner_on_ok', 'runner_item_on_ok') and \
                        e['event_data'].get('task_action') == 'vmfleet.kvm.fleet_progress':
                    res = e['event_data'].get('res') or {}
                    for one in [res] + list(res.get('results') or []):
                        if (one.get('result') or {}).get('vms') is not None:
                            records[e['event_data']['host']] = one['result']['vms']
            # the slice worked on its hosts and on no other
            assert sorted(records) == sorted(h.name for h in part), (k, sorted(records))
            # set_stats: the artifacts AWX keeps with each slice's job
            stats = next(e for e in events if e['event'] == 'playbook_on_stats')['event_data']['artifact_data']
            assert sorted(stats['vmfleet_' + playbook]) == sorted(h.name for h in part), stats
            for h in part:
                assert sorted(v['vm'] for v in records[h.name]) == sorted(vm.name for vm in h.vms), records
                assert all(v['status'] == 'ok' for v in records[h.name]), records[h.name]
                if playbook == 'pre_upgrade_snapshot':
                    # every slice named the point for the workflow job, not for its own job
                    assert {v['snapshot'] for v in records[h.name]} == {'vmfleet-' + point}, records[h.name]
                report = stats['vmfleet_' + playbook][h.name]
                assert sorted(v['vm'] for v in report['vms']) == sorted(vm.name for vm in h.vms) and not report['failed']
            assert json.loads((pdd / 'artifacts' / ('job%d-slice%d' % (i, k)) / 'rc').read_text()) == 0

    # host_evacuate sliced: each slice would move its VMs among its own hosts while the other
    # evacuates its own; it refuses before touching anything
    (pdd / 'project' / 'host_evacuate.yml').write_text(
        '- name: host_evacuate\n  ansible.builtin.import_playbook: vmfleet.kvm.host_evacuate\n')
    (pdd / 'env' / 'extravars').write_text(yaml.safe_dump(dict(vmfleet_hosts=pattern)))
    for k, part in enumerate(slices):
        r = ansible_runner.run(private_data_dir=str(pdd), playbook='host_evacuate.yml', ident='evacuate-slice%d' % k,
                               quiet=True, timeout=300, limit=','.join(h.name for h in part))
        stdout = r.stdout.read()
        assert r.status == 'failed', stdout[-4000:]
        assert 'host_evacuate runs on 1 of the 2 hosts of \'%s\' (a job slice or a limit)' % pattern in stdout, stdout[-4000:]
        assert 'slice count 1' in stdout and 'Move the VMs' not in stdout, stdout[-4000:]
    print('the sliced jobs, all playbooks: %.1f s' % (time.monotonic() - begin))
    for h in hosts:
        # nothing was left behind on the hosts that refused: the VMs run on where they were
        for t in host_targets(h):
            t.wait_counter(t.counter() + RUN_ON, timeout=180)
