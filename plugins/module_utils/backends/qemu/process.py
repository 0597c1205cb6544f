# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A raw QEMU as a process: its command line (read back, rewritten, started
again), its QMP socket and its end. A raw QEMU has no manager to restart it,
so a restore or a revert relaunches the command line the VM was started with."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import capabilities
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.qmp_client import QmpClient
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    OperationTimeout, Untrusted, VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until


def peer_pid(socket_path):
    """PID of the process listening on a UNIX socket, from the kernel's peer
    credentials: a connection QEMU has not accepted yet still carries them."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # a QEMU busy with another client leaves connections unaccepted: a full backlog must not hang us
    s.settimeout(10.0)
    try:
        s.connect(socket_path)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize('3i'))
        return struct.unpack('3i', creds)[0]
    except OSError:
        return None
    finally:
        s.close()


def socket_alive(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def qemu_argv(pid):
    """The command line of a running QEMU, so restore can start it again."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise VmfleetError("cannot read the command line of QEMU pid %d: %s" % (pid, e.strerror))
    return [a.decode('utf-8', 'surrogateescape') for a in raw.split(b'\0') if a]


QEMU_BINARY = re.compile(r'qemu-system-[a-z0-9_]+$')

# Options that make QEMU run another program (or load code): a relaunch would run it.
# tap/nic without script=no runs /etc/qemu-ifup; bridge always runs qemu-bridge-helper.
_EXEC_OPTIONS = ('-run-with', '-plugin', '-readconfig')
_NET_OPTIONS = ('-netdev', '-net', '-nic')


def process_owner(pid):
    """(uid, gid, supplementary gids) of process ``pid``; refused when its real,
    effective, saved and file-system ids differ (a process changing identity)."""
    ids = {}
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                key, _sep, value = line.partition(':')
                if key in ('Uid', 'Gid', 'Groups'):
                    ids[key] = [int(v) for v in value.split()]
    except (OSError, ValueError) as e:
        raise VmfleetError("cannot read the owner of QEMU pid %d: %s" % (pid, getattr(e, 'strerror', e)))
    if len(set(ids.get('Uid', []))) != 1 or len(set(ids.get('Gid', []))) != 1:
        raise Untrusted("process %d has mixed user or group ids (%s / %s)" % (pid, ids.get('Uid'), ids.get('Gid')),
                        hint="nothing was touched; a QEMU that is relaunched must run as one user")
    return ids['Uid'][0], ids['Gid'][0], ids.get('Groups', [])


def exec_options(argv):
    """The options of ``argv`` that make QEMU run a program, each as written."""
    found = []
    for i, a in enumerate(argv[1:], 1):
        opt = '-' + a.lstrip('-') if a.startswith('-') else None
        if opt in _EXEC_OPTIONS:
            found.append(opt)
        elif opt in _NET_OPTIONS and i + 1 < len(argv):
            value = argv[i + 1]
            kv = _keyvals(value)
            kind = kv.get('type') or value.split(',', 1)[0]
            if kind == 'bridge':
                found.append('%s bridge' % opt)
            elif kind == 'tap':
                for key in ('script', 'downscript'):
                    # no script= runs /etc/qemu-ifup (-ifdown), unless QEMU was handed the tap's fd
                    default = '' if 'fd' in kv or 'fds' in kv else \
                        '(default /etc/qemu-if%s)' % ('up' if key == 'script' else 'down')
                    if kv.get(key, default) not in ('no', ''):
                        found.append('%s tap,%s=%s' % (opt, key, kv.get(key, default)))
                if 'helper' in kv:
                    found.append('%s tap,helper=%s' % (opt, kv['helper']))
    return found


