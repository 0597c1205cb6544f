"""External snapshots of libvirt domains through ansible-playbook: the pre-upgrade cycle
(snapshot, the guest writes on, revert, snapshot again, cleanup) with mode left at its
default (auto), on the domains internal snapshots cannot serve: UEFI with libvirt's
default raw NVRAM, raw disk files, and a disk on a block device (a loop device)."""

import glob
import json
import os
import re
import subprocess
import time

import pytest

from rig.ansible_run import failed, kill_play, ok, run_one, run_tasks, start_playbook, write_play
from rig.guest import disk_counter, seq_records, wait_serial

CASES = {
    # libvirt's default UEFI domain: qcow2 disks, pflash firmware with a raw varstore
    'uefi': dict(firmware='efi', disks=(('root', 'qcow2', 64), ('data', 'qcow2', 64))),
    'raw': dict(disks=(('root', 'raw', 64), ('data', 'raw', 64))),
    'block': dict(disks=(('root', 'raw', 64),), block_disks=('root',)),
}
REASONS = {'uefi': 'NVRAM', 'raw': 'qcow2', 'block': 'qcow2'}


def _sources(vm, inactive=False):
    """{target: source} of the domain's disks, as its (live or inactive) XML gives them."""
    args = ['dumpxml', vm.name] + (['--inactive'] if inactive else [])
    xml = vm.virsh(*args).stdout
    return dict((t, s) for s, t in re.findall(
        r"<disk type='(?:file|block)' device='disk'>.*?<source (?:file|dev)='([^']+)'.*?<target dev='([^']+)'",
        xml, re.S))


def _active_counter(vm, formats):
    """The counter the guest last wrote to vda, read through the image it runs on now
    (``formats``: the original images' formats; any other is a qcow2 overlay)."""
    path = _sources(vm)['vda']
    return disk_counter(path, formats.get(path, 'qcow2')) or 0


def _left_files(vm, overlay_dir):
    """Files in the VM's directory (and overlay_dir) that the rig did not put there."""
    mine = set(p for p, _fmt in vm.disks.values()) | set(os.path.join(vm.workdir, f) for f in (
        'kernel', 'initrd.img', vm.name + '.xml', vm.name + '.serial.log', 'overlays', 'moved'))
    found = set(glob.glob(os.path.join(vm.workdir, '*')))
    if overlay_dir:
        found |= set(glob.glob(os.path.join(overlay_dir, '*')))
    return sorted(found - mine)


def _wait(fn, at_least, timeout=90):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v >= at_least:
            return v
        time.sleep(0.3)
    raise AssertionError('did not reach %d (at %s)' % (at_least, fn()))


