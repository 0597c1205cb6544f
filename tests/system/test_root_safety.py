"""Issue #34, root-safe: the modules run as root and never run, trust or delete
what the collection did not make. Each test plays the attack (or the mistake)
through ansible-playbook on real VMs and shows it fails, says why, and changes
nothing."""

import contextlib
import json
import os
import pwd
import subprocess
import sys
import time

import pytest

from rig.ansible_run import failed, ok, run_one, run_tasks

NOBODY = pwd.getpwnam('nobody')


def _uid(pid):
    with open('/proc/%d/status' % pid) as f:
        return [int(line.split()[1]) for line in f if line.startswith('Uid:')][0]


def _root_dir(*parts):
    d = os.path.join(*parts)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    return d


@contextlib.contextmanager
def _userfaultfd_for(user):
    """An instant snapshot write-protects guest RAM with userfaultfd, which an unprivileged
    QEMU gets only through /dev/userfaultfd (vm.unprivileged_userfaultfd is 0 here): lend
    the device to ``user``'s group while the snapshot is taken."""
    dev = '/dev/userfaultfd'
    st = os.stat(dev)
    os.chown(dev, st.st_uid, user.pw_gid)
    os.chmod(dev, 0o660)
    try:
        yield
    finally:
        os.chown(dev, st.st_uid, st.st_gid)
        os.chmod(dev, st.st_mode & 0o7777)


# -- hole 1: vm_save removes only what a save image's manifest lists --

def test_save_beside_a_disk_of_its_name_is_refused_and_the_disk_intact(shared_qemu):
    t = shared_qemu
    disk = t.vm.disk_path('root')  # <dir>/root.qcow2
    path = disk[:-len('.qcow2')]   # <dir>/root: the mistake of hole 1
    before = os.stat(disk)
    c = t.counter()
    results, proc = run_tasks([t.task('vm_save', path=path, overwrite=True),
                               t.task('vm_save', path=path)])
    for r in results:
        failed(r, 'root.qcow2', 'belong to no save image', 'nothing was touched')
    assert 'Traceback' not in proc.stdout + proc.stderr
    after = os.stat(disk)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith('root.') and n != 'root.qcow2']
    t.wait_counter(c + 2)  # the guest runs on


# -- hole 2: a relaunched QEMU never has more privilege than the one it replaces --

def test_qemu_of_an_unprivileged_user_is_saved_restored_and_reverted_as_that_user(vms, workroot):
    t = vms.boot('qemu', runas='nobody')
    assert _uid(t.vm.pid) == NOBODY.pw_uid
    memdir = _root_dir(workroot, 'rs-mem-%d' % os.getpid())
    save_dir = _root_dir(workroot, 'rs-save-%d' % os.getpid())
    t.wait_counter(3)

    with _userfaultfd_for(NOBODY):
        ok(run_one(t.task('snapshot', name='rs-nobody', mode='instant', disks=['root', 'data'],
                          memory_dir=memdir)))
    at_snapshot = t.counter()
    t.wait_counter(at_snapshot + 3)
    r = ok(run_one(t.task('snapshot', name='rs-nobody', mode='instant', state='reverted', memory_dir=memdir)))
    assert r['changed'] is True
    pid = t.vm.pid
    assert _uid(pid) == NOBODY.pw_uid, 'the reverted QEMU runs as root'
    assert all(os.stat(os.path.join(memdir, n)).st_uid == 0 for n in os.listdir(memdir))

    t.wait_counter(2)
    img = os.path.join(save_dir, 'nobody.vmstate')
    ok(run_one(t.task('vm_save', path=img, channels=2)))
    assert os.stat(img).st_uid == 0 and os.stat(img).st_mode & 0o777 == 0o600
    r = ok(run_one({'vmfleet.kvm.vm_restore': {'path': img}}))
    assert _uid(r['pid']) == NOBODY.pw_uid, 'the restored QEMU runs as root'
    assert os.stat(img).st_uid == 0  # lent to QEMU for the load only
    c = t.counter()
    t.wait_counter(c + 2)

    # compressed: QEMU sends its channels to sockets of this module's
    img = os.path.join(save_dir, 'nobody-zstd.vmstate')
    ok(run_one(t.task('vm_save', path=img, channels=2, compression='zstd')))
    r = ok(run_one({'vmfleet.kvm.vm_restore': {'path': img}}))
    assert _uid(r['pid']) == NOBODY.pw_uid, 'the restored QEMU runs as root'
    c = t.counter()
    t.wait_counter(c + 2)


