# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_migrate's snapshot metadata of a libvirt domain. libvirt refuses to migrate a domain that
has snapshot metadata ("cannot migrate domain with N snapshots"). With shared storage the
internal snapshots stay in the images the destination opens; only libvirt's record of them has
to move: each snapshot's XML is dumped (secure: with what the domain definition hides), the
metadata alone is removed, the domain migrates, and the snapshots are redefined at the
destination (the current one current again), or back at the source when the migration failed.

From before the first removal until every snapshot is defined again, a durable journal
(``<journal_dir>/<domain>.snapshots.json``, written as drive_mirror's: temporary file, fsync,
rename, fsync of the directory) holds the dumped XML, so that a re-run after the module was
killed half-way puts the metadata back where the domain runs."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import re

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import JobFailed

try:
    import libvirt
except ImportError:  # open_vm reported it already (missing_required_lib)
    pass

DEFAULT_JOURNAL_DIR = '/var/lib/vmfleet/journal'
_UNSAFE = re.compile(r'[^A-Za-z0-9_.-]')


def snapshot_names(dom):
    """The names of the domain's snapshots in libvirt's metadata."""
    return sorted(s.getName() for s in dom.listAllSnapshots(0))


def dump(dom):
    """Each snapshot of ``dom`` as {name, parent, current, xml}, every parent before its children."""
    snaps = []
    for s in dom.listAllSnapshots(0):
        try:
            parent = s.getParent(0).getName()
        except libvirt.libvirtError:
            parent = None
        snaps.append(dict(name=s.getName(), parent=parent, current=bool(s.isCurrent(0)),
                          xml=s.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)))
    ordered, placed = [], set()
    names = set(s['name'] for s in snaps)
    while len(ordered) < len(snaps):
        ready = [s for s in snaps
                 if s['name'] not in placed and (s['parent'] not in names or s['parent'] in placed)]
        for s in sorted(ready, key=lambda x: x['name']):
            ordered.append(s)
            placed.add(s['name'])
    return ordered


class SnapshotCarry(object):
    """The snapshot metadata of domain ``name`` on its way with a migration."""

    def __init__(self, journal_dir, name):
        self.dir = journal_dir or DEFAULT_JOURNAL_DIR
        self.name = name
        self.path = os.path.join(self.dir, '%s.snapshots.json' % _UNSAFE.sub('_', name))

    def pending(self):
        """The journal's record (a run that removed the metadata and did not define it again), or None."""
        # its XML is defined as root: only a file root alone could write counts (read_json checks)
        return durable.read_json(self.path, 'snapshot metadata journal',
                                 "check its permissions; it holds the snapshots' metadata, do not delete it")

    def take(self, dom, destination):
        """Dump the metadata to the journal (durable first), then remove it from ``dom``; the names."""
        snaps = dump(dom)
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, 0o700)
        durable.atomic_write(self.path, json.dumps(dict(domain=self.name, destination=destination,
                                                        snapshots=snaps)).encode('utf-8'))
        for s in reversed(snaps):  # children first
            dom.snapshotLookupByName(s['name'], 0).delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        return [s['name'] for s in snaps]

    def put_back(self, dom, where):
        """Define every journaled snapshot on ``dom`` (one already there is left as it is), then
        drop the journal; the names defined. A failure keeps the journal and names ``where``."""
        record = self.pending()
        if record is None:
            return []
        have = set(snapshot_names(dom))
        done = []
        for s in record['snapshots']:
            if s['name'] in have:
                continue
            flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
            if s['current']:
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
            try:
                dom.snapshotCreateXML(s['xml'], flags)
            except libvirt.libvirtError as e:
                raise JobFailed("cannot define snapshot '%s' of domain '%s' again at %s: %s"
                                % (s['name'], self.name, where, e.get_error_message()),
                                hint="its metadata is kept in %s; run the task again to define it where the domain "
                                     "runs" % self.path)
            done.append(s['name'])
        os.unlink(self.path)
        durable.fsync_dir(self.dir)
        return done