@pytest.mark.parametrize('case', sorted(CASES))
def test_pre_upgrade_cycle(vms, case, tmp_path):
    t = vms.boot('libvirt', memory_mib=192, **CASES[case])
    vm = t.vm
    originals = _sources(vm)
    formats = dict((originals['vd%s' % chr(ord('a') + i)], fmt) for i, (_p, fmt) in enumerate(vm.disks.values()))
    memory_dir = str(tmp_path / 'mem')
    os.mkdir(memory_dir)
    overlay_dir = None
    if case == 'block':
        overlay_dir = os.path.join(vm.workdir, 'overlays')
        os.mkdir(overlay_dir, 0o755)
        os.chmod(overlay_dir, 0o755)
        # a block device has no directory to put an overlay in: refused, nothing changed
        r = run_one(t.task('snapshot', name='pre', memory_dir=memory_dir))
        failed(r, 'block device', 'overlay_dir')
        assert vm.virsh('snapshot-list', vm.name, '--name').stdout.split() == []
        assert _sources(vm) == originals
    args = dict(memory_dir=memory_dir, **({'overlay_dir': overlay_dir} if overlay_dir else {}))

    def snap(**kw):
        return t.task('snapshot', name='pre', **dict(args, **kw))

    # check mode: reported, nothing made
    [checked] = run_tasks([snap()], check=True)[0]
    assert checked['changed'] is True and checked['mode'] == 'external', checked
    assert vm.virsh('snapshot-list', vm.name, '--name').stdout.split() == []
    assert _sources(vm) == originals

    if case == 'raw':
        # a timeout leaves nothing behind, whether libvirt stopped in time or finished (then it is undone)
        r = run_one(snap(timeout=0.01))
        failed(r, "'pre'", '0.01s', 'nothing changed')
        assert vm.virsh('snapshot-list', vm.name, '--name').stdout.split() == []
        assert _sources(vm) == originals and os.listdir(memory_dir) == [] and _left_files(vm, None) == []

    # 1. snapshot (mode: auto picks external, saying why)
    t.wait_counter(3)
    before = t.counter()
    r = ok(run_one(snap()))
    after = t.counter()
    assert r['changed'] is True and r['mode'] == 'external', r
    assert REASONS[case] in r['mode_reason'], r['mode_reason']
    s = r['snapshot']
    assert s['mode'] == 'external' and s['memory_file'] and os.path.exists(s['memory_file'])
    assert sorted(s['disks']) == sorted(originals)
    assert s['bases'] == originals
    for overlay in s['overlays'].values():
        assert os.path.exists(overlay)
        if overlay_dir:
            assert overlay.startswith(overlay_dir + '/')
    assert _sources(vm) == s['overlays']
    if case == 'uefi':
        assert s['nvram_copy'] and os.stat(s['nvram_copy']).st_mode & 0o777 == 0o600
    again = ok(run_one(snap()))
    assert again['changed'] is False and again['mode'] == 'external'
    moved = os.path.join(vm.workdir, 'moved')
    if case == 'raw':
        s = _move_the_overlays(t, s, moved, memory_dir, tmp_path, formats, after)

    # 2. the guest runs on and writes
    ran_to = t.wait_counter(after + 3)
    _wait(lambda: _active_counter(vm, formats), after + 2)

    _revert_twice(t, vm, s, formats, args, case, before, after, ran_to)

    # 4. snapshot again (a chain: pre2 over what the revert left); the raw case takes it disk-only
    mem2 = case != 'raw'
    r = ok(run_one(t.task('snapshot', name='pre2', memory=mem2, **args)))
    assert r['mode'] == 'external' and 'pre' in r['mode_reason'] and bool(r['snapshot']['memory_file']) == mem2
    info = ok(run_one(t.task('snapshot_info', memory_dir=memory_dir)))['snapshots']
    assert [(x['name'], x['mode'], x['consistent']) for x in info] == [
        ('pre', 'external', True), ('pre2', 'external', True)], info
    # the guest writes on past pre2
    written = _wait(lambda: _active_counter(vm, formats), t.counter() + 2)

    # 5. cleanup: the older one first (a chain's middle), then the last
    for name in ('pre', 'pre2'):
        r = ok(run_one(t.task('snapshot', name=name, state='absent', **args)))
        assert r['changed'] is True and r['mode'] == 'external', r
    assert ok(run_one(t.task('snapshot', name='pre2', state='absent', **args)))['changed'] is False
    assert _sources(vm) == originals
    assert _sources(vm, inactive=True) == originals
    assert vm.virsh('snapshot-list', vm.name, '--name').stdout.split() == []
    assert _left_files(vm, overlay_dir) == []
    assert not os.path.isdir(moved) or os.listdir(moved) == []
    assert os.listdir(memory_dir) == []
    # the guest's later writes are in its original image, and it runs on
    base = vm.disks['root']
    assert disk_counter(base[0], base[1]) >= written
    t.wait_counter(t.counter() + 2)
    if case == 'uefi':
        _internal_on_raw_nvram(t)


def _move_the_overlays(t, s, moved, memory_dir, tmp_path, formats, after):
    """The storage_migration role's module (what the role runs) moves both disks, each on snapshot 'pre''s
    overlay, to another directory with remove_sources: each overlay is copied shallow (its raw image stays
    under it, where it is) and libvirt's record of the snapshot names the copies; the old overlays go."""
    vm = t.vm
    os.mkdir(moved)
    os.chmod(moved, 0o755)  # libvirt's QEMU runs as another user
    _wait(lambda: _active_counter(vm, formats), after + 2)  # the guest wrote into the overlays
    r = ok(run_one({'vmfleet.kvm.fleet_storage_migration': dict(
        vms=[vm.name], target_dir=moved, remove_sources=True, memory_dir=memory_dir,
        journal_dir=str(tmp_path / 'journal'), timeout=300)}))
    [rec] = r['vms']
    assert rec['status'] == 'ok', rec
    copies = dict((d, os.path.join(moved, os.path.basename(f))) for d, f in s['overlays'].items())
    assert sorted((m['disk'], m['target'], m['snapshots_carried']) for m in rec['moved']) == sorted(
        (d, f, ['pre']) for d, f in copies.items()), rec
    assert sorted(rec['sources_removed']) == sorted(s['overlays'].values()), rec
    assert _sources(vm) == copies and _sources(vm, inactive=True) == copies
    for d, f in copies.items():
        # a new top over the same raw image, which stayed where it was
        info = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json', f], capture_output=True,
                                         text=True, check=True).stdout)
        assert info['format'] == 'qcow2' and info['full-backing-filename'] == s['bases'][d], info
        assert os.path.exists(s['bases'][d]) and not os.path.exists(s['overlays'][d])
    # the guest's writes since the snapshot came along: the copy reads them, the raw image does not
    assert disk_counter(copies['vda'], 'qcow2') >= after + 2
    assert disk_counter(s['bases']['vda'], 'raw') <= after + 1
    [listed] = ok(run_one(t.task('snapshot_info', name='pre', memory_dir=memory_dir)))['snapshots']
    assert listed['consistent'] is True and listed['overlays'] == copies and listed['bases'] == s['bases'], listed
    return dict(s, overlays=copies)


