# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quiesced disk snapshots: the guest's filesystems frozen through the QEMU
guest agent while the disks are snapshotted, so that the snapshot holds them
clean (written out, journal flushed) instead of crash-consistent.

A frozen guest blocks every write of its applications, so the thaw is
guaranteed: before the freeze a watchdog process (thaw_watchdog.py) is started
that thaws when the module tells it nothing (it died) or when the task's
timeout runs out; the module's own thaw comes first and tells it so."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import json
import os
import select
import subprocess
import sys
import time

import ansible_collections
# imported so that Ansible ships it with the module: the watchdog process runs it from there
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot import thaw_watchdog
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument, VmfleetError

WATCHDOG = thaw_watchdog.__name__
# the watchdog imports the backend and connects to it before it says it is ready
READY_S = 30.0
# Test-only: a path; see _held_for_tests.
HOLD_ENV = 'VMFLEET_TEST_HOLD_FROZEN'


def wanted(vm, quiesce, memory):
    """Before anything changes: whether this snapshot freezes the guest's filesystems.
    A quiesce the VM cannot do fails here, naming the QEMU guest agent."""
    if not quiesce:
        return False
    if memory:
        raise InvalidArgument(
            "quiesce applies to disk-only snapshots (memory: false) of VM '%s'" % vm.name,
            hint="a snapshot with RAM state brings the guest back mid-write, page cache and all, so a freeze adds "
                 "nothing; set memory: false, or drop quiesce")
    if not vm.is_running():
        return False  # a stopped guest has no filesystem mounted to freeze
    vm.check_guest_agent()
    return True


def _watchdog_argv(args):
    """The watchdog, run from wherever this module was imported (AnsiballZ's zip or a collection path)."""
    roots = [os.path.dirname(p) for p in ansible_collections.__path__]
    return [sys.executable, '-c', 'import runpy, sys; sys.path[:0] = %r; runpy.run_module(%r, run_name="__main__")'
            % (roots, WATCHDOG)] + args


class ThawWatchdog(object):
    """The watchdog process of one freeze (see thaw_watchdog.py)."""

    def __init__(self, vm, seconds):
        self.vm = vm
        spec = vm.thaw_spec()
        read_end, self._write_end = os.pipe()
        try:
            # its own session: a signal to the module's process group must not take it along
            self.proc = subprocess.Popen(_watchdog_argv(['%.3f' % seconds, json.dumps(spec)]), stdin=read_end,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                         start_new_session=True)
        finally:
            os.close(read_end)
        ready, _w, _x = select.select([self.proc.stdout], [], [], READY_S)
        line = self.proc.stdout.readline() if ready else b''
        if line != thaw_watchdog.READY:
            self.proc.kill()
            err = self.proc.communicate()[1].decode('utf-8', 'replace')
            os.close(self._write_end)
            raise VmfleetError("the thaw watchdog of VM '%s' did not start: %s" % (vm.name, (err or 'no answer')[-500:]),
                               hint="nothing was frozen or changed")
        self.proc.stdout.close()

    def release(self, thawed):
        """Let the watchdog go: with ``thawed`` it exits, else it thaws at once."""
        try:
            if thawed:
                os.write(self._write_end, thaw_watchdog.DONE + b'\n')
        except OSError:
            pass  # it is gone already: its timer ran out and it thawed
        finally:
            os.close(self._write_end)
        if thawed:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass  # it goes on by itself
        # else it is thawing now, on its own: no reason to wait for it


def _held_for_tests(deadline):
    """Test-only (the variable is unset in real runs): with VMFLEET_TEST_HOLD_FROZEN=PATH in the
    module's environment, once the filesystems are frozen the module writes its pid to PATH.frozen
    and holds them frozen until PATH is removed (or the deadline), so a test can look at the frozen
    guest, or kill the module while it is frozen."""
    path = os.environ.get(HOLD_ENV)
    if not path:
        return
    with open(path + '.frozen', 'w') as f:
        f.write('%d\n' % os.getpid())
    while os.path.exists(path) and not deadline.expired():
        time.sleep(0.05)


def _thaw(vm, watchdog, info, t0, quiet):
    try:
        vm.fs_thaw()
    except Exception as e:
        watchdog.release(thawed=False)
        if quiet:
            return
        raise VmfleetError("thawing the filesystems of VM '%s' failed: %s" % (vm.name, getattr(e, 'msg', e)),
                           hint="the snapshot was taken; the thaw watchdog tried again, check the guest's agent")
    watchdog.release(thawed=True)
    info['frozen_ms'] = round((time.monotonic() - t0) * 1000.0, 1)


@contextlib.contextmanager
def quiesced(vm, enabled, deadline):
    """Run the body with the guest's filesystems frozen (when ``enabled``); yields a dict for the
    module's result (filesystems frozen, frozen_ms once thawed), or None when not enabled. The
    watchdog thaws within what is left of ``deadline`` even if this process dies."""
    if not enabled:
        yield None
        return
    watchdog = ThawWatchdog(vm, deadline.remaining(1.0))
    t0 = time.monotonic()
    info = dict(filesystems=None, frozen_ms=None)
    try:
        info['filesystems'] = vm.fs_freeze(deadline)
    except BaseException:
        # a freeze that failed half-way (timed out) may still have frozen some
        _thaw(vm, watchdog, info, t0, quiet=True)
        raise
    try:
        _held_for_tests(deadline)
        yield info
    except BaseException:
        _thaw(vm, watchdog, info, t0, quiet=True)
        raise
    _thaw(vm, watchdog, info, t0, quiet=False)