# -- hole 2: a QMP socket served by something that is not QEMU --

STAND_IN = r'''
import json, os, socket, sys
REPLIES = {
    'query-name': {'name': 'stand-in'},
    'query-status': {'status': 'running', 'running': True},
    'query-version': {'qemu': {'major': 10, 'minor': 0, 'micro': 0}, 'package': ''},
    'query-migrate-capabilities': [{'capability': c, 'state': False} for c in
                                   ('multifd', 'mapped-ram', 'background-snapshot', 'postcopy-ram')],
    'query-block': [], 'query-named-block-nodes': [], 'query-block-jobs': [], 'query-migrate': {},
    'query-migrate-parameters': {}, 'query-commands': [],
}
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
log = open(sys.argv[2], 'a', buffering=1)
while True:
    c, _ = s.accept()
    try:  # a client that only looks (connects and closes) must not end the stand-in
        f = c.makefile('rwb', buffering=0)
        f.write(b'{"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": ""}, '
                b'"capabilities": []}}\r\n')
        buf, dec = '', json.JSONDecoder()
        while True:  # QMP clients need not end a command with a newline: parse as a stream
            data = c.recv(65536)
            if not data:
                break
            buf += data.decode()
            while buf.strip():
                try:
                    msg, end = dec.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                log.write(msg['execute'] + '\n')
                reply = {'return': REPLIES.get(msg['execute'], {})}
                if 'id' in msg:
                    reply['id'] = msg['id']
                f.write(json.dumps(reply).encode() + b'\r\n')
    except OSError:
        pass
    c.close()
'''


@pytest.fixture
def stand_in(workroot):
    d = _root_dir(workroot, 'rs-standin-%d' % os.getpid())
    sock, log = os.path.join(d, 'qmp.sock'), os.path.join(d, 'commands.log')
    p = subprocess.Popen([sys.executable, '-c', STAND_IN, sock, log])
    end = time.monotonic() + 30
    while not os.path.exists(sock):
        assert p.poll() is None and time.monotonic() < end, 'the stand-in did not start'
        time.sleep(0.05)
    yield dict(sock=sock, log=log, dir=d)
    p.kill()
    p.wait()


def test_a_qmp_socket_served_by_no_qemu_is_refused_before_anything_runs(stand_in):
    sock = stand_in['sock']
    img = os.path.join(stand_in['dir'], 'img.vmstate')
    results, proc = run_tasks([
        {'vmfleet.kvm.vm_save': {'qmp_socket': sock, 'path': img}},
        {'vmfleet.kvm.snapshot': {'qmp_socket': sock, 'name': 'x', 'mode': 'instant', 'memory_dir': stand_in['dir']}},
    ])
    exe = os.path.realpath(sys.executable)
    failed(results[0], exe, 'not a QEMU system emulator')
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert results[1].get('failed'), results[1]
    with open(stand_in['log']) as f:
        sent = f.read().split()
    assert not [c for c in sent if c in ('migrate', 'stop', 'quit', 'transaction', 'snapshot-save')], sent
    assert sorted(os.listdir(stand_in['dir'])) == ['commands.log', 'qmp.sock']


