# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The durable journal of a drive mirror: one small JSON file per VM disk.

Why durable (seed 003, the live block copy discussion): the manager asks for
a copy of /a/image to /b/image and dies; QEMU switches the guest to /b; then
QEMU dies too. Nobody knows any more which image is live unless the switch was
written to reliable storage. So each phase is written before the step it
announces is taken (``switching``) and again once it is proven (``switched``),
each time atomically: a temporary file, fsync, rename over the old one, fsync
of the directory. A reader sees the old journal or the new one, never half."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import errno
import json
import os
import re

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmfleetError

VERSION = 1

# The phases in the order a mirror goes through them.
PLANNED = 'planned'               # arguments checked, nothing touched yet
TARGET_CREATED = 'target_created'  # we created the target image (ours to recreate)
COPYING = 'copying'               # the block job runs; the source is live
READY = 'ready'                   # source and target in sync; the source is live
SWITCHING = 'switching'           # about to switch: the live image is unknown until proven
SWITCHED = 'switched'             # the VM runs on the target
CONFIG_UPDATED = 'config_updated'  # libvirt's persistent definition names the target too
DONE = 'done'                     # finished: the target is live, everywhere
CANCELLED = 'cancelled'           # the job was stopped; the source is live
FAILED = 'failed'                 # the job failed; the source is live

PHASES = (PLANNED, TARGET_CREATED, COPYING, READY, SWITCHING, SWITCHED, CONFIG_UPDATED, DONE,
          CANCELLED, FAILED)
# Phases after which the target, not the source, holds the VM's newest data.
TARGET_LIVE = (SWITCHED, CONFIG_UPDATED, DONE)
# Phases where a mirror job may still be running.
ACTIVE = (PLANNED, TARGET_CREATED, COPYING, READY, SWITCHING)

_UNSAFE = re.compile(r'[^A-Za-z0-9._-]')


def same_file(a, b):
    """Two paths that name the same file (both given)."""
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def _now():
    return datetime.datetime.now(tz=datetime.timezone.utc).isoformat(timespec='milliseconds')


def journal_path(journal_dir, vm_name, disk_name):
    """``<journal_dir>/<vm>--<disk>.json`` with anything odd in the names made safe."""
    def safe(s):
        return _UNSAFE.sub('_', s or 'unnamed')
    return os.path.join(journal_dir, '%s--%s.json' % (safe(vm_name), safe(disk_name)))


class Journal(object):
    """The record of one disk's mirror. ``record(phase, **facts)`` is durable
    when it returns."""

    def __init__(self, path, data=None):
        self.path = path
        self.data = data

    @classmethod
    def open(cls, journal_dir, vm_name, disk_name, create_dir=True):
        if create_dir and not os.path.isdir(journal_dir):
            try:
                os.makedirs(journal_dir, 0o700)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise VmfleetError("cannot create the journal directory %s: %s" % (journal_dir, e.strerror),
                                       hint="choose a writable journal_dir on a local filesystem")
        path = journal_path(journal_dir, vm_name, disk_name)
        j = cls(path)
        j.load()
        return j

    def load(self):
        try:
            # it says which image is live and which may be removed: only one root alone could write counts
            with durable.open_trusted(self.path, 'mirror journal') as f:
                raw = f.read()
        except IOError as e:
            if e.errno == errno.ENOENT:
                self.data = None
                return None
            raise VmfleetError("cannot read the mirror journal %s: %s" % (self.path, e.strerror),
                               hint="check its permissions; it records which image is live, do not delete it")
        try:
            self.data = json.loads(raw.decode('utf-8'))
        except ValueError as e:
            raise VmfleetError("the mirror journal %s is not valid JSON (%s)" % (self.path, e),
                               hint="it is written atomically, so something else changed it; inspect it, "
                                    "move it aside once you know which image the VM runs on, and re-run")
        return self.data

    @property
    def exists(self):
        return self.data is not None

    @property
    def phase(self):
        return self.data.get('phase') if self.data else None

    def get(self, key, default=None):
        return (self.data or {}).get(key, default)

    def start(self, **facts):
        """A new mirror: the previous record (if any) is kept as ``previous``."""
        prev = self.data
        self.data = dict(version=VERSION, started=_now(), history=[])
        if prev:
            keep = dict((k, prev.get(k)) for k in ('phase', 'source', 'target', 'started', 'updated'))
            self.data['previous'] = keep
        self.data.update(facts)

    def update(self, **facts):
        """Change facts without a new phase; durable like record()."""
        self.data.update(facts)
        self.data['updated'] = _now()
        self._write()

    def record(self, phase, note=None, **facts):
        if phase not in PHASES:
            raise ValueError(phase)
        self.data.update(facts)
        self.data['phase'] = phase
        self.data['updated'] = _now()
        entry = dict(phase=phase, at=self.data['updated'])
        if note:
            entry['note'] = note
        self.data.setdefault('history', []).append(entry)
        self._write()

    def _write(self):
        body = json.dumps(self.data, indent=1, sort_keys=True).encode('utf-8') + b'\n'
        try:
            durable.atomic_write(self.path, body)
        except (IOError, OSError) as e:
            raise VmfleetError("cannot write the mirror journal %s: %s" % (self.path, e.strerror),
                               hint="free space or fix permissions on journal_dir; nothing is switched "
                                    "before its journal entry is on disk")

    def to_dict(self):
        return dict(self.data or {}, path=self.path)
