# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backend-neutral VM handle: what every feature sees of a VM, whether
libvirt manages it or only a QMP socket reaches it (raw QEMU). A backend is
one subclass of VmHandle; feature code asks the handle and never looks at
which backend it has."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import os
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing, DiskNotFound

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


class MirrorDriver(object):
    """What drive_mirror's engine asks of a backend to copy one disk live; each
    backend's ``*_mirror.py`` subclasses it. Required: ``job(disk, job_id)``
    (a dict with id, len, offset, ready, status, error, speed; None when there
    is none), ``start``, ``set_speed``, ``complete``, ``cancel``, ``pause``,
    ``resume``, ``nodes_for_verify``. The rest defaults to a backend without
    a persistent definition of its VMs."""

    route = None
    # the backend keeps a persistent definition, pointed at the target after the switch
    keeps_config = False
    # what the result says when the job ended without an error message
    silent_failure = 'the job ended without an error message'

    def __init__(self, vm):
        self.vm = vm

    def job_target(self, disk):
        return None  # the backend does not say: the journal does

    def dismiss(self, job):
        pass

    def cleanup_after_cancel(self, target):
        pass

    def backing_node(self, disk):
        return None

    def config_source(self, disk):
        return None

    def update_config(self, disk, target, fmt):
        return False

    def stale_definition(self, disk, target, source):
        """A warning for after the switch, when the VM's definition still names the old image."""
        return None


class VmHandle(object):
    """One VM, whichever backend runs it. Subclasses implement the primitives
    and the backend-specific steps below; features use only this interface."""

    backend = None
    # libvirt keeps snapshot metadata of its own and can take a full internal snapshot itself.
    native_snapshots = False
    # A stopped VM's images are free for qemu-img (a libvirt domain that is shut
    # off; a raw QEMU that is not running still holds them open).
    offline_snapshots = False

    def __init__(self, module, name):
        self.module = module
        self.name = name

    # -- primitives --
    def state(self):
        raise NotImplementedError

    def disks(self):
        raise NotImplementedError

    def qmp(self, command, _timeout=60.0, **args):
        raise NotImplementedError

    def wait_event(self, timeout):
        """The next QMP event, or None after at most ``timeout`` seconds."""
        raise NotImplementedError

    def drain_events(self):
        """QMP events received and not yet read (none where the backend gives none)."""
        return []

    def block_jobs(self):
        raise NotImplementedError

    def identity(self):
        """What a manifest records to find this VM again."""
        raise NotImplementedError

    def connection(self):
        """The module options that reach this VM again."""
        raise NotImplementedError

    def host_facts(self, timeout):
        """vm_info's ``host`` entry: the QEMU (and libvirt) that run this VM, and what they can do."""
        raise NotImplementedError

    def close(self):
        pass

    def quit(self, timeout=30.0):
        """Make QEMU exit (a raw QEMU whose guest runs elsewhere now), and wait until it has."""
        raise NotImplementedError

    def memory_bytes(self):
        """The guest's memory size (what a destination must have free)."""
        raise NotImplementedError

    # -- backend-specific steps --
    def disk_aliases(self):
        """{name the disk was addressed by before: its device name}."""
        return {}

    def mirror_driver(self):
        raise NotImplementedError

    @classmethod
    def migrator_class(cls):
        """This backend's backends.migrator.Migrator subclass (it moves a VM to another host)."""
        raise NotImplementedError

    def migrator(self, params, deadline):
        """What moves this VM to ``params['destination_uri']`` (vm_migrate's options) within ``deadline``."""
        return self.migrator_class()(self.module, params, deadline, self)

    def save_route(self, channels, compression):
        """(path_used, why): how this VM's RAM would be saved, or CapabilityMissing."""
        raise NotImplementedError

    def save(self, saver, path_used):
        """Save the VM's state through ``saver`` (save_restore.Saver); (manifest, seconds, downtime_ms)."""
        raise NotImplementedError

    def check_instant_snapshots(self):
        raise CapabilityMissing("VM '%s' (%s) cannot take instant snapshots" % (self.name, self.backend),
                                hint="use mode: internal")

    def qemu_version(self):
        raise NotImplementedError

    def pause(self):
        """Stop the guest's vCPUs."""
        self.qmp('stop')

    def resume(self):
        self.qmp('cont')

    def holds_no_guest(self):
        """A QEMU started to receive a VM's state that never got one (a failed load left it): it
        has no guest whose state a revert should keep."""
        return False

    def relaunch_record(self):
        """What a revert to a memory file needs to bring this VM back (recorded in the manifest)."""
        raise NotImplementedError

    def check_relaunch(self, record, what):
        """Before anything stops: ``record`` (relaunch_record) can bring this VM back."""
        raise NotImplementedError

    def start_memory_write(self, path, fd, was_running):
        """Start QEMU's migration of the (paused) VM's RAM and device state into
        the partial memory file ``path``, open (and locked) as ``fd`` by the caller."""
        raise NotImplementedError

    def finish_memory_write(self, path, fd):
        """The migration completed: make the memory file whole and durable (before it is renamed)."""
        os.fsync(fd)

    def abort_memory_write(self, path, fd):
        """Stop a memory write that failed half-way (the caller removes the file)."""
        try:
            self.qmp('migrate_cancel')
            # until QEMU has let go of the file: a later save of the VM needs its migration idle
            end = time.monotonic() + 10.0
            while self.qmp('query-migrate').get('status') in ('cancelling', 'active', 'setup', 'device') \
                    and time.monotonic() < end:
                time.sleep(0.05)
        except Exception:  # nothing to cancel, or QEMU gone: the caller reports the first error
            pass

    def instant_memory_caps(self):
        """Migration capabilities an instant snapshot's memory file is written with, beyond the stream."""
        return {}

    def revert_to_memory(self, record, name, images, memory_file, state, deadline, memory_format=None, load='full'):
        """Stop the VM, apply disk snapshot ``name`` to ``images`` and bring the
        VM back from ``memory_file`` (written as ``memory_format``) in ``state``,
        its RAM loaded as ``load`` says; a dict for the module's result."""
        raise NotImplementedError

    # -- shared logic --
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def migrate_caps(self):
        return [c['capability'] for c in self.qmp('query-migrate-capabilities')]

    def is_running(self):
        return self.state() in ('running', 'paused')

    def disk(self, name, disks=None):
        disks = self.disks() if disks is None else disks
        try:
            return find_disk(self.name, disks, name)
        except DiskNotFound:
            # the names it had before cost a look at the VM's definition: only on a miss
            return find_disk(self.name, disks, name, self.disk_aliases())

    def snapshots(self, disks=None):
        return summarize_snapshots(self.disks() if disks is None else disks)

    def native_snapshot_names(self):
        return set()

    def describe(self):
        disks = self.disks()
        return dict(name=self.name, backend=self.backend, state=self.state(),
                    disks=[d.to_dict() for d in disks],
                    snapshots=self.snapshots(disks),
                    block_jobs=self.block_jobs() if self.is_running() else [])
