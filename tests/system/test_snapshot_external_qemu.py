"""vmfleet.kvm.snapshot mode: external (the default mode: auto picks it) on a raw QEMU VM
whose disks are raw files: overlays made and switched to over QMP, a revert that brings
the guest's RAM and disks back, a chain whose middle and top are committed into the
original images live, and a delete killed in the middle of its commit that a re-run
finishes without losing a write."""

import glob
import json
import os
import re
import subprocess
import time


from rig.ansible_run import failed, kill_play, ok, run_one, start_playbook, write_play
from rig.guest import disk_counter, seq_records, wait_serial

DISKS = (('root', 'raw', 16), ('data', 'raw', 64))


def _boot(vms, **kw):
    t = vms.boot('qemu', disks=DISKS, memory_mib=192, **kw)
    t.memdir = os.path.join(t.vm.workdir, 'mem')
    os.makedirs(t.memdir)
    return t


def _snap(t, **kw):
    kw.setdefault('memory_dir', t.memdir)
    return t.task('snapshot', **kw)


def _files(t):
    """{disk: the file QEMU runs it on now}, asked of QEMU itself."""
    out = {}
    for dev in t.qmp('query-block'):
        m = re.match(r'/machine/peripheral/([^/]+)/', dev.get('qdev', ''))
        if m and dev.get('inserted'):
            out[m.group(1)] = dev['inserted']['file']
    return out


def _overlays(t):
    return sorted(glob.glob(os.path.join(t.vm.workdir, '*.qcow2')))


def _counter_via(path, fmt):
    """The counter the guest last wrote to a disk, read through ``path`` (an overlay reads its base below it)."""
    return disk_counter(path, fmt) or 0


def test_external_cycle_on_raw_disks(vms):
    t = _boot(vms)
    base = dict((d, t.vm.disk_path(d)) for d in ('root', 'data'))
    t.wait_counter(3)
    # check mode predicts and touches nothing
    pred = run_one(_snap(t, name='pre'), check=True)
    assert ok(pred)['changed'] is True and pred['mode'] == 'external', pred
    assert os.listdir(t.memdir) == [] and _overlays(t) == []

    before = t.counter()
    r = ok(run_one(_snap(t, name='pre')))
    after = t.counter()
    assert r['changed'] is True and r['mode'] == 'external', r
    assert 'raw' in r['mode_reason'], r['mode_reason']
    assert 0 < r['paused_ms'] < 2000, r['paused_ms']
    snap = r['snapshot']
    assert sorted(snap['disks']) == ['data', 'root'] and snap['consistent'] is True, snap
    assert snap['bases'] == base, snap
    ov = snap['overlays']
    assert _files(t) == ov
    for p in list(ov.values()) + [snap['memory_file']] + glob.glob(os.path.join(t.memdir, '*.json')):
        assert os.stat(p).st_mode & 0o777 == 0o600, p
    [listed] = ok(run_one(t.task('snapshot_info', name='pre', memory_dir=t.memdir)))['snapshots']
    assert listed['mode'] == 'external' and listed['consistent'] is True and listed['overlays'] == ov, listed
    assert ok(run_one(_snap(t, name='pre')))['changed'] is False

    # the guest runs on and writes: into the overlays, the raw images keep the snapshot's moment
    frozen = _counter_via(base['root'], 'raw')
    assert before - 1 <= frozen <= after + 1, (before, frozen, after)
    ran_to = t.wait_counter(after + 8)
    assert _counter_via(ov['root'], 'qcow2') >= after + 5
    assert _counter_via(base['root'], 'raw') == frozen

    # a storage move (the storage_migration role's module, remove_sources): each overlay copied shallow
    # to another directory over the same raw image, the record pointed at the copies, the old overlays gone
    ov = _move_the_overlays(t, snap, base, frozen)
    ran_to = t.wait_counter(t.counter() + 2)

    # rollback: the serial counter AND the disks go back
    r = ok(run_one(_snap(t, name='pre', state='reverted')))
    assert r['changed'] is True and r['state'] == 'running' and r['route'] == 'qemu-relaunch', r
    # its memory went in through QEMU's own loader (the page bitmap written before the VM stopped)
    assert r['load']['loader'] == 'qemu' and r['load']['pages'] > 0, r.get('load')
    deadline = time.time() + 90
    while len(t.counters_after(0)) < 3 and time.time() < deadline:
        time.sleep(0.3)
    resumed = t.counters_after(0)  # a relaunched QEMU opens its serial file anew
    assert len(resumed) >= 3, resumed
    assert before <= resumed[0] - 1 <= after + 1, (before, after, resumed)
    assert resumed[-1] + 1 < ran_to, (resumed, ran_to)
    assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))
    # disk and RAM agree: the disks went back too (the counter the guest wrote past the snapshot is gone)
    on_disk = _counter_via(ov['root'], 'qcow2')
    assert resumed[0] - 1 <= on_disk <= resumed[-1] + 1 < ran_to, (on_disk, resumed, ran_to)
    assert _files(t) == ov and _counter_via(base['root'], 'raw') == frozen

    # snapshot again: a chain of two
    r = ok(run_one(_snap(t, name='post')))
    assert r['mode'] == 'external' and 'overlays' in r['mode_reason'], r
    ov2 = r['snapshot']['overlays']
    assert r['snapshot']['parent'] == 'pre' and r['snapshot']['bases'] == ov, r['snapshot']
    assert _files(t) == ov2
    later = t.wait_counter(t.counter() + 3)

    # cleanup: the middle of the chain, then its top, committed into the raw images live
    r = ok(run_one(_snap(t, name='pre', state='absent')))
    assert r['changed'] is True and r['mode'] == 'external', r
    [post] = ok(run_one(t.task('snapshot_info', memory_dir=t.memdir)))['snapshots']
    assert post['name'] == 'post' and post['bases'] == base and post['consistent'] is True, post
    assert not any(os.path.exists(p) for p in ov.values())
    r = ok(run_one(_snap(t, name='post', state='absent')))
    assert r['changed'] is True, r
    assert _files(t) == base
    assert _overlays(t) == [] and os.listdir(t.memdir) == [] and os.listdir(t.moved) == []
    assert ok(run_one(t.task('snapshot_info', memory_dir=t.memdir)))['snapshots'] == []
    assert ok(run_one(_snap(t, name='post', state='absent')))['changed'] is False
    # the guest's later writes are in the original images, and it writes there now
    assert _counter_via(base['root'], 'raw') >= later
    now = t.counter()
    end = time.time() + 60
    while _counter_via(base['data'], 'raw') < now + 2 and time.time() < end:
        time.sleep(0.3)
    assert _counter_via(base['data'], 'raw') >= now + 2