def _manifest(path, argv, sock):
    m = dict(version=1, vm=dict(name='crafted', backend='qemu', qmp_socket=sock, uuid=None, uri=None),
             path_used='mapped-ram', why=None, channels=1, compression='none', saved_state='running',
             keep_running=False, qemu=dict(argv=argv, version='10.0.0'), ram_bytes=0, files=[])
    fd = os.open(path + '.manifest.json', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        json.dump(m, f)
    return path + '.manifest.json'


def test_a_recorded_command_line_that_is_no_qemu_or_runs_a_program_is_refused(workroot):
    d = _root_dir(workroot, 'rs-argv-%d' % os.getpid())
    sock = os.path.join(d, 'crafted.qmp')
    marker = os.path.join(d, 'ran')
    cases = [
        (['/bin/sh', '-c', 'touch %s' % marker, '-qmp', 'unix:%s,server=on' % sock], 'not a QEMU system emulator'),
        (['qemu-system-x86_64', '-netdev', 'tap,id=n0,script=/bin/true', '-qmp', 'unix:%s,server=on' % sock],
         'script=/bin/true'),
        (['qemu-system-x86_64', '-netdev', 'bridge,id=n0,br=br0', '-qmp', 'unix:%s,server=on' % sock],
         '-netdev bridge'),
    ]
    tasks = []
    for i, (argv, _words) in enumerate(cases):
        _manifest(os.path.join(d, 'img%d' % i), argv, sock)
        tasks.append({'vmfleet.kvm.vm_restore': {'path': os.path.join(d, 'img%d' % i)}})
    results, _proc = run_tasks(tasks)
    for r, (_argv, words) in zip(results, cases):
        failed(r, words, 'nothing was touched')
    failed(results[1], 'allow_exec_options')
    assert not os.path.exists(marker) and not os.path.exists(sock)


# -- hole 3: manifests and journals are trusted only as root alone wrote them --

def test_a_manifest_or_journal_others_could_write_is_refused(shared_qemu, workroot):
    t = shared_qemu
    d = _root_dir(workroot, 'rs-trust-%d' % os.getpid())
    sock = os.path.join(d, 'crafted.qmp')
    img = os.path.join(d, 'img')
    m = _manifest(img, ['qemu-system-x86_64', '-qmp', 'unix:%s,server=on' % sock], sock)
    os.chmod(m, 0o620)
    r = run_one({'vmfleet.kvm.vm_restore': {'path': img}})
    failed(r, m, '0620', 'writable by no one else')
    assert r['error'] == 'Untrusted'
    os.chmod(m, 0o600)
    os.chown(m, NOBODY.pw_uid, NOBODY.pw_gid)
    failed(run_one({'vmfleet.kvm.vm_restore': {'path': img}}), m, 'owned by uid %d' % NOBODY.pw_uid)
    os.chown(m, 0, 0)
    os.chmod(d, 0o777)
    try:
        failed(run_one({'vmfleet.kvm.vm_restore': {'path': img}}), 'the directory of manifest', d)
    finally:
        os.chmod(d, 0o755)

    # a mirror journal of another user's: the mirror does not start
    jdir = _root_dir(d, 'journal')
    journal = os.path.join(jdir, '%s--data.json' % t.vm.name)
    with open(journal, 'w') as f:
        json.dump(dict(phase='pivoted', source=t.vm.disk_path('data'), target='/etc/shadow'), f)
    os.chown(journal, NOBODY.pw_uid, NOBODY.pw_gid)
    target = os.path.join(d, 'mirror.qcow2')
    r = run_one(t.task('drive_mirror', disk='data', target=target, journal_dir=jdir))
    failed(r, journal, 'mirror journal')
    assert not os.path.exists(target)


# -- hole 6: a VM's name never leads a path out of its directory --

def test_a_vm_named_dot_dot_slash_saves_inside_save_dir(vms, workroot):
    t = vms.boot('qemu', qemu_name='../../x')
    base = _root_dir(workroot, 'rs-names-%d' % os.getpid())
    save_dir = os.path.join(base, 'a', 'b', 'save')
    t.wait_counter(2)
    r = ok(run_one({'vmfleet.kvm.fleet_maintenance': {
        'phase': 'save', 'save_dir': save_dir, 'qmp_sockets': [t.vm.qmp_socket], 'vms': [t.vm.qmp_socket],
        'channels': 1}}))
    [rec] = r['vms']
    assert rec['status'] == 'ok', rec
    assert os.path.dirname(rec['image']) == save_dir, rec['image']
    assert os.path.basename(rec['image']) == '..%2F..%2Fx.vmstate'
    # nothing was written beside save_dir's parents
    assert sorted(os.listdir(base)) == ['a'] and sorted(os.listdir(os.path.join(base, 'a'))) == ['b']
    r = ok(run_one({'vmfleet.kvm.fleet_maintenance': {'phase': 'restore', 'save_dir': save_dir}}))
    assert [v['status'] for v in r['vms']] == ['ok'], r['vms']
    c = t.counter()
    t.wait_counter(c + 2)