def check_binary(exe, uid):
    """``exe`` must be a QEMU system emulator that only root or ``uid`` (the user
    its QEMU runs as) can have written."""
    if not QEMU_BINARY.match(os.path.basename(exe)):
        raise Untrusted("%s is not a QEMU system emulator (qemu-system-*)" % exe,
                        hint="nothing was touched; the collection relaunches only QEMU")
    try:
        st = os.stat(exe)
    except OSError as e:
        raise Untrusted("the QEMU binary %s is gone (%s)" % (exe, e.strerror),
                        hint="nothing was touched; QEMU was upgraded or removed since the VM started")
    if st.st_uid not in (0, uid) or st.st_mode & 0o022:
        raise Untrusted("the QEMU binary %s is owned by uid %d with mode %04o" % (exe, st.st_uid, st.st_mode & 0o7777),
                        hint="nothing was touched; only a binary of root (or of the user QEMU runs as) that no one "
                             "else can write is run")


def check_argv(argv, exe, uid, allow_exec_options=False):
    """Refuse a command line the collection would not run again: its ``argv[0]``
    is not ``exe`` (the binary checked by check_binary), or it carries an option
    that runs a program (unless ``allow_exec_options``). Migration calls this too."""
    if not argv:
        raise Untrusted("no QEMU command line", hint="nothing was touched")
    check_binary(exe, uid)
    first = argv[0] if '/' in argv[0] else (shutil.which(argv[0]) or argv[0])
    if os.path.realpath(first) != os.path.realpath(exe):
        raise Untrusted("the command line's program %s is not the QEMU binary %s the process runs"
                        % (argv[0], exe), hint="nothing was touched")
    found = exec_options(argv)
    if found and not allow_exec_options:
        raise Untrusted("the QEMU command line carries %s, which makes QEMU run another program"
                        % ", ".join(found),
                        hint="nothing was touched; if you started that VM with it yourself, set "
                             "allow_exec_options: true to relaunch it as it is")


def relaunch_record(pid, allow_exec_options=False):
    """The checked command line of the QEMU ``pid``, and who and what runs it:
    dict(argv, exe, uid, gid, groups). A relaunch runs ``exe`` with that argv as
    that user, never with more privilege than this QEMU had."""
    uid, gid, groups = process_owner(pid)
    try:
        exe = os.readlink('/proc/%d/exe' % pid)
    except OSError as e:
        raise VmfleetError("cannot read the program of QEMU pid %d: %s" % (pid, e.strerror))
    if exe.endswith(' (deleted)'):
        raise Untrusted("QEMU pid %d runs %s, which was replaced or removed since it started" % (pid, exe),
                        hint="nothing was touched; restart the VM on the installed QEMU first")
    argv = qemu_argv(pid)
    check_argv(argv, exe, uid, allow_exec_options)
    return dict(argv=argv, exe=exe, uid=uid, gid=gid, groups=groups)


def moved_disks(argv, disks):
    """The disks whose image ``argv`` does not name: after drive_mirror
    switched a disk, the command line still names the old image."""
    text = '\0'.join(argv)
    return [d for d in disks if d.file and d.file.startswith('/') and d.file not in text]


def follow_moves(argv, moved):
    """``argv`` with each disk of ``moved`` on the image it runs on now, or None when
    the option naming a disk's old image is not found or the format changed: a
    relaunch must pair the RAM with the disks as they are (drive_mirror switched
    them). Follows -device drive= to the -blockdev chain (its format node, then
    the file node's filename=), or to a -drive file=."""
    argv = list(argv)
    opts = [(i, argv[i - 1], _keyvals(argv[i])) for i in range(1, len(argv))
            if argv[i - 1] in ('-blockdev', '--blockdev', '-drive', '--drive', '-device', '--device')]
    nodes = dict((kv.get('node-name') or kv.get('id'), (i, kind, kv)) for i, kind, kv in opts
                 if kind.lstrip('-') in ('blockdev', 'drive') and (kv.get('node-name') or kv.get('id')))
    for d in moved:
        names = [d.name, d.node_name] + [kv['drive'] for _i, kind, kv in opts
                                         if kind.lstrip('-') == 'device' and kv.get('id') == d.name and kv.get('drive')]
        found = next((nodes[n] for n in names if n in nodes), None)
        if found is None:
            return None
        i, kind, kv = found
        if kind.lstrip('-') == 'blockdev':
            if kv.get('driver') not in (d.format, 'file'):
                return None
            if 'filename' not in kv:
                i, kind, kv = nodes.get(kv.get('file'), (None, '', {}))
            key = 'filename'
        else:
            if kv.get('format', d.format) != d.format:
                return None
            key = 'file'
        if i is None or argv[i].startswith('{') or not kv.get(key):
            return None
        argv[i] = argv[i].replace('%s=%s' % (key, kv[key].replace(',', ',,')), '%s=%s' % (key, d.file.replace(',', ',,')), 1)
    return argv


