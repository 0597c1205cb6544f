# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loading a mapped-ram memory image (an instant snapshot of a raw QEMU VM) into a QEMU
waiting with ``-incoming defer``: in the background through the postcopy_source helper
process (postcopy: the guest runs at once, its RAM follows), or in full by QEMU's own
``file:`` loader, its pages read by multifd threads.

A background snapshot never writes the mapped-ram bitmap (QEMU 10 writes it only when a
migration completes its RAM section), so QEMU's loader would load no page of such an
image (seen: it then fails in the device state, "error while loading state for instance
0x0 of device 'kvm-tpr-opt'"). fill_bitmap writes it from the file's own extents first: a
page the snapshot found zero was never written, a hole."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ansible_collections
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import qmp_migration as migration
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.save_restore import load_file
from ansible_collections.vmfleet.kvm.plugins.module_utils.save.manifest_store import opens_direct
# imported so that Ansible ships it with the module: the helper process runs it from there
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import postcopy_source  # noqa: F401 pylint: disable=unused-import
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import JobFailed, OperationTimeout
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import poll_until

HELPER = postcopy_source.__name__
FORMAT = 'mapped-ram'
# threads of QEMU's loader: as vm_restore's (save.save_restore.LOAD_CHANNELS), with O_DIRECT
# about 3x the rate of one reader through the page cache
CHANNELS = 4


def _mark(bitmap, first, last):
    """Set bits first..last-1 of ``bitmap`` (bit i: byte i // 8, bit i % 8, as QEMU's longs on a
    little-endian host), whole bytes at once."""
    while first < last and first & 7:
        bitmap[first >> 3] |= 1 << (first & 7)
        first += 1
    whole = last & ~7
    if first < whole:
        bitmap[first >> 3:whole >> 3] = b'\xff' * ((whole - first) >> 3)
        first = whole
    while first < last:
        bitmap[first >> 3] |= 1 << (first & 7)
        first += 1


def fill_bitmap(memory_file):
    """Write each RAM block's mapped-ram bitmap of ``memory_file`` from where its pages hold
    data (SEEK_DATA/SEEK_HOLE; a file system without them reports all data: every page is
    then read, holes as zeros). The same bitmap every time: a run killed half-way is made
    whole by the next. It reads the image first, so a revert calls it before the VM stops: a
    file that is no such image fails then. How many pages it marks."""
    try:
        img = postcopy_source.MappedRamImage(memory_file)
    except (OSError, postcopy_source.ImageError) as e:
        raise JobFailed("cannot read memory file %s: %s" % (memory_file, e),
                        hint="nothing was changed; the snapshot's memory file is damaged or not a mapped-ram image")
    marked = 0
    try:
        fd = os.open(memory_file, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for b in img.blocks:
                bitmap = bytearray(postcopy_source.bitmap_bytes(b.pages))
                end = b.pages_offset + b.length
                pos = b.pages_offset
                while pos < end:
                    try:
                        data = os.lseek(img.fd, pos, os.SEEK_DATA)
                    except OSError:  # ENXIO: no data after pos
                        break
                    if data >= end:
                        break
                    hole = min(os.lseek(img.fd, data, os.SEEK_HOLE), end)
                    first = (data - b.pages_offset) // postcopy_source.PAGE
                    last = (hole - b.pages_offset + postcopy_source.PAGE - 1) // postcopy_source.PAGE
                    _mark(bitmap, first, last)
                    marked += last - first
                    pos = hole
                os.pwrite(fd, bytes(bitmap), b.bitmap_offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        img.close()
    return marked


def load_in_full(vm, memory_file, deadline, pages):
    """``memory_file``, its bitmap written (fill_bitmap: ``pages`` marked), loaded by QEMU's own
    mapped-ram loader into ``vm`` (just launched with -incoming defer); what the load reports for
    the module's result."""
    migration.configure(vm, {FORMAT: True, 'multifd': True}, {'multifd-channels': CHANNELS},
                        direct_io=opens_direct(memory_file))
    t0 = time.monotonic()
    load_file(vm, memory_file, vm.owner_uid(), deadline, "loading memory file %s" % memory_file)
    seconds = round(time.monotonic() - t0, 3)
    return dict(load=dict(mode='full', loader='qemu', seconds=seconds, pages=pages, requested=0,
                          rate_mib_s=round(pages * 4096 / 1048576.0 / seconds, 1) if seconds else None,
                          progress=[]))


def _helper_argv(args):
    """The helper, run from wherever this module was imported (AnsiballZ's zip or a collection path)."""
    roots = [os.path.dirname(p) for p in ansible_collections.__path__]
    return [sys.executable, '-c', 'import runpy, sys; sys.path[:0] = %r; runpy.run_module(%r, run_name="__main__")'
            % (roots, HELPER)] + args


def _lines(text):
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def load_in_background(vm, memory_file, deadline, exited_at):
    """Feed ``memory_file`` to ``vm`` (just launched with -incoming defer) through the postcopy
    helper: the guest runs at once. Return once all RAM is in, with when the guest ran again
    (``running_after_s``, from ``exited_at``, the monotonic time the old QEMU exited)."""
    tmp = tempfile.mkdtemp(prefix='vmfleet-load-')  # a short path: a unix socket's is at most 107 bytes
    process.give_to(tmp, vm.owner_uid())  # QEMU listens there as its own user
    sock = os.path.join(tmp, 'stream.sock')
    helper = None
    t0 = time.monotonic()
    try:
        migration.set_capabilities(vm, {'postcopy-ram': True, 'postcopy-preempt': True})
        # a stream that breaks off before the guest runs must not make QEMU exit: its socket
        # is what a revert run again finds the VM by
        vm.qmp('migrate-incoming', uri='unix:%s' % sock, **{'exit-on-error': False})
        helper = subprocess.Popen(_helper_argv([memory_file, sock]),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  close_fds=True)
        seen = dict(running_after_s=None)

        def done():
            info = vm.qmp('query-migrate', _timeout=deadline.remaining(1.0))
            status = info.get('status', 'none')
            if seen['running_after_s'] is None and vm.qmp('query-status')['status'] == 'running':
                seen['running_after_s'] = round(time.monotonic() - exited_at, 3)
            if status == 'completed':
                return info
            if status == 'failed' or status.startswith('postcopy-paused') or helper.poll() not in (None, 0):
                out = helper.communicate()[0].decode('utf-8', 'replace') if helper.poll() is not None else ''
                lines = _lines(out)
                last = lines[-1] if lines else {}
                # the helper's own words: its last progress line's error, or what it printed instead (a traceback)
                said = last.get('error') or (out[-300:].strip() if not lines else '')
                e = JobFailed(
                    "the background load of %s stopped (QEMU's status %s, helper %s%s)%s" % (
                        memory_file, status,
                        'exit code %s' % helper.returncode if helper.returncode is not None else 'running',
                        ', at %s of %s pages' % (last['pages'], last['total_pages']) if 'pages' in last else '',
                        ': ' + said if said else ''),
                    hint=("the guest cannot run on (QEMU's postcopy: pages it never got cannot be made up); a QEMU "
                          "waiting for a load took its place on the same QMP socket and the snapshot is intact: "
                          "revert again"))
                e.keep_vm = True
                raise e
            return None

        def timed_out():
            e = OperationTimeout("loading %s did not finish within %gs" % (memory_file, deadline.timeout),
                                 hint="raise 'timeout' and revert again; a QEMU waiting for a load took the guest's "
                                      "place on its QMP socket")
            e.keep_vm = True
            return e
        poll_until(done, deadline, timed_out, interval=0.02)
        out = helper.communicate(timeout=max(5.0, deadline.remaining(5.0)))[0].decode('utf-8', 'replace')
        if helper.returncode:
            raise JobFailed("the loader of %s failed (exit code %d): %s" % (memory_file, helper.returncode, out[-500:]))
        progress = _lines(out)
        last = progress[-1] if progress else {}
        seconds = round(time.monotonic() - t0, 3)
        pages = last.get('pages', 0)
        result = dict(mode='background', loader='helper', seconds=seconds, pages=pages,
                      requested=last.get('requested', 0),
                      rate_mib_s=round(pages * 4096 / 1048576.0 / seconds, 1) if seconds else None,
                      progress=[p for p in progress if p.get('phase') == 'loading'])
        return dict(load=result, running_after_s=seen['running_after_s'])
    finally:
        if helper is not None and helper.poll() is None:
            helper.kill()
            helper.wait()
        shutil.rmtree(tmp, ignore_errors=True)
