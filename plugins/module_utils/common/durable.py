# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writes that survive a host crash: what was reported done must be on disk,
and a file is either the old one or the new one, never half of each."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import json
import os
import shutil
import stat
import tempfile

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import ImageCorrupt, Untrusted, VmfleetError


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory):
    """Make renames and creations inside ``directory`` durable."""
    fd = os.open(directory or '.', os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0) | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, mode=0o600):
    """Write ``data`` (bytes) to ``path`` so a crash leaves the old or the new file."""
    d = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), suffix='.tmp', dir=d)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)


def check_trusted(st, path, what):
    """Refuse ``path`` (its ``os.lstat``/``os.fstat`` result ``st``) unless only this
    process's user can have written it: owned by it, not group- or other-writable."""
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise Untrusted("%s %s is owned by uid %d with mode %04o: only one owned by uid %d (this module's user) and "
                        "writable by no one else is trusted"
                        % (what, path, st.st_uid, stat.S_IMODE(st.st_mode), os.geteuid()),
                        hint="nothing was touched; check who changed it, then fix its owner and mode (chown root, "
                             "chmod go-w) or remove it")


def open_trusted(path, what):
    """Open ``path`` for reading only when it, and the directory holding it, are
    trusted (check_trusted), and it is a regular file reached by no symlink:
    what it says is acted on as root."""
    d = os.path.dirname(path) or '.'
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise Untrusted("%s %s is a symbolic link" % (what, path), hint="nothing was touched; give the file itself")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted("%s %s is not a regular file" % (what, path), hint="nothing was touched")
        check_trusted(st, path, what)
        check_trusted(os.stat(d), d, "the directory of %s" % what)
        return os.fdopen(fd, 'rb')
    except BaseException:
        os.close(fd)
        raise


def read_json(path, what, hint):
    """What the trusted JSON file ``path`` (a journal or record written by atomic_write) holds, or
    None when there is none; ``hint`` tells what to do when it cannot be read."""
    try:
        with open_trusted(path, what) as f:
            raw = f.read()
    except IOError as e:
        if e.errno == errno.ENOENT:
            return None
        raise VmfleetError("cannot read the %s %s: %s" % (what, path, e.strerror), hint=hint)
    try:
        return json.loads(raw.decode('utf-8'))
    except ValueError as e:
        raise ImageCorrupt("%s %s is not valid JSON (%s)" % (what, path, e),
                           hint="it is written atomically, so something else changed it; inspect it by hand")


def create_exclusive(path, mode=0o600, flags=os.O_WRONLY):
    """A new file at ``path`` (none may exist, a symlink neither), private from its
    first byte whatever the umask: its fd."""
    old = os.umask(0o077)
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    finally:
        os.umask(old)


def write_in_place(src, dst):
    """Write the copy ``src`` over the file ``dst`` in place (fsynced): its owner, mode and label stay."""
    with open(src, 'rb') as f:
        data = f.read()
    fd = os.open(dst, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_private(src, dst):
    """``src`` copied to the new file ``dst`` (0600, fsynced)."""
    fd = create_exclusive(dst)
    try:
        with open(src, 'rb') as f, os.fdopen(fd, 'wb') as out:
            fd = None
            shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        if fd is not None:
            os.close(fd)
        remove(dst)
        raise
    fsync_dir(os.path.dirname(dst))


def remove(path):
    """Unlink ``path``: whether it was there to unlink."""
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