def qmp_socket_of(argv):
    """The path of the first ``-qmp unix:PATH,...`` monitor in ``argv``."""
    for i, a in enumerate(argv[:-1]):
        if a in ('-qmp', '--qmp') and argv[i + 1].startswith('unix:'):
            return argv[i + 1][len('unix:'):].split(',')[0]
    return None


def incoming_argv(argv):
    """``argv`` with any -incoming replaced by ``-incoming defer``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ('-incoming', '--incoming'):
            skip = True
            continue
        out.append(a)
    return out + ['-incoming', 'defer']


def cold_argv(argv):
    """``argv`` without -incoming, its guest held before its first instruction (``-S``): the
    caller sets its disks up over QMP, then ``cont`` boots it."""
    out = incoming_argv(argv)[:-2]
    return out if '-S' in out else out + ['-S']


def _keyvals(opt):
    """QEMU's ``key=value,key=value`` option syntax (``,,`` is a literal comma),
    or the JSON form newer command lines (libvirt's among them) use."""
    if opt.startswith('{'):
        try:
            value = json.loads(opt)
        except ValueError:
            return {}
        return dict((k, v) for k, v in value.items() if isinstance(v, str)) if isinstance(value, dict) else {}
    out = {}
    for part in opt.replace(',,', '\0').split(','):
        k, sep, v = part.partition('=')
        if sep:
            out[k] = v.replace('\0', ',')
    return out


# the same parser for other readers of a command line (guest_agent.socket_from_argv)
keyvals = _keyvals


def disk_aliases(argv):
    """{block node or drive id: device id} from a QEMU command line: the names
    a disk was addressed by when QEMU started. A mirror's switch gives the
    disk a new node, so its first node name is found only here."""
    aliases = {}
    for i, a in enumerate(argv[:-1]):
        if a in ('-device', '--device'):
            kv = _keyvals(argv[i + 1])
            if kv.get('drive') and kv.get('id'):
                aliases[kv['drive']] = kv['id']
    return aliases


def open_log(path, uid):
    """``path`` opened to append QEMU's output, as root in a directory its QEMU's
    user may write: never through a symlink, never a file with other names (a
    hard link to a file of root's) or of another owner."""
    old = os.umask(0o077)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o600)
    except OSError as e:
        raise Untrusted("cannot open QEMU's log %s: %s" % (path, e.strerror),
                        hint="nothing was touched; remove what is at that path (a symlink is refused)")
    finally:
        os.umask(old)
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid in (os.geteuid(), uid)):
        os.close(fd)
        raise Untrusted("QEMU's log %s is not a regular file of its own (uid %d, %d links)"
                        % (path, st.st_uid, st.st_nlink), hint="nothing was touched; remove it and run again")
    return fd


def launch(argv, log_path, record=None):
    """Start QEMU detached from this module: it must outlive the Ansible task.
    ``record`` (relaunch_record): run its binary as its user and groups."""
    record = record or {}
    uid = record.get('uid', os.geteuid())
    log = open_log(log_path, uid)
    ids = {}
    if uid != os.geteuid():
        ids = dict(user=uid, group=record.get('gid'), extra_groups=record.get('groups') or [])
    try:
        return subprocess.Popen(argv, executable=record.get('exe'), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, close_fds=True, **ids)
    finally:
        os.close(log)