def _internal_on_raw_nvram(t):
    """mode: internal on the UEFI domain: QEMU's snapshot-save of the qcow2 disks (libvirt refuses its own
    with a raw NVRAM); the RAM state holds the varstore's contents."""
    before = t.counter()
    r = ok(run_one(t.task('snapshot', name='int', mode='internal')))
    after = t.counter()
    assert r['mode'] == 'internal' and r['route'] == 'qmp', r
    try:
        ran_to = t.wait_counter(after + 3)
        offset, last = t.serial_size(), t.counter()
        r = ok(run_one(t.task('snapshot', name='int', state='reverted')))
        assert r['mode'] == 'internal' and r['state'] == 'running', r
        resumed = t.counters_after_going_back(offset, last)
        assert before <= resumed[0] - 1 <= after + 1 and resumed[0] < ran_to, (before, after, resumed)
    finally:
        assert ok(run_one(t.task('snapshot', name='int', state='absent')))['changed'] is True


def _revert_twice(t, vm, s, formats, args, case, before, after, ran_to):
    """Revert running (the serial counter goes back), then paused (the disk is read at the snapshot's moment)."""
    offset, last = t.serial_size(), t.counter()
    r = ok(run_one(t.task('snapshot', name='pre', state='reverted', **args)))
    assert r['changed'] is True and r['mode'] == 'external' and r['state'] == 'running', r
    resumed = t.counters_after_going_back(offset, last)
    assert before <= resumed[0] - 1 <= after + 1, (before, after, resumed)
    assert resumed[0] < ran_to
    # reverted while paused it stays paused: the disk is read at the snapshot's moment
    t.wait_counter(resumed[0] + 3)
    t.pause()
    nvram = None
    if case == 'uefi':
        nvram = re.search(r"<nvram[^>]*>([^<]+)</nvram>", vm.virsh('dumpxml', vm.name).stdout).group(1)
        with open(nvram, 'r+b') as f:  # a varstore changed since the snapshot
            f.seek(-1, 2)
            f.write(b'\x5a')
    try:
        r = ok(run_one(t.task('snapshot', name='pre', state='reverted', **args)))
        assert r['state'] == 'paused'
        assert before - 1 <= _active_counter(vm, formats) <= after + 1, (before, after, _active_counter(vm, formats))
        if nvram:
            assert r['nvram_restored'] is True
            with open(nvram, 'rb') as a, open(s['nvram_copy'], 'rb') as b:
                assert a.read() == b.read(), 'the NVRAM was not put back'
    finally:
        t.resume()


def test_delete_killed_then_rerun_loses_no_write(vms, tmp_path):
    """The module is killed while libvirt commits the overlay (the guest writing a numbered record after
    another the whole time); a re-run ends on the original images, and every record is there, in order."""
    t = vms.boot('libvirt', memory_mib=192, disks=(('root', 'raw', 64), ('data', 'raw', 64)),
                 cmdline_extra='vmfleet.writer=vdb')
    vm = t.vm
    originals = _sources(vm)
    args = dict(memory_dir=str(tmp_path))
    ok(run_one(t.task('snapshot', name='pre', memory=False, **args)))
    # enough records in the overlay that the commit has work to do
    wait_serial(vm.serial_log, r'VMFLEET-SEQ 3000\r?\n', 180)
    proc = start_playbook(write_play([t.task('snapshot', name='pre', state='absent', **args)],
                                     str(tmp_path / 'delete.yml')))
    try:
        end = time.time() + 60
        # kill once libvirt's commit runs (or the module is at least running, if the commit is too quick to see)
        while time.time() < end and proc.poll() is None:
            if vm.virsh('blockjob', vm.name, 'vdb', '--info', check=False).stdout.strip().startswith('Active'):
                break
            time.sleep(0.02)
    finally:
        kill_play(proc)
    r = ok(run_one(t.task('snapshot', name='pre', state='absent', **args)))
    if r['changed']:  # the kill came before libvirt's delete ended: the re-run carried on
        assert r['mode'] == 'external', r
    assert _sources(vm) == originals and _sources(vm, inactive=True) == originals
    assert vm.virsh('snapshot-list', vm.name, '--name').stdout.split() == []
    assert _left_files(vm, None) == []
    t.pause()
    try:
        written = max(int(n) for n in re.findall(r'VMFLEET-SEQ (\d+)', open(vm.serial_log).read()))
        values = seq_records(vm.disks['data'][0], 'raw', written + 2000)
        assert values == list(range(1, len(values) + 1)) and len(values) >= written, (len(values), written)
    finally:
        t.resume()
