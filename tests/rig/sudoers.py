"""A second login user on the simulated fleet's hosts whose sudo rights are only the lines it is
given: the documented sudoers lines of vm_migrate's raw QEMU route (docs/docsite/rst/migration.rst),
read from the docs themselves, so that a test with them proves the very text users copy. The rig's
own login user (rig/hypervisors.py) has ``NOPASSWD: ALL`` and proves nothing about them.

The hosts' network namespaces share this machine's /etc: the user and its sudoers file are one for
every host, and each host's sshd lets it in (AllowUsers). Made on entry, removed on exit; a file a
killed run left is replaced."""

import os
import pwd
import re
import subprocess

from .guest import REPO

USER = 'vmfleetmig'
GECOS = 'vmfleet test rig, narrow sudo'  # marks the user as the rig's own: it is deleted on exit
SUDOERS = '/etc/sudoers.d/vmfleet-rig-narrow'
DOC = os.path.join(REPO, 'docs', 'docsite', 'rst', 'migration.rst')
# what the documented lines name that is the user's to choose: the login user, and destination_python
DOC_USER = 'vmfleet'
DOC_PYTHON = '/opt/vmfleet/venv/bin/python'


def documented_lines():
    """The sudoers lines of the docs' code block that defines VMFLEET_MIGRATE, as written there."""
    with open(DOC) as f:
        text = f.read()
    m = re.search(r'\.\. code-block:: text\n\n((?:[ \t]+\S.*\n)*?[ \t]+Cmnd_Alias VMFLEET_MIGRATE.*\n(?:[ \t]+\S.*\n)*)', text)
    if not m:
        raise AssertionError('%s shows no sudoers lines for VMFLEET_MIGRATE' % DOC)
    lines = m.group(1).splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    return [line[indent:] for line in lines]


def for_user(lines, python):
    """``lines`` (the documented ones) for this rig's user, with ``python`` as destination_python."""
    out = []
    for line in lines:
        line = line.replace(DOC_PYTHON, python)
        if re.match(r'^%s\s' % DOC_USER, line):
            line = USER + line[len(DOC_USER):]
        out.append(line)
    return out


def _run(argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class NarrowSudoUser:
    """The user ``USER`` with the rig's key (the hosts' root reaches it with that key) and
    ``lines`` as its only sudoers entry, checked with visudo before it is put in place."""

    def __init__(self, fleet, lines):
        self.fleet = fleet
        self.lines = list(lines)

    def __enter__(self):
        remove()
        _run(['useradd', '--create-home', '--shell', '/bin/sh', '--comment', GECOS, '--password', '*', USER])
        self.write(self.lines)
        u = pwd.getpwnam(USER)
        ssh_dir = os.path.join(u.pw_dir, '.ssh')
        os.makedirs(ssh_dir, mode=0o700)
        with open(self.fleet.key + '.pub') as f, open(os.path.join(ssh_dir, 'authorized_keys'), 'w') as out:
            out.write(f.read())
        for p in (ssh_dir, os.path.join(ssh_dir, 'authorized_keys')):
            os.chown(p, u.pw_uid, u.pw_gid)
        os.chmod(os.path.join(ssh_dir, 'authorized_keys'), 0o600)
        return self

    def write(self, lines):
        """The user's sudoers entry is ``lines`` now (visudo checks them, and the whole sudoers after)."""
        tmp = SUDOERS + '.tmp'
        with open(tmp, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        os.chmod(tmp, 0o440)
        r = _run(['visudo', '-c', '-q', '-f', tmp], check=False)
        if r.returncode:
            os.unlink(tmp)
            raise AssertionError('visudo refuses the lines %r: %s' % (lines, r.stdout + r.stderr))
        os.replace(tmp, SUDOERS)
        r = _run(['visudo', '-c', '-q'], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        self.lines = list(lines)

    def allowed(self):
        """What sudo says the user may run (sudo -l)."""
        return _run(['sudo', '-l', '-U', USER]).stdout

    def __exit__(self, *exc):
        remove()


def remove():
    """The user and its sudoers entry gone (what this module made, or a killed run left)."""
    for p in (SUDOERS, SUDOERS + '.tmp'):
        if os.path.exists(p):
            os.unlink(p)
    try:
        gecos = pwd.getpwnam(USER).pw_gecos
    except KeyError:
        return
    if gecos != GECOS:
        raise RuntimeError("user %s exists and is not the rig's own (GECOS %r)" % (USER, gecos))
    # its sshd sessions (the hosts' root reaching it) end with their commands; -f: a lingering one
    _run(['userdel', '-r', '-f', USER], check=False)
