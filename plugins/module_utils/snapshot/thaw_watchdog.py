# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The thaw watchdog: a process of its own that quiesce.py starts before it
freezes a guest's filesystems, so that they are thawed even when the module
dies (killed, crashed, its host connection gone) while they are frozen.

Run as ``python -c ... SECONDS SPEC_JSON`` with the read end of a pipe as its
stdin. It prepares the thaw (imports, connects), prints ``ready``, then waits:
the module writes ``thawed`` when it has thawed itself, and the watchdog exits.
If the pipe closes without that word (the module is gone: the kernel closes
the pipe of a dead process) or SECONDS pass, it thaws at once, retrying a few
times. A thaw of filesystems that are not frozen is harmless."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import select
import sys
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import backend_class

DONE = b'thawed'
READY = b'ready\n'
THAW_TRIES = 5


def wait_for_word(fd, seconds):
    """True when ``DONE`` arrives on ``fd`` within ``seconds``; False when it closes or the time is up."""
    end = time.monotonic() + seconds
    got = b''
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        ready, _w, _x = select.select([fd], [], [], left)
        if not ready:
            return False
        chunk = os.read(fd, 64)
        if not chunk:
            return False
        got += chunk
        if DONE in got:
            return True


def thaw_with_retries(thaw, tries=THAW_TRIES, pause=1.0):
    for i in range(tries):
        try:
            thaw()
            return True
        except Exception as e:  # the agent busy or its channel reconnecting: try again
            sys.stderr.write('thaw failed (try %d): %s\n' % (i + 1, e))
            time.sleep(pause)
    return False


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    seconds, spec = float(argv[0]), json.loads(argv[1])
    # everything the thaw needs, now: the module's files may be gone when it is needed
    thaw = backend_class(spec['backend']).thawer(spec)
    os.write(1, READY)
    # from here on nobody may read its output (the module gone): a write to a closed pipe must not end it
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    if wait_for_word(0, seconds):
        return 0
    return 0 if thaw_with_retries(thaw) else 1


if __name__ == '__main__':
    raise SystemExit(main())