def _move_the_overlays(t, snap, base, frozen):
    t.moved = os.path.join(t.vm.workdir, 'moved')
    os.mkdir(t.moved)
    # what cannot keep the raw image under it (a raw copy) is refused, naming the snapshot; nothing changed
    target = os.path.join(t.moved, 'root.raw')
    failed(run_one(t.task('drive_mirror', disk='root', target=target, target_format='raw',
                          journal_dir=os.path.join(t.vm.workdir, 'journal'), memory_dir=t.memdir)),
           "external snapshot 'pre'", 'qcow2', 'nothing was changed')
    assert not os.path.exists(target) and _files(t) == snap['overlays']
    r = ok(run_one({'vmfleet.kvm.fleet_storage_migration': dict(
        vms=[t.vm.qmp_socket], target_dir=t.moved, remove_sources=True, memory_dir=t.memdir,
        journal_dir=os.path.join(t.vm.workdir, 'journal'), timeout=300)}))
    [rec] = r['vms']
    assert rec['status'] == 'ok', rec
    copies = dict((d, os.path.join(t.moved, os.path.basename(f))) for d, f in snap['overlays'].items())
    assert sorted((m['disk'], m['target'], m['snapshots_carried']) for m in rec['moved']) == sorted(
        (d, f, ['pre']) for d, f in copies.items()), rec
    assert sorted(rec['sources_removed']) == sorted(snap['overlays'].values()), rec
    assert _files(t) == copies and _overlays(t) == []
    # QEMU let the old overlays go: nothing holds them open
    assert not any(n.get('file') in snap['overlays'].values() for n in t.qmp('query-named-block-nodes')), \
        t.qmp('query-named-block-nodes')
    for d, f in copies.items():
        info = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json', f], capture_output=True,
                                         text=True, check=True).stdout)
        assert info['format'] == 'qcow2' and info['full-backing-filename'] == base[d], info
    # the writes since the snapshot came along; the raw image keeps the snapshot's moment
    assert _counter_via(copies['root'], 'qcow2') > frozen + 3
    assert _counter_via(base['root'], 'raw') == frozen
    [listed] = ok(run_one(t.task('snapshot_info', name='pre', memory_dir=t.memdir)))['snapshots']
    assert listed['consistent'] is True and listed['overlays'] == copies and listed['bases'] == base, listed
    return copies