def give_to(path, vm_or_record):
    """Let the QEMU that runs as another user open ``path`` (a file or socket
    directory made for it, or the image it loads): chown it to that user."""
    uid = vm_or_record.get('uid') if isinstance(vm_or_record, dict) else vm_or_record
    if uid is not None and uid != os.geteuid():
        os.chown(path, uid, -1)


def wait_for_socket(path, proc, deadline, daemonizes=False):
    def listening():
        # A daemonizing QEMU's first process exits once the daemon runs.
        if not daemonizes and proc.poll() is not None and not os.path.exists(path):
            raise VmfleetError("the restored QEMU exited (code %s) before opening %s" % (proc.returncode, path))
        return True if socket_alive(path) else None
    poll_until(listening, deadline, interval=0.01,
               on_timeout=lambda: OperationTimeout("the restored QEMU did not open its QMP socket %s in time" % path))


def _gone(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except (OSError, IndexError):
        return True


def wait_exit(pid, timeout):
    """Wait for QEMU ``pid`` to exit (it was told to quit); kill it after ``timeout``."""
    if pid is None:
        return
    try:
        poll_until(lambda: True if _gone(pid) else None, Deadline(timeout), interval=0.05,
                   on_timeout=lambda: OperationTimeout("QEMU pid %d did not quit" % pid))
    except OperationTimeout:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def probe_binary(binary, timeout=20.0):
    """Start ``binary`` with no machine and ask it over QMP, then stop it."""
    tmp = tempfile.mkdtemp(prefix='vmfleet-probe-')
    sock = os.path.join(tmp, 'qmp.sock')
    client = QmpClient('vmfleet-probe')
    proc = None
    try:
        # Listen first, then let QEMU connect to us: no polling for its socket.
        client.listen(sock, timeout)
        proc = subprocess.Popen([binary, '-machine', 'none', '-nodefaults', '-display', 'none',
                                 '-S', '-qmp', 'unix:%s' % sock],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client.accept(timeout)
        return capabilities.qmp_facts(client.execute)
    finally:
        client.close()
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def destination_argv(argv, qmp_socket, moved=None):
    """The source QEMU's command line as a migration's destination starts it: its QMP socket at
    ``qmp_socket``, ``-incoming defer``, daemonized (it outlives the SSH session), and a
    ``-serial file:`` log appended to instead of truncated (a chardev with append=on). When the
    socket moves, the ``-pidfile`` moves beside it (the source QEMU holds its own locked).
    ``moved``: Disks whose copy (``file``) the destination opens instead of the source's image."""
    if moved:
        followed = follow_moves(argv, moved)
        if followed is None:
            raise VmfleetError("the command line of the QEMU on %s does not name the images of disks %s in a way "
                               "this module can rewrite for their copies" % (qmp_socket, ', '.join(d.name for d in moved)),
                               hint="nothing was changed; start the VM with -blockdev filename= or -drive file=")
        argv = followed
    moved_sock = qmp_socket_of(argv) != qmp_socket
    out = []
    i = 0
    serial = 0
    qmp_done = False
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a in ('-qmp', '--qmp') and nxt and nxt.startswith('unix:') and not qmp_done:
            qmp_done = True
            rest = nxt[len('unix:'):].split(',', 1)
            out += [a, 'unix:' + qmp_socket + (',' + rest[1] if len(rest) > 1 else '')]
            i += 2
            continue
        if a in ('-pidfile', '--pidfile') and nxt and moved_sock:
            pidfile = os.path.join(os.path.dirname(qmp_socket), os.path.basename(nxt))
            if pidfile == nxt:
                # the same directory (storage both hosts see): a name of its own, beside its socket
                pidfile = os.path.splitext(qmp_socket)[0] + '.pid'
            out += [a, pidfile]
            i += 2
            continue
        if a in ('-serial', '--serial') and nxt and nxt.startswith('file:'):
            cid = 'vmfleet-serial%d' % serial
            serial += 1
            out += ['-chardev', 'file,id=%s,path=%s,append=on' % (cid, nxt[len('file:'):].replace(',', ',,')),
                    '-serial', 'chardev:' + cid]
            i += 2
            continue
        out.append(a)
        i += 1
    out = incoming_argv(out)
    if '-daemonize' not in out and '--daemonize' not in out:
        out.append('-daemonize')
    return out


# -- secrets on a command line (issue #34): what a result, a log, ssh's or sudo's command line must not show --
REDACTED = '********'
# option keys whose value is a secret: -iscsi/-spice password=, a curl/ssh/iscsi driver's password=,
# rbd's key= (in its filename, ':'-separated); the data= of a secret object
_SECRET_KEYS = ('password', 'passwd', 'key')
SECRET_TOKEN = '@vmfleet-secret-%d@'
# a switch (-vnc password=on: the password is set over QMP), not a secret
_NOT_SECRET = ('on', 'off', 'true', 'false', 'yes', 'no')


def _is_secret_object(opt):
    return opt.split(',', 1)[0] == 'secret' or _keyvals(opt).get('qom-type') == 'secret'


def _secret_keys(prev, opt):
    return _SECRET_KEYS + (('data',) if prev.lstrip('-') == 'object' and _is_secret_object(opt) else ())


def _secret_spans(keys, opt):
    """(start, end) of each secret value in the key=value option ``opt``."""
    out = []
    for k in keys:
        stop = ',:' if k == 'key' else ','
        for m in re.finditer(r'(?:^|[,:])%s=((?:,,|[^%s])*)' % (re.escape(k), stop), opt):
            if m.group(1) and m.group(1).lower() not in _NOT_SECRET:
                out.append(m.span(1))
    return out


def _redact_opt(prev, opt):
    keys = _secret_keys(prev, opt)
    if opt.startswith('{'):
        try:
            obj = json.loads(opt)
        except ValueError:
            return opt
        if isinstance(obj, dict) and any(k in obj for k in keys):
            return json.dumps(dict((k, REDACTED if k in keys else v) for k, v in obj.items()))
        return opt
    for start, end in sorted(_secret_spans(keys, opt), reverse=True):
        opt = opt[:start] + REDACTED + opt[end:]
    return opt


def redact_argv(argv):
    """``argv`` with each secret value replaced by ********, for results and logs."""
    return [_redact_opt(argv[i - 1] if i else '', a) for i, a in enumerate(argv)]


def secret_values(argv):
    """Every secret ``argv`` carries, as written in it, longest first: what no message may show."""
    found = set()
    for i, a in enumerate(argv):
        keys = _secret_keys(argv[i - 1] if i else '', a)
        if a.startswith('{'):
            found.update(v for k, v in _keyvals(a).items() if k in keys and v and v.lower() not in _NOT_SECRET)
        else:
            found.update(a[start:end] for start, end in _secret_spans(keys, a))
    return sorted(found, key=len, reverse=True)


def redact(text, secrets):
    for s in secrets:
        text = text.replace(s, REDACTED)
    return text


def secrets_to_files(argv):
    """(argv, data): ``argv`` with each secret object's ``data=`` turned into ``file=`` a placeholder
    (SECRET_TOKEN % i) names, and the data, in order; whoever starts it writes each to a private
    file and puts its path in (so the secret is in no process's command line)."""
    out, data = [], []
    for i, a in enumerate(argv):
        if i and argv[i - 1].lstrip('-') == 'object' and _is_secret_object(a):
            if a.startswith('{'):
                obj = json.loads(a)
                if 'data' in obj:
                    data.append(obj.pop('data'))
                    obj['file'] = SECRET_TOKEN % (len(data) - 1)
                    a = json.dumps(obj)
            else:
                parts = a.replace(',,', '\0').split(',')
                for j, part in enumerate(parts):
                    if part.startswith('data='):
                        data.append(part[len('data='):].replace('\0', ','))
                        parts[j] = 'file=' + SECRET_TOKEN % (len(data) - 1)
                a = ','.join(parts).replace('\0', ',,')
        out.append(a)
    return out, data
