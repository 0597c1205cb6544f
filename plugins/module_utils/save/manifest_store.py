# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest store: a saved VM state on disk (a vm_save image, or an
instant snapshot's memory file), its data files and the manifest that makes
it whole. Files are written under temporary names, fsynced, renamed, and the
manifest is renamed into place last: no manifest, no complete image."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import fcntl
import hashlib
import json
import os
import re
import stat
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    ImageCorrupt, InvalidArgument, Untrusted,
)

PARTIAL = '.partial'
MANIFEST_SUFFIX = '.manifest.json'
MANIFEST_VERSION = 1


def manifest_path(path):
    return path + MANIFEST_SUFFIX


def validate_path(path):
    """An absolute path in an existing, writable directory."""
    if not path or not os.path.isabs(path):
        raise InvalidArgument("path %r is not absolute" % path, hint="give the save image an absolute path")
    if os.path.basename(path) in ('', '.', '..'):
        raise InvalidArgument("path %r names no file" % path)
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        raise InvalidArgument("directory %s of the save image does not exist" % d, hint="create it first")
    if not os.access(d, os.W_OK | os.X_OK):
        raise InvalidArgument("directory %s of the save image is not writable" % d)
    if os.path.isdir(path):
        raise InvalidArgument("path %s is a directory" % path, hint="give a file name inside it")


def create_private(path):
    """Create ``path`` empty, 0600, failing if it exists."""
    os.close(durable.create_exclusive(path))


def create_locked(path):
    """Create ``path`` empty, 0600 (failing if it exists), open read-write and
    flock'ed: the fd (the caller closes it). A partial file whose lock no one
    holds was left by a writer that died (remove_unlocked)."""
    fd = durable.create_exclusive(path, flags=os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise OSError("%s was removed as it was created" % path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_unlocked(paths):
    """Remove each file of ``paths`` whose flock no process holds (its writer
    died, with the QEMU it handed it to); the paths removed."""
    removed = []
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a writer at work
            try:
                same = os.stat(p).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.unlink(p)
                removed.append(p)
        finally:
            os.close(fd)
    return removed


def sha256_file(path, bufsize=4 << 20):
    h = hashlib.sha256()
    with open(path, 'rb', buffering=0) as f:
        buf = bytearray(bufsize)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def describe_files(paths, kinds, checksum):
    out = []
    for p, kind in zip(paths, kinds):
        st = os.stat(p)
        out.append(dict(file=os.path.basename(p), bytes=st.st_size, allocated=st.st_blocks * 512, kind=kind,
                        sha256=sha256_file(p) if checksum else None))
    return out


def commit(partials, manifest, path):
    """Make the image complete: fsync and rename every data file, then the manifest."""
    for p in partials:
        durable.fsync_path(p)
        # a QEMU running as another user wrote it; from now on only root may change it
        os.chown(p, os.geteuid(), os.getegid())
        os.chmod(p, 0o600)
    for p in partials:
        os.rename(p, p[:-len(PARTIAL)])
    durable.fsync_dir(os.path.dirname(path))
    manifest = dict(manifest, version=MANIFEST_VERSION, completed_at=time.time())
    write_manifest(path, manifest)
    return manifest


def write_manifest(path, manifest):
    durable.atomic_write(manifest_path(path), json.dumps(manifest, indent=1, sort_keys=True).encode('utf-8'))


def read_manifest(path):
    """The manifest of a complete image, or None when there is none. Only one
    that root alone could have written is read: its command line is run again."""
    try:
        with durable.open_trusted(manifest_path(path), 'manifest') as f:
            m = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ImageCorrupt("manifest %s is not valid JSON (%s)" % (manifest_path(path), e),
                           hint="the save image is damaged; save the VM again")
    if m.get('version') != MANIFEST_VERSION:
        raise ImageCorrupt("manifest %s has version %r, this collection reads %d"
                           % (manifest_path(path), m.get('version'), MANIFEST_VERSION))
    return m


def data_files(path, manifest):
    d = os.path.dirname(path)
    return [os.path.join(d, f['file']) for f in manifest['files']]


def check_files(path, manifest, checksum):
    """Every file present with its recorded size (and checksum): else fail naming it."""
    for f, p in zip(manifest['files'], data_files(path, manifest)):
        try:
            size = os.path.getsize(p)
        except OSError:
            raise ImageCorrupt("save image file %s is missing" % p, hint="the image is incomplete; save the VM again")
        if size != f['bytes']:
            raise ImageCorrupt("save image file %s has %d bytes, the manifest says %d" % (p, size, f['bytes']),
                               hint="the file is truncated or was changed; save the VM again")
        if checksum and f.get('sha256') and sha256_file(p) != f['sha256']:
            raise ImageCorrupt("save image file %s does not match its SHA-256 in the manifest" % p,
                               hint="the file is corrupt; save the VM again")


def _partial_name(base, name):
    """Whether ``name`` is a partial file a save of ``base`` writes (``.partial``,
    ``.chN.partial``, and the channel sink's ``.partial.chN``)."""
    return re.match(r'%s(\.ch\d+)?\.partial(\.ch\d+)?$' % re.escape(base), name) is not None


def foreign_files(path, manifest):
    """The files beside ``path`` that share its name (``<base>`` or ``<base>.*``) but belong
    to no save image: ``manifest`` does not list them and they are not a save's partial
    files, manifest or restore log. A disk ``web01.qcow2`` beside ``path: .../web01`` is one."""
    d, base = os.path.split(path)
    ours = set(f['file'] for f in (manifest or {}).get('files', []))
    ours.update((base + MANIFEST_SUFFIX, base + '.restore.log'))
    return sorted(os.path.join(d, n) for n in os.listdir(d)
                  if (n == base or n.startswith(base + '.')) and n not in ours and not _partial_name(base, n))


def stale_partials(path):
    """The partial files an interrupted save of ``path`` left (regular files only: a
    symlink or a device of that name is not one this collection wrote)."""
    d, base = os.path.split(path)
    return sorted(os.path.join(d, n) for n in os.listdir(d)
                  if _partial_name(base, n) and stat.S_ISREG(os.lstat(os.path.join(d, n)).st_mode))


def listed_files(path, manifest):
    """The data files ``manifest`` lists, each checked to be a plain file name in
    ``path``'s directory and a regular file there: what an overwrite may remove."""
    d = os.path.dirname(path)
    out = []
    for f in (manifest or {}).get('files', []):
        name = f.get('file')
        if not isinstance(name, str) or name in ('', '.', '..') or '/' in name:
            raise Untrusted("manifest %s lists %r, which is not a file of its directory" % (manifest_path(path), name),
                            hint="nothing was touched; remove that save image by hand")
        p = os.path.join(d, name)
        try:
            mode = os.lstat(p).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise Untrusted("%s, listed in manifest %s, is not a regular file" % (p, manifest_path(path)),
                            hint="nothing was touched; remove that save image by hand")
        out.append(p)
    return out


def opens_direct(path, create=False):
    """Whether the file system serves ``path`` with O_DIRECT (tmpfs before
    Linux 6.6, some FUSE and network file systems refuse it). ``create``:
    probe with an empty private file at ``path``, removed again."""
    flag = getattr(os, 'O_DIRECT', 0)
    if not flag:
        return False
    mode = os.O_RDONLY
    if create:
        mode = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        os.close(os.open(path, mode | flag, 0o600))
    except OSError:
        return False
    finally:
        if create:
            remove([path])
    return True


def remove(paths):
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
