# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_migrate's snapshot files of a VM: the instant snapshots (memory file and manifest,
snapshot/instant.py) and a raw QEMU's external snapshot records (record and memory file,
backends/qemu/external_record.py) kept in ``memory_dir``. Their disk parts are in the images,
which shared storage hands to the destination as they are; these files are the snapshots' other
half, and without them the destination's snapshot_info lists nothing.

The destination's ``memory_dir`` (the same path there) is either the same directory (shared:
the destination sees our very manifests) or its own. In its own, each memory file is copied
before the migration starts (a file without its manifest or record is no snapshot); after the
migration the rewritten manifests are written there, last, and only then are the source's files
removed. A manifest is rewritten by the backend's ``rewrite`` (a raw QEMU's relaunch command line
names the QMP socket the VM has at the destination).

From before the migration starts until the source's files are gone, a durable journal
(``<journal_dir>/<vm>.snapshot-files.json``) names what is carried and the rewritten manifests: a
re-run after the module was killed finishes the carry when the VM runs at the destination, or
removes the copies when it runs here. The source's files are never touched before the
destination holds complete copies, so nothing is lost whatever fails."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import re

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import external_record
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    InvalidArgument, JobFailed, TargetProblem, VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot import instant

_UNSAFE = re.compile(r'[^A-Za-z0-9_.-]')


def held(memory_dir, vm_name):
    """The VM's snapshot files: [dict(name, kind, record (the manifest's or record's path),
    data (the memory file or None), content (the manifest/record))], oldest first."""
    out = []
    for name, (path, m) in sorted(instant.find_manifests(memory_dir, vm_name).items()):
        out.append(dict(name=name, kind='instant', record=manifest_store.manifest_path(path), data=path, content=m))
    for r in external_record.records(memory_dir, vm_name):
        j = external_record.journal_path(memory_dir, vm_name, r['name'])
        if os.path.exists(j):
            raise InvalidArgument("the delete of external snapshot '%s' of VM '%s' is under way (journal %s)"
                                  % (r['name'], vm_name, j),
                                  hint="nothing was changed; run its delete (state: absent) again to finish it, "
                                       "then migrate")
        out.append(dict(name=r['name'], kind='external', record=external_record.record_path(memory_dir, vm_name, r['name']),
                        data=r.get('memory_file'), content=r))
    return out


def names(snaps):
    return ["%s (%s)" % (s['name'], s['kind']) for s in snaps]