def _seq_written(t):
    with open(t.vm.serial_log, 'rb') as f:
        found = re.findall(rb'VMFLEET-SEQ (\d+)\r?\n', f.read())
    return int(found[-1]) if found else 0


def test_delete_killed_mid_commit_rerun_loses_no_write(vms, tmp_path):
    t = _boot(vms, cmdline_extra='vmfleet.writer=vdb')
    wait_serial(t.vm.serial_log, r'VMFLEET-SEQ [1-9]\d*00\r?\n', 60)
    data = t.vm.disk_path('data')
    r = ok(run_one(_snap(t, name='crash', memory=False)))
    assert r['mode'] == 'external' and r['snapshot']['memory_file'] is None, r
    overlay = r['snapshot']['overlays']['data']
    # the writer fills the overlay for a while: the commit has something to copy
    n = _seq_written(t)
    wait_serial(t.vm.serial_log, r'VMFLEET-SEQ %d\r?\n' % (n + 500), 120)

    play = write_play([_snap(t, name='crash', state='absent')], str(tmp_path / 'slow.yml'))
    proc = start_playbook(play, env={'VMFLEET_TEST_COMMIT_SPEED': str(16 * 1024)})
    journal = os.path.join(t.memdir, t.vm.name + '.crash.external.commit.json')
    try:
        end = time.time() + 60
        while not os.path.exists(journal) and time.time() < end:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.05)
        assert os.path.exists(journal), os.listdir(t.memdir)
        time.sleep(1.5)
    finally:
        kill_play(proc)
    with open(journal) as f:
        assert json.load(f)['disks']['data']['phase'] in ('committing', 'completing')
    assert os.path.exists(overlay)
    # killed half-way: listed as such, and nothing may be taken over it
    [listed] = ok(run_one(t.task('snapshot_info', memory_dir=t.memdir)))['snapshots']
    assert listed['consistent'] is False and 'interrupted' in listed['problem'], listed
    failed(run_one(_snap(t, name='other')), 'interrupted')

    r = ok(run_one(_snap(t, name='crash', state='absent')))
    assert r['changed'] is True, r
    assert _files(t)['data'] == data and not os.path.exists(overlay) and os.listdir(t.memdir) == []
    assert t.qmp('query-block-jobs') == []
    # no write lost: every record the guest wrote is in the raw image, 1..k without a hole
    t.pause()
    try:
        written = _seq_written(t)
        values = seq_records(data, 'raw', written + 2000)
        holes = [i + 1 for i, v in enumerate(values) if v != i + 1]
        assert values and not holes, holes[:20]
        assert len(values) >= written, (len(values), written)
    finally:
        t.resume()
    t.wait_counter(t.counter() + 1)


def test_disk_only_snapshot_reverts_by_booting_again(vms):
    t = _boot(vms)
    t.wait_counter(2)
    r = ok(run_one(_snap(t, name='cold', memory=False)))
    assert r['mode'] == 'external' and r['snapshot']['memory_file'] is None, r
    ov = r['snapshot']['overlays']
    ran_to = t.wait_counter(t.counter() + 3)
    assert _counter_via(ov['root'], 'qcow2') >= ran_to - 1
    r = ok(run_one(_snap(t, name='cold', state='reverted')))
    assert r['changed'] is True and r['booted'] is True and r['state'] == 'running', r
    # a guest booted again from its disks: its counter starts over, on the fresh overlays
    wait_serial(t.vm.serial_log, r'VMFLEET-BOOT', 120)
    deadline = time.time() + 90
    while len(t.counters_after(0)) < 2 and time.time() < deadline:
        time.sleep(0.3)
    assert t.counters_after(0)[:2] == [1, 2], t.counters_after(0)
    assert _files(t) == ov
    [listed] = ok(run_one(t.task('snapshot_info', memory_dir=t.memdir)))['snapshots']
    assert listed['consistent'] is True, listed
    assert ok(run_one(_snap(t, name='cold', state='absent')))['changed'] is True
    assert _files(t) == dict((d, t.vm.disk_path(d)) for d in ('root', 'data'))
    assert _overlays(t) == [] and os.listdir(t.memdir) == []
