# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Another hypervisor as the source's root reaches it over SSH (its key, known_hosts): where a raw
QEMU VM's migration starts the destination QEMU and talks to its QMP socket. Nothing from the
inventory is parsed by ssh as an option (the user and host are checked, and come after ``--``);
a command line is sent on stdin, never in ssh's or sudo's argv (issue #34)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.process import SECRET_TOKEN, redact, secrets_to_files
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import addresses
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import ConnectionFailed, DestinationProblem


def destination_uri(host, user=None):
    """The SSH URI of ``host`` (inventory values, checked)."""
    return 'ssh://%s' % addresses.user_at(host, user)


# Run over SSH by the destination's Python (destination_python) with qemu.qmp: the destination
# QEMU's monitor is a UNIX socket there. argv: socket, JSON list of commands; prints the answers
# (up to the first error), or {"connect-error": ...} / {"import-error": ...}.
REMOTE_QMP = r"""
import json, sys
try:
    from qemu.qmp.legacy import QEMUMonitorProtocol
except ImportError as e:
    print(json.dumps({"import-error": str(e)}))
    sys.exit(0)
qmp = QEMUMonitorProtocol(sys.argv[1])
try:
    qmp.connect()
except Exception as e:
    print(json.dumps({"connect-error": str(e)}))
    sys.exit(0)
qmp.settimeout(60)
out = []
for cmd in json.loads(sys.argv[2]):
    try:
        out.append(qmp.cmd_obj(cmd))
    except Exception as e:
        out.append({"error": {"class": type(e).__name__, "desc": str(e) or "QEMU closed its monitor (%s)" % type(e).__name__}})
    if "error" in out[-1]:
        break
try:
    qmp.close()
except Exception:
    pass
print(json.dumps(out))
"""

# Run over SSH by the destination's Python: starts the command line it reads on stdin (JSON: argv,
# secrets), each secret written to a file only root reads, named where argv holds its placeholder,
# and removed once QEMU has read it (a daemonizing QEMU's first process exits after its setup).
LAUNCH = r"""
import json, os, shutil, subprocess, sys, tempfile
a = json.load(sys.stdin)
argv = a["argv"]
d = tempfile.mkdtemp(prefix="vmfleet-secrets-")
try:
    for i, data in enumerate(a["secrets"]):
        path = os.path.join(d, str(i))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data.encode("utf-8", "surrogateescape"))
        os.close(fd)
        argv = [x.replace(a["token"] % i, path) for x in argv]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sys.stdout.write(r.stdout.decode("utf-8", "replace"))
    sys.stderr.write(r.stderr.decode("utf-8", "replace"))
    sys.exit(r.returncode)
finally:
    shutil.rmtree(d, ignore_errors=True)
"""


# Run over SSH by the destination's Python: writes stdin to the file argv[1] names as root's, 0600,
# durably (a temporary file beside it, fsync, rename, fsync of the directory, made 0700 if absent).
PUT = r"""
import os, sys
path = sys.argv[1]
d = os.path.dirname(path)
if not os.path.isdir(d):
    os.makedirs(d, 0o700)
tmp = path + ".vmfleet-carry"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
os.fchmod(fd, 0o600)
while True:
    b = sys.stdin.buffer.read(1 << 20)
    if not b:
        break
    while b:
        b = b[os.write(fd, b):]
os.fsync(fd)
os.close(fd)
os.rename(tmp, path)
fd = os.open(d, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""


# Run over SSH by the destination's Python: "<sha256>  <path>" for each file of argv that exists there
# (root's files: through sudo, under the one sudoers line for destination_python, not a shell's)
SUMS = r"""
import hashlib, os, sys
for path in sys.argv[1:]:
    if not os.path.exists(path):
        continue
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    print("%s  %s" % (h.hexdigest(), path))
"""


class Remote(object):
    """The destination host of ``uri`` (``ssh://[USER@]HOST[:PORT]``)."""

    def __init__(self, uri, deadline, python=None, reuse=False):
        u = addresses.parse(uri)
        self.python = python or sys.executable
        self.host = u.hostname
        self.user = u.username
        self.port = u.port
        self.deadline = deadline
        self.sudo = ['sudo', '-n', '--'] if self.user and self.user != 'root' else []
        # reuse: one SSH connection (a master) carries every command of this run (a migration runs
        # five or more; each its own connection cost a handshake, ~0.3 s on a loaded host); close() ends it
        self.reuse = reuse
        self._mux = None  # the master's control socket once it runs

    def _ssh_argv(self):
        cmd = ['ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10']
        if self.port:
            cmd += ['-p', str(self.port)]
        if self._mux:
            # no master (it quit: idle, or its link lost): ssh connects on its own, as without one
            cmd += ['-o', 'ControlMaster=no', '-o', 'ControlPath=' + self._mux]
        return cmd

    def _target(self):
        # the destination after '--': nothing of it is read as an option, whatever the inventory says
        return ['--', ('%s@%s' % (self.user, self.host)) if self.user else self.host]

    def _cmd(self, argv):
        if self.reuse and self._mux is None:
            self._start_master()
        return self._ssh_argv() + self._target() + [' '.join(shlex.quote(a) for a in argv)]

    def _start_master(self):
        """The shared connection, in the background (-f, its output in a file: a backgrounded ssh
        holding a pipe would keep the caller waiting for its end). ServerAlive: a master whose link
        is lost quits within ~10 s, and the commands after it find out as they would on their own."""
        self._mux = ''  # tried once; '' (no master) when it does not start
        d = tempfile.mkdtemp(prefix='vmfleet-ssh-')
        path = os.path.join(d, 'master')
        cmd = self._ssh_argv() + ['-o', 'ControlMaster=yes', '-o', 'ControlPath=' + path, '-o', 'ControlPersist=120',
                                  '-o', 'ServerAliveInterval=3', '-o', 'ServerAliveCountMax=3', '-f', '-N'] + self._target()
        t = min(30.0, self.deadline.remaining(5.0))
        with tempfile.TemporaryFile() as err:
            try:
                r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=t,
                                   check=False)
            except subprocess.TimeoutExpired:
                shutil.rmtree(d, ignore_errors=True)
                raise ConnectionFailed("the destination %s gave no answer over SSH within %.0f s" % (self.host, t))
            err.seek(0)
            msg = err.read().decode('utf-8', 'replace').strip()
        if r.returncode == 255:
            shutil.rmtree(d, ignore_errors=True)
            raise ConnectionFailed("the destination %s is unreachable over SSH: %s" % (self.host, msg),
                                   hint="the source host's root must reach it with its SSH key (and know its host key)")
        if r.returncode or not os.path.exists(path):
            shutil.rmtree(d, ignore_errors=True)  # each command connects on its own
            return
        self._mux = path

    def close(self):
        """The shared connection ended (the commands' sessions over it have)."""
        if not self._mux:
            return
        path, self._mux = self._mux, ''  # no new master after this
        try:
            subprocess.run(['ssh', '-o', 'ControlPath=' + path, '-O', 'exit'] + self._target(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def ssh(self, argv, what, timeout=None, check=True, stdin=None, secrets=()):
        """Run ``argv`` there; its output. ``stdin``: bytes for it; ``secrets``: strings no message may show."""
        cmd = self._cmd(argv)
        t = min(timeout or 120.0, self.deadline.remaining(5.0))
        try:
            r = subprocess.run(cmd, input=stdin if stdin is not None else b'', capture_output=True, timeout=t,
                               check=False)
        except subprocess.TimeoutExpired:
            raise ConnectionFailed("%s: %s gave no answer within %.0f s" % (what, self.host, t))
        out = redact(r.stdout.decode('utf-8', 'replace'), secrets)
        err = redact(r.stderr.decode('utf-8', 'replace').strip(), secrets)
        if r.returncode == 255:
            raise ConnectionFailed("the destination %s is unreachable over SSH: %s" % (self.host, err),
                                   hint="the source host's root must reach it with its SSH key (and know its host key)")
        if check and r.returncode:
            if self.sudo and argv[:len(self.sudo)] == self.sudo and err.startswith('sudo:'):
                raise DestinationProblem(
                    "%s at %s failed: sudo refused %s the command %s (%s)" % (what, self.host, self.user, argv[len(self.sudo)], err),
                    hint="give %s at %s the sudoers lines of the vm_migrate docs (VMFLEET_MIGRATE: %s -c, qemu-img create, "
                         "rm -f; destination_python is the Python they name), or reach it as root"
                         % (self.user, self.host, self.python))
            raise DestinationProblem("%s at %s failed (%d): %s" % (what, self.host, r.returncode, err or out.strip()))
        return out

    def sums(self, paths, what):
        """{path: sha256} of those of ``paths`` that exist there (see SUMS)."""
        out = self.ssh(self.sudo + [self.python, '-c', SUMS] + list(paths), what)
        sums = {}
        for line in out.splitlines():
            digest, _sep, path = line.partition('  ')
            if path:
                sums[path] = digest
        return sums

    def put(self, local, path, what):
        """The file ``local`` copied to ``path`` there (see PUT), streamed: a memory file can be large."""
        with open(local, 'rb') as f:
            self._ssh_stdin(self.sudo + [self.python, '-c', PUT, path], what, f)

    def write(self, path, data, what):
        """``data`` (bytes) written to ``path`` there (see PUT)."""
        self.ssh(self.sudo + [self.python, '-c', PUT, path], what, stdin=data)

    def _ssh_stdin(self, argv, what, f):
        cmd = self._cmd(argv)
        t = self.deadline.remaining(5.0)
        try:
            r = subprocess.run(cmd, stdin=f, capture_output=True, timeout=t, check=False)
        except subprocess.TimeoutExpired:
            raise ConnectionFailed("%s: %s did not finish within %.0f s" % (what, self.host, t))
        if r.returncode:
            raise DestinationProblem("%s at %s failed (%d): %s" % (what, self.host, r.returncode,
                                                                   r.stderr.decode('utf-8', 'replace').strip()[-300:]))

    def launch(self, argv, what, secrets=()):
        """Start ``argv`` there as root, its secret objects' data passed in files (see LAUNCH)."""
        argv, data = secrets_to_files(argv)
        payload = json.dumps(dict(argv=argv, secrets=data, token=SECRET_TOKEN)).encode('utf-8')
        return self.ssh(self.sudo + [self.python, '-c', LAUNCH], what, stdin=payload, secrets=list(secrets) + data)

    def qmp(self, sock, commands, what):
        fix = ("give destination_python, a Python with qemu.qmp at %s, or prepare the host with the "
               "vmfleet.kvm.hypervisor role" % self.host)
        try:
            out = self.ssh(self.sudo + [self.python, '-c', REMOTE_QMP, sock, json.dumps(commands)], what)
        except DestinationProblem as e:
            if self.python not in e.msg:
                raise
            raise DestinationProblem("%s: the destination has no Python %s" % (e.msg, self.python), hint=fix)
        try:
            answers = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise DestinationProblem("%s at %s: no answer from its QMP helper: %s" % (what, self.host, out[-300:]))
        if isinstance(answers, dict) and 'import-error' in answers:
            raise DestinationProblem("%s at %s: the destination's %s lacks qemu.qmp (%s)"
                                     % (what, self.host, self.python, answers['import-error']), hint=fix)
        if isinstance(answers, dict):
            return answers  # connect-error
        for cmd, a in zip(commands, answers):
            if 'error' in a:
                raise DestinationProblem("%s at %s: QEMU refused %s: %s" % (what, self.host, cmd['execute'], a['error'].get('desc')))
        return [a.get('return') for a in answers]

    def available_memory(self):
        """Bytes of memory available there (MemAvailable), None when it does not say."""
        out = self.ssh(['cat', '/proc/meminfo'], 'reading the memory', check=False)
        for line in out.splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
        return None

    def alive(self, sock):
        """The state of the QEMU serving ``sock`` there, or None when none does."""
        a = self.qmp(sock, [{'execute': 'query-status'}], 'asking the QEMU on %s' % sock)
        if isinstance(a, dict):
            return None
        return a[0].get('status')
