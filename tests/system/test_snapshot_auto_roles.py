"""The pre-upgrade workflow on a mixed host with no new variable: mode auto gives a VM on qcow2 an
internal snapshot, and VMs on raw disks and a UEFI domain (libvirt's default raw NVRAM) external ones; the
VMs on raw disks then move to new storage (storage_migration, remove_sources) with their rollback point;
rollback takes every guest back, cleanup commits the overlays so each VM runs on its original images again,
nothing left beside them."""

import glob
import json
import os
import time

from rig.ansible_run import run_playbook, write_inventory

RAW = (('root', 'raw', 16),)


def _playbook(name, tmp_path, **extra):
    proc = run_playbook('vmfleet.kvm.' + name, inventory=write_inventory(tmp_path), extra_vars=extra)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert 'Traceback' not in proc.stdout + proc.stderr
    return proc


def _report(reports, role):
    return dict((r['vm'], r) for r in json.loads((reports / (role + '.json')).read_text())['vms'])


def _overlays(t):
    """Overlay files beside the VM's images (libvirt's revert names its fresh ones after the old)."""
    return sorted(glob.glob(os.path.join(os.path.dirname(t.vm.disk_path('root')), '*.vmfleet-*')))


def _files(t):
    """The files the VM's disks run on, as QEMU or libvirt says."""
    if t.backend == 'qemu':
        return [b['inserted']['file'] for b in t.qmp('query-block') if b.get('inserted')]
    lines = t.vm.virsh('domblklist', t.vm.name, '--details').stdout.splitlines()[2:]
    return [f.split()[3] for f in lines if f.split()[1:2] == ['disk']]


def _counters_of_relaunched(t, timeout=180):
    end = time.time() + timeout
    while len(t.counters_after(0)) < 3:
        assert time.time() < end, t.counters_after(0)
        time.sleep(0.3)
    return t.counters_after(0)


def test_pre_upgrade_rollback_cleanup_on_a_mixed_host(vms, tmp_path):
    qcow = vms.boot('qemu')
    raw_q = vms.boot('qemu', disks=RAW)
    raw_l = vms.boot('libvirt', disks=RAW)
    uefi = vms.boot('libvirt', firmware='efi')
    everyone = (qcow, raw_q, raw_l, uefi)
    names = [qcow.vm.qmp_socket, raw_q.vm.qmp_socket, raw_l.vm.name, uefi.vm.name]
    reports = tmp_path / 'reports'
    common = dict(vmfleet_snapshot_name='mixed', vmfleet_vms=names)

    _playbook('pre_upgrade_snapshot', tmp_path, pre_upgrade_snapshot_report_dir=str(reports), **common)
    report = _report(reports, 'pre_upgrade_snapshot')
    assert report[qcow.vm.name]['status'] == 'ok' and report[qcow.vm.name]['mode'] == 'internal', report
    for t in (raw_q, raw_l):
        r = report[t.vm.name]
        assert r['status'] == 'ok' and r['mode'] == 'external' and 'raw' in r['mode_reason'], r
        assert len(_overlays(t)) == 1, _overlays(t)
    r = report[uefi.vm.name]
    assert r['status'] == 'ok' and r['mode'] == 'external' and 'NVRAM' in r['mode_reason'], r
    # its qcow2 disks (the raw varstore-like disk is left out, as the report says)
    assert len(_overlays(uefi)) == 2, _overlays(uefi)

    # the VMs on raw disks move to new storage with the rollback point: each overlay copied shallow
    # over the same raw image, the old overlay removed, the raw image under it kept
    moved = os.path.join(raw_l.vm.workdir, 'moved')
    os.makedirs(moved)
    os.chmod(moved, 0o755)  # libvirt's QEMU runs as another user
    _playbook('storage_migration', tmp_path, vmfleet_vms=[raw_q.vm.qmp_socket, raw_l.vm.name], vmfleet_target_dir=moved,
              storage_migration_per_vm_dir=True, storage_migration_remove_sources=True,
              storage_migration_report_dir=str(reports))
    report = _report(reports, 'storage_migration')
    for t in (raw_q, raw_l):
        assert report[t.vm.name]['status'] == 'ok', report
        assert _overlays(t) == [] and os.path.exists(t.vm.disk_path('root')), (t.vm.name, _overlays(t))
        [on] = _files(t)
        assert on.startswith(moved + os.sep), (t.vm.name, on)

    # the guests run on past the snapshot, then all go back to it
    for t in everyone:
        t.wait_counter(t.counter() + 3)
    marks = dict((t.vm.name, (t.serial_size(), t.counter())) for t in everyone)
    _playbook('snapshot_rollback', tmp_path, **common)
    for t in everyone:
        offset, last = marks[t.vm.name]
        if t is raw_q:
            # its QEMU was started again (external revert of a raw QEMU VM): a new serial file
            resumed = _counters_of_relaunched(t)
        else:
            resumed = t.counters_after_going_back(offset, last)
        assert resumed[0] < last, (t.vm.name, resumed, last)

    # a good upgrade: cleanup keeps what the guests write from now on, in their original images
    for t in everyone:
        t.wait_counter(t.counter() + 2)
    _playbook('snapshot_cleanup', tmp_path, **common)
    for t in (raw_q, raw_l, uefi):
        assert _overlays(t) == [], (t.vm.name, _overlays(t))
    # nothing left of the moved overlays either: committed into the raw images, then removed
    assert glob.glob(os.path.join(moved, '**', '*.qcow2'), recursive=True) == []
    r = raw_q.qmp('query-block')
    files = [b['inserted']['file'] for b in r if b.get('inserted')]
    assert raw_q.vm.disk_path('root') in files, files
    xml = raw_l.vm.virsh('dumpxml', raw_l.vm.name).stdout
    assert raw_l.vm.disk_path('root') in xml and '.vmfleet-' not in xml, xml
    for t in everyone:
        now = t.wait_counter(t.counter() + 1)
        # what the guests write after the cleanup lands in their original raw images themselves
        if t in (raw_q, raw_l):
            t.wait_disk_counter('root', now + 1)
