# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backend-neutral VM handle: what every feature sees of a VM, whether
libvirt manages it or only a QMP socket reaches it (raw QEMU). A backend is
one subclass of VmHandle; feature code asks the handle and never looks at
which backend it has."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import find_disk, summarize_snapshots
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing, DiskNotFound


class VmHandle(object):
    """One VM, whichever backend runs it. Subclasses implement the primitives
    and the backend-specific steps below; features use only this interface."""

    backend = None
    # libvirt keeps snapshot metadata of its own and can take a full internal snapshot itself.
    native_snapshots = False
    # A stopped VM's images are free for qemu-img (a libvirt domain that is shut
    # off; a raw QEMU that is not running still holds them open).
    offline_snapshots = False
    # what of restore()'s dict vm_restore's result repeats: how to reach the VM again
    restored_reach = ()
    # its external snapshot freezes the guest's filesystems itself when asked to quiesce
    # (libvirt's QUIESCE flag); else snapshot/quiesce.py freezes around it
    freezes_in_snapshot = False

    def __init__(self, module, name):
        self.module = module
        self.name = name

    @classmethod
    def open(cls, module, params):
        """The VM the connection options ``params`` name (backends.open_vm chose
        this class from them); VmNotFound or ConnectionFailed when it is not there."""
        raise NotImplementedError

    # -- primitives --
    def state(self):
        """'running', 'paused', 'shutoff', 'shutdown', 'crashed', 'pmsuspended' or 'unknown'."""
        raise NotImplementedError

    def disks(self):
        """The VM's disks (backends.disk.Disk), with the internal snapshots their images hold."""
        raise NotImplementedError

    def qmp(self, command, _timeout=60.0, **args):
        """Run QMP ``command`` on the VM's QEMU: its return value, or QmpCommandError."""
        raise NotImplementedError

    def wait_event(self, timeout):
        """The next QMP event, or None after at most ``timeout`` seconds."""
        raise NotImplementedError

    def drain_events(self):
        """QMP events received and not yet read (none where the backend gives none)."""
        return []

    def block_jobs(self):
        """The block jobs running on the VM's disks, as vm_info reports them."""
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
        """The backends.mirror_driver.MirrorDriver that copies this VM's disks live."""
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

    @classmethod
    def image_streams(cls, manifest):
        """How many streams the save image ``manifest`` records holds, each read by one
        channel; None when it is page-addressable and any number of channels reads it."""
        raise NotImplementedError

    def check_instant_snapshots(self):
        """Before anything is touched: CapabilityMissing when this VM cannot take instant snapshots."""
        raise CapabilityMissing("VM '%s' (%s) cannot take instant snapshots" % (self.name, self.backend),
                                hint="use mode: internal")

    def qemu_version(self):
        """The version of the QEMU that runs the VM, 'major.minor.micro'."""
        raise NotImplementedError

    # -- save images: a class's, since a restore has no VM to open yet --
    @classmethod
    def saved_and_gone(cls, module, saved_vm, params):
        """True when the task's connection options ``params`` name the VM whose
        identity() the save image records (``saved_vm``) and that VM no longer runs:
        the save is done."""
        raise NotImplementedError

    @classmethod
    def running_from(cls, module, manifest, params):
        """``manifest['restored']`` (what restore returned) when the VM still runs
        from that very restore, else None."""
        raise NotImplementedError

    @classmethod
    def restore(cls, module, manifest, path, params, deadline, channels):
        """Bring the VM saved at ``path`` back, in ``params['state']``, reading its
        image over ``channels`` (save_restore.load_channels): a dict with ``state``,
        ``direct_io``, ``channels``, and what running_from needs to find that run again."""
        raise NotImplementedError

    # -- a snapshot API of the backend's own (when native_snapshots) --
    def native_snapshot_names(self):
        """Names of the snapshots the backend keeps metadata of."""
        return set()

    def native_snapshot_disks(self):
        """The disks each snapshot of the backend's metadata was taken on, as it
        recorded them (name -> [disk names]); the images may have lost one since."""
        return {}

    def native_snapshot_create(self, name, disk_names):
        """A full internal snapshot ``name`` (RAM and the disks ``disk_names``), recorded by the backend."""
        raise CapabilityMissing("VM '%s' (%s) has no snapshot API of its own" % (self.name, self.backend))

    def native_snapshot_delete(self, name, metadata_only=False):
        """Delete snapshot ``name`` (``metadata_only``: only the backend's record of it)."""
        raise CapabilityMissing("VM '%s' (%s) has no snapshot API of its own" % (self.name, self.backend))

    def native_snapshot_revert(self, name):
        """Revert the running VM to snapshot ``name`` through the backend's API."""
        raise CapabilityMissing("VM '%s' (%s) has no snapshot API of its own" % (self.name, self.backend))

    def native_snapshot_can_revert(self):
        """True when native_snapshot_revert works on this host (else the QMP route reverts)."""
        return False

    # -- external (overlay) snapshots: snapshot/external.py --
    def external_snapshots(self):
        """This VM's external snapshots, oldest first, each a dict: name, mode ('external'),
        disks (names), overlays ({disk: overlay it created}), bases ({disk: image under that
        overlay}), memory_file (or None), nvram_copy (or None), date, parent (name or None),
        consistent (bool) and problem (why not, when not)."""
        return []

    def check_external_snapshot(self, disks, memory, quiesce):
        """Before anything changes: CapabilityMissing (naming what is missing and the
        version that has it) when this VM cannot take an external snapshot of ``disks``,
        with RAM when ``memory``, its filesystems frozen when ``quiesce``."""
        raise CapabilityMissing("VM '%s' (%s) cannot take external snapshots" % (self.name, self.backend),
                                hint="use mode: internal")

    def external_snapshot_create(self, name, disks, overlays, memory, quiesce, memory_dir, deadline):
        """Put each of ``disks`` on its new qcow2 overlay ``overlays[disk.name]`` at one moment
        (RAM and device state saved under ``memory_dir`` when ``memory``); a dict for the
        module's result (route, paused_ms, ...)."""
        raise NotImplementedError

    def external_snapshot_revert(self, snap, memory_dir, deadline):
        """Bring the VM back to external snapshot ``snap`` (an external_snapshots() entry):
        its disks on fresh overlays over the same bases, the guest at that moment when it
        has RAM state; a dict for the module's result."""
        raise NotImplementedError

    def external_snapshot_delete(self, snap, memory_dir, deadline):
        """Delete external snapshot ``snap`` keeping every guest write: its overlays committed
        into the images under them (crash-safe: a re-run after a kill carries on); a dict for
        the module's result."""
        raise NotImplementedError

    def external_snapshot_moved(self, disk, old, new, memory_dir):
        """drive_mirror switched ``disk`` (a Disk, as it runs now: on ``new``) off the top
        overlay ``old`` of an external chain onto its copy ``new``, over the same backing
        image: point the snapshot whose overlay ``old`` was at ``new`` (its record written
        durably, last); the names of the snapshots changed (none when none names ``old``,
        so that a re-run after a kill finishes it)."""
        return []

    # -- the guest's filesystems, through the QEMU guest agent: snapshot/quiesce.py --
    def check_guest_agent(self):
        """Before anything changes: CapabilityMissing, naming the QEMU guest agent and how to
        add it, unless the VM's agent answers and can freeze filesystems."""
        raise CapabilityMissing("VM '%s' (%s) cannot reach a QEMU guest agent" % (self.name, self.backend),
                                hint="set quiesce: false")

    def fs_freeze(self, deadline):
        """Freeze the guest's filesystems (their writes flushed, new ones held) within
        ``deadline``: how many the agent froze."""
        raise NotImplementedError

    def fs_thaw(self):
        """Thaw the guest's filesystems (harmless when none is frozen): how many it thawed."""
        raise NotImplementedError

    def thaw_spec(self):
        """What thawer() needs to thaw this VM's filesystems from another process (JSON types)."""
        raise NotImplementedError

    @classmethod
    def thawer(cls, spec):
        """A function that thaws the filesystems of the VM ``spec`` (a thaw_spec()) names, ready
        to call: whatever it needs is imported and connected now, so that it still works when the
        module that started the thaw watchdog is gone (and its files with it)."""
        raise NotImplementedError

    def internal_snapshot_refusal(self, disks):
        """Why this VM cannot take an internal snapshot of ``disks`` beyond their format
        (such as pflash firmware with a raw NVRAM under libvirt), or None."""
        return None

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

    def prepare_memory_write(self, path, fd, was_running):
        """What start_memory_write needs that can be done before the guest pauses (its pause is
        what an instant snapshot costs the guest); unprepare_memory_write undoes it if the write
        never starts."""

    def unprepare_memory_write(self, path, fd):
        pass

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

    def background_load_refusal(self, memory_format):
        """Why a revert cannot load a memory file written as ``memory_format`` in the
        background (the guest running while its RAM comes in): (reason, what else the
        user could do, or None), or None when it can."""
        return ("this VM's backend loads its RAM in full", None)

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
        """Every snapshot the images hold, one entry per name; a snapshot the
        backend's metadata records on a disk whose image no longer holds it
        (moved by a copy that carries no snapshot) is inconsistent, naming it."""
        out = summarize_snapshots(self.disks() if disks is None else disks)
        recorded = self.native_snapshot_disks() if out else {}
        for s in out:
            missing = sorted(set(recorded.get(s['name'], ())) - set(s['disks']))
            if missing:
                s.update(missing_disks=missing, consistent=False)
        return out

    def describe(self):
        disks = self.disks()
        return dict(name=self.name, backend=self.backend, state=self.state(),
                    disks=[d.to_dict() for d in disks],
                    snapshots=self.snapshots(disks),
                    block_jobs=self.block_jobs() if self.is_running() else [])
