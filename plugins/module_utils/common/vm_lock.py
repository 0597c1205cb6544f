# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One change at a time per VM on a hypervisor: two runs (two AWX jobs, or a
re-run after the controller died while its background job still works) must
never snapshot, revert, save or move the same VM at once.

The lock is flock(2) on a file per VM under /run: the kernel drops it when
its holder dies, however it dies, so there are no stale locks to clean. The
file holds who has it, for the one who waits. Within one process the lock is
re-entrant (a fleet run holds it while its workflow calls shared helpers)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import vm_key
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmBusy

LOCK_DIR = '/run/vmfleet/locks'

_held = {}  # key -> [fd, depth], this process's locks
_guard = threading.Lock()


def _path(key):
    readable = re.sub(r'[^A-Za-z0-9_.-]+', '_', key.rsplit('/', 1)[-1].rsplit(':', 1)[-1])[:64]
    return os.path.join(LOCK_DIR, '%s-%s.lock' % (readable, hashlib.sha1(key.encode('utf-8')).hexdigest()[:16]))


def _holder(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode('utf-8') or '{}')
    except (OSError, ValueError):
        return {}


def _describe(holder):
    if not holder.get('pid'):
        return 'another vmfleet run'
    since = holder.get('since', time.time())
    return 'pid %s on this host (%s, for %.0f s)' % (holder['pid'], holder.get('what', 'vmfleet'), time.time() - since)


def held_for_change(check_mode, params, what, timeout, vm_name=None):
    """The VM's lock for a change; none for check mode, which changes nothing."""
    if check_mode:
        return contextlib.nullcontext()
    return vm_locked(params, what, timeout, vm_name)


@contextlib.contextmanager
def vm_locked(params, what, timeout, vm_name=None):
    """Hold the lock of the VM ``params`` name (backends.vm_key) while the block
    runs, waiting for it at most ``timeout`` seconds; VmBusy names the holder
    when it does not come."""
    key = vm_key(params)
    with _guard:
        mine = _held.get(key)
        if mine:
            mine[1] += 1
    if mine:
        try:
            yield
        finally:
            with _guard:
                mine[1] -= 1
        return
    # exist_ok: a fleet run's threads lock their VMs at once, and may all find the directory missing
    os.makedirs(LOCK_DIR, 0o700, exist_ok=True)
    fd = os.open(_path(key), os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0), 0o600)
    try:
        end = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (IOError, OSError):
                if time.monotonic() >= end:
                    raise VmBusy("VM '%s' is being changed by %s; waited %.0f s for it"
                                 % (vm_name or key, _describe(_holder(fd)), timeout),
                                 hint="let that run end and run again, or give a longer timeout to wait for it")
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(dict(pid=os.getpid(), what=what, vm=vm_name or key, since=time.time(),
                                     argv0=os.path.basename(sys.argv[0]))).encode('utf-8'))
        with _guard:
            _held[key] = [fd, 1]
        try:
            yield
        finally:
            with _guard:
                del _held[key]
            # the file stays (removing it would race a waiter that opened it); the lock goes
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
