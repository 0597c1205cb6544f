# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's disks as every backend reports them: the images, their internal
snapshots, and how a disk is found by any name it has had."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import DiskNotFound

# Formats whose images can hold internal snapshots.
SNAPSHOT_FORMATS = ('qcow2',)


class ImageSnapshot(object):
    """One internal snapshot as one image records it."""

    def __init__(self, name, snap_id, vm_state_size, date_sec, vm_clock_sec):
        self.name = name
        self.id = snap_id
        self.vm_state_size = int(vm_state_size or 0)
        self.date_sec = float(date_sec or 0)
        self.vm_clock_sec = float(vm_clock_sec or 0)

    @classmethod
    def from_qemu(cls, s):
        # query-block and 'qemu-img info' spell the same fields differently.
        return cls(s['name'], s.get('id'), s.get('vm-state-size'),
                   s.get('date-sec', 0) + s.get('date-nsec', 0) / 1e9,
                   s.get('vm-clock-sec', 0) + s.get('vm-clock-nsec', 0) / 1e9)


class Disk(object):
    def __init__(self, name, node_name, file, fmt, virtual_size, read_only, snapshots=None):
        self.name = name
        self.node_name = node_name
        self.file = file
        self.format = fmt
        self.virtual_size = virtual_size
        self.read_only = read_only
        self.snapshots = snapshots or []

    @property
    def can_snapshot(self):
        return self.format in SNAPSHOT_FORMATS and not self.read_only

    def to_dict(self):
        return dict(name=self.name, node_name=self.node_name, file=self.file, format=self.format,
                    virtual_size=self.virtual_size, read_only=self.read_only)


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat()


def summarize_snapshots(disks):
    """Group per-image snapshot records by name into one entry per snapshot."""
    by_name = {}
    for disk in disks:
        for s in disk.snapshots:
            by_name.setdefault(s.name, []).append((disk, s))
    out = []
    for name, entries in by_name.items():
        snaps = [s for d, s in entries]
        clocks = [s.vm_clock_sec for s in snaps]
        dates = [s.date_sec for s in snaps]
        holders = [d.name for d, s in entries if s.vm_state_size]
        out.append(dict(
            name=name,
            disks=[d.name for d, s in entries],
            vmstate_disk=holders[0] if len(holders) == 1 else None,
            vm_state_size=sum(s.vm_state_size for s in snaps),
            date=_iso(min(dates)),
            vm_clock_sec=snaps[0].vm_clock_sec,
            # One moment on every disk, and RAM state in at most one place.
            # A disk-only snapshot taken in one transaction records each disk's
            # clock as QEMU reached it: a few ms apart, not seconds.
            consistent=max(clocks) - min(clocks) < 1.0 and max(dates) - min(dates) < 60 and len(holders) <= 1,
        ))
    out.sort(key=lambda e: (e['date'], e['name']))
    return out


def find_disk(vm_name, disks, name, aliases=None):
    """The disk ``name`` addresses: its device name, its current node name, or
    any name it was addressed by before (``aliases``: old name -> device name;
    a raw QEMU's pivoted disk has a new node but keeps its device)."""
    for d in disks:
        if name in (d.name, d.node_name):
            return d
    alias = (aliases or {}).get(name)
    for d in disks:
        if alias is not None and alias == d.name:
            return d
    raise DiskNotFound(
        "VM '%s' has no disk '%s'" % (vm_name, name),
        hint="its disks are: %s" % (", ".join(d.name for d in disks) or "none"))
