# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deadlines and waiting: one ``timeout`` budget shared by every step."""

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