class SnapshotFiles(object):
    """A VM's snapshot files on their way to ``remote`` (backends/qemu/remote.Remote). ``key``: what
    names the journal, known to a re-run that finds no VM here (a domain's name, a QMP socket)."""

    def __init__(self, memory_dir, journal_dir, key, remote):
        self.memory_dir = memory_dir or instant.DEFAULT_MEMORY_DIR
        self.dir = journal_dir or '/var/lib/vmfleet/journal'
        self.vm_name = None
        self.remote = remote
        self.path = os.path.join(self.dir, '%s.snapshot-files.json' % _UNSAFE.sub('_', key.strip('/')))
        self.snaps = []
        self.shared = False

    # -- before anything changes --
    def plan(self, storage, vm_name):
        """The snapshots of ``vm_name`` to carry (their names for the result); refuses, before anything,
        what cannot be carried."""
        self.vm_name = vm_name
        self.snaps = held(self.memory_dir, self.vm_name)
        if not self.snaps:
            return []
        if self.remote is None:
            raise InvalidArgument("the snapshot files of VM '%s' (%s) cannot be carried: destination_uri names no host "
                                  "to reach over SSH; nothing was changed" % (vm_name, ", ".join(names(self.snaps))),
                                  hint="give the destination as qemu+ssh://USER@HOST/system, or delete the snapshots first")
        if storage == 'copy':
            # the copy takes the disks' active data only: the disk half of every one would stay behind
            raise InvalidArgument(
                "storage: copy cannot carry the snapshots of VM '%s' (%s): their disk part stays in the source's "
                "images; nothing was changed" % (self.vm_name, ", ".join(names(self.snaps))),
                hint="migrate it with shared storage (its snapshots then go with it), or delete them first "
                     "(vmfleet.kvm.snapshot state: absent)")
        paths = [s['record'] for s in self.snaps] + [s['data'] for s in self.snaps if s['data']]
        there = self.remote.sums(paths, 'looking for the snapshot files')
        mine = dict((p, manifest_store.sha256_file(p)) for p in paths if p in there)
        same = [p for p in mine if there[p] == mine[p]]
        if len(same) == len(paths):  # paths is not empty
            self.shared = True  # the destination sees this very memory_dir
        elif there:
            p = sorted(there)[0]
            raise TargetProblem("%s exists already at %s, and is not this host's file: the snapshot files of VM '%s' "
                                "(%s) cannot be carried there"
                                % (p, self.remote.host, self.vm_name, ", ".join(names(self.snaps))),
                                hint="nothing was changed; remove it there (another VM's leftover of that name?) "
                                     "or delete the snapshots here first")
        return [s['name'] for s in self.snaps]

    # -- around the migration --
    def send(self, rewrite):
        """Before the migration: the memory files copied there (unless shared), the journal written
        with the rewritten manifests (``rewrite(kind, content)``: the content the destination needs)."""
        if not self.snaps:
            return
        entries = [dict(s, content=rewrite(s['kind'], s['content'])) for s in self.snaps]
        record = dict(vm=self.vm_name, destination=self.remote.host, shared=self.shared, snapshots=entries)
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, 0o700)
        # the journal first: a kill during the copies leaves what a re-run removes
        durable.atomic_write(self.path, json.dumps(record).encode('utf-8'))
        if not self.shared:
            for s in entries:
                if s['data']:
                    self.remote.put(s['data'], s['data'], 'copying the memory file of snapshot %s' % s['name'])

    def pending(self):
        return durable.read_json(self.path, 'snapshot files journal',
                                 "check its permissions; it names the snapshot files on their way")

    def finish(self):
        """The VM runs at the destination: the rewritten manifests written there (last), then the
        source's files removed, then the journal; the snapshot names carried."""
        record = self.pending()
        if record is None:
            return []
        for s in record['snapshots']:
            data = json.dumps(s['content'], indent=1, sort_keys=True).encode('utf-8')
            if record['shared']:
                durable.atomic_write(s['record'], data)
            else:
                self.remote.write(s['record'], data, 'writing the manifest of snapshot %s' % s['name'])
        if not record['shared']:
            for s in record['snapshots']:
                # the manifest first: a memory file without one is no snapshot
                manifest_store.remove([s['record']] + ([s['data']] if s['data'] else []))
            durable.fsync_dir(self.memory_dir)
        self._drop()
        return [s['name'] for s in record['snapshots']]

    def finish_moved(self, what, where, **result):
        """finish(), the VM running at ``where``: a failure says that nothing is lost, and how to
        finish the carry (``result``: the task's result so far)."""
        try:
            return self.finish()
        except VmfleetError as e:
            raise JobFailed("%s runs at %s, but its snapshot files could not be finished there: %s" % (what, where, e.msg),
                            hint="nothing is lost: they are complete here, and %s names them; run the task again to "
                                 "finish the carry" % self.path, **result)

    def stranded(self, what, where):
        """The error of a re-run that finds the VM running neither here nor at ``where``."""
        return JobFailed("%s runs neither here nor at %s: its snapshot files are complete here, and %s names them"
                         % (what, where, self.path), hint="start it where it should run, then run the task again")

    def undo(self):
        """The VM runs here (the migration failed): the copies there removed, the journal dropped."""
        record = self.pending()
        if record is None:
            return []
        if not record['shared']:
            try:
                self.remote.ssh(self.remote.sudo + ['rm', '-f', '--'] + [s['data'] for s in record['snapshots'] if s['data']]
                                + [s['data'] + '.vmfleet-carry' for s in record['snapshots'] if s['data']],
                                'removing the copied memory files')
            except VmfleetError as e:
                raise JobFailed("cannot remove the copied memory files of VM '%s' at %s: %s"
                                % (record['vm'], self.remote.host, e.msg),
                                hint="the snapshots are intact here; run the task again to clean up there (%s)" % self.path)
        self._drop()
        return [s['name'] for s in record['snapshots']]

    def _drop(self):
        os.unlink(self.path)
        durable.fsync_dir(self.dir)
