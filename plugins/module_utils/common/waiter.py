# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deadlines and waiting: one ``timeout`` budget shared by every step, and the
one polling loop every wait in the engine goes through."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import time


class Deadline(object):
    def __init__(self, timeout):
        self.timeout = float(timeout)
        self.start = time.monotonic()
        self.end = self.start + self.timeout

    def remaining(self, at_least=0.0):
        return max(at_least, self.end - time.monotonic())

    def expired(self):
        return time.monotonic() >= self.end

    def elapsed(self):
        return time.monotonic() - self.start


def poll_until(probe, deadline, on_timeout, interval=0.25, wait=None):
    """Call ``probe()`` until it returns something other than None, and return that.

    ``deadline`` is checked after each probe, so a condition met at the last
    moment still counts; once it has expired, the exception ``on_timeout()``
    builds is raised (it can name the last state the probe saw). Between
    probes ``wait(seconds)`` is called, by default a sleep; a QMP event wait
    fits there and wakes the loop as soon as QEMU announces a change."""
    wait = wait or time.sleep
    while True:
        value = probe()
        if value is not None:
            return value
        if deadline.expired():
            raise on_timeout()
        wait(min(interval, deadline.remaining(0.001)))
