# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Instant snapshots (seed 001): the guest is paused only for as long as it
takes to snapshot its disks and its device state; its RAM is written while it
runs on, by QEMU's ``background-snapshot`` migration (userfaultfd
write-protect copies a page out before the guest changes it).

An instant snapshot is three things:

- a disk-only internal snapshot of every selected disk, taken in one QMP
  ``transaction`` while the guest is paused;
- the memory file ``<memory_dir>/<vm>.<name>.vmstate``: a migration stream of
  RAM and device state at that same moment;
- its manifest ``<memory file>.manifest.json`` (written last: no manifest, no
  snapshot), which records the disks' snapshot records (so a later internal
  snapshot of the same name is not mistaken for ours) and the QEMU command
  line a revert relaunches.

The disk snapshots alone look like a disk-only internal snapshot; the manifest
is what marks them instant.

How the memory file is written and loaded is the VM handle's: a raw QEMU
writes a mapped-ram stream where its QEMU has mapped-ram (a plain migration
stream otherwise; ``migrate file:``) and a revert relaunches
its recorded command line with ``-incoming defer``; a libvirt domain's file is
a libvirt save image (backends/libvirt/save_image: header written first,
the fd handed to QEMU with ``getfd``, ``migrate fd:``, marked complete after
fsync) that libvirt's own restore loads. Either way a revert checks
everything first, then stops the VM, ``qemu-img snapshot -a`` every disk and
loads the memory file.

A run that dies half-way (QEMU killed, module killed) leaves at most a
partial memory file nobody holds the lock of; the next snapshot run on that
VM removes it (remove_stale_partials).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import glob
import os
import threading
import time

from urllib.parse import quote

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import qmp_migration as migration
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.capabilities import userfaultfd_wp
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    CapabilityMissing, InvalidArgument, OperationTimeout, QmpCommandError, SnapshotInconsistent, SnapshotNotFound,
    VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.internal import (
    Snapshots, select_disks, validate_name,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qmp_jobs import paused_ms
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until

DEFAULT_MEMORY_DIR = '/var/lib/vmfleet/snapshots'
SUFFIX = '.vmstate'
KIND = 'instant'
# One guest of this process paused at a time. A fleet run starts its first VMs together, and two pauses
# at once (each QEMU populating and write-protecting RAM and saving its devices, libvirt's through one
# libvirtd, on the same cores) stretched each other 2-4x; the next guest now waits one pause, not a write.
_ONE_PAUSE = threading.Lock()
# Capabilities QEMU refuses next to background-snapshot; switched off if on.
_EXCLUDED = ('multifd', 'mapped-ram', 'postcopy-ram', 'xbzrle', 'auto-converge', 'release-ram',
             'return-path', 'dirty-bitmaps', 'late-block-activate', 'pause-before-switchover',
             'validate-uuid', 'zero-copy-send', 'x-colo', 'compress', 'postcopy-blocktime',
             'postcopy-preempt', 'switchover-ack', 'dirty-limit', 'rdma-pin-all', 'x-ignore-shared')


def memory_path(memory_dir, vm_name, name):
    return os.path.join(memory_dir, '%s.%s%s' % (quote(vm_name, safe=''), quote(name, safe=''), SUFFIX))


def find_manifests(memory_dir, vm_name):
    """{snapshot name: (memory file, manifest)} of one VM's instant snapshots."""
    out = {}
    if not memory_dir or not os.path.isdir(memory_dir):
        return out
    prefix = os.path.join(memory_dir, glob.escape(quote(vm_name, safe='')) + '.')
    for mp in glob.glob(prefix + '*' + SUFFIX + manifest_store.MANIFEST_SUFFIX):
        path = mp[:-len(manifest_store.MANIFEST_SUFFIX)]
        try:
            m = manifest_store.read_manifest(path)
        except VmfleetError:
            continue
        if m and m.get('kind') == KIND and m.get('vm', {}).get('name') == vm_name:
            out[m['name']] = (path, m)
    return out


def remove_stale_partials(memory_dir, vm_name):
    """Partial memory files of ``vm_name`` that no run writes any more (their
    writer and its QEMU died half-way: the lock is free) are removed; the paths."""
    memory_dir = memory_dir or DEFAULT_MEMORY_DIR
    if not os.path.isdir(memory_dir):
        return []
    prefix = os.path.join(memory_dir, glob.escape(quote(vm_name, safe='')) + '.')
    removed = manifest_store.remove_unlocked(glob.glob(prefix + '*' + SUFFIX + manifest_store.PARTIAL))
    if removed:
        durable.fsync_dir(memory_dir)
    return removed


def _disk_record(snap_disk):
    return dict(name=snap_disk.name, file=snap_disk.file, node_name=snap_disk.node_name)


def missing_disks(manifest, disks):
    """The disks of the manifest that no longer hold the very disk snapshot it recorded."""
    by_name = dict((d.name, d) for d in disks)
    out = []
    for rec in manifest.get('disks', []):
        d = by_name.get(rec['name'])
        if d is None or not [s for s in d.snapshots if s.name == manifest['name']
                             and abs(s.date_sec - rec['date_sec']) < 1.0 and not s.vm_state_size]:
            out.append(rec['name'])
    return out


def holds(manifest, disks):
    """True when every disk of the manifest holds the very disk snapshot it recorded."""
    return not missing_disks(manifest, disks)


def describe(manifest, path, disks):
    """The snapshot_info/snapshot entry of an instant snapshot."""
    missing = missing_disks(manifest, disks)
    ok = not missing
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    out = dict(
        name=manifest['name'], mode=KIND,
        disks=[r['name'] for r in manifest['disks']] if ok else [],
        vmstate_disk=None, memory_file=path, vm_state_size=size or 0,
        date=manifest.get('date'), vm_clock_sec=manifest.get('vm_clock_sec'),
        paused_ms=manifest.get('paused_ms'),
        consistent=ok and size is not None and size == manifest.get('memory_bytes'),
    )
    if missing:
        out['missing_disks'] = missing
    return out


def guard_internal(vm, memory_dir, name):
    """mode: internal must not half-handle an instant snapshot."""
    if manifest_store.read_manifest(memory_path(memory_dir or DEFAULT_MEMORY_DIR, vm.name, name)) is not None:
        raise InvalidArgument("snapshot '%s' of VM '%s' is an instant snapshot" % (name, vm.name),
                              hint="nothing was changed; mode: internal cannot replace it: pick another name, or "
                                   "remove it first (state: absent)")


class InstantSnapshots(object):
    def __init__(self, vm, timeout, memory_dir, check_mode=False):
        self.vm = vm
        self.deadline = Deadline(timeout)
        self.memory_dir = memory_dir or DEFAULT_MEMORY_DIR
        self.check_mode = check_mode

    def _sweep(self):
        if not self.check_mode:
            remove_stale_partials(self.memory_dir, self.vm.name)

    # -- checks, all before anything is touched --
    def _check_dir(self):
        d = self.memory_dir
        if not os.path.isabs(d):
            raise InvalidArgument("memory_dir %r is not absolute" % d, hint="give an absolute directory")
        if not os.path.isdir(d):
            raise InvalidArgument("memory_dir %s does not exist" % d, hint="create it first")
        if not os.access(d, os.W_OK | os.X_OK):
            raise InvalidArgument("memory_dir %s is not writable" % d)

    def check_can_snapshot(self):
        vm = self.vm
        caps = vm.migrate_caps()
        if 'background-snapshot' not in caps:
            raise CapabilityMissing("QEMU of VM '%s' (%s) has no background-snapshot migration capability"
                                    % (vm.name, vm.qemu_version()),
                                    hint="QEMU >= 6.0 is needed for mode: instant; nothing was changed; "
                                         "use mode: internal")
        if not userfaultfd_wp():
            raise CapabilityMissing("the host kernel lacks userfaultfd write-protect, which instant snapshots need "
                                    "to copy a page before the guest changes it",
                                    hint="nothing was changed; use a kernel >= 5.7 with userfaultfd enabled "
                                         "(vm.unprivileged_userfaultfd or root), or mode: internal")
        status = vm.qmp('query-migrate').get('status', 'none')
        if status in migration.ACTIVE:
            raise InvalidArgument("VM '%s' is already migrating (status %s)" % (vm.name, status),
                                  hint="nothing was changed; wait for that migration to end")
        return caps

    def _arm(self, caps):
        """Switch background-snapshot on (QEMU checks the guest's memory backends now),
        remembering what it changes so that _disarm leaves the VM as it found it."""
        vm = self.vm
        states = dict((c['capability'], c['state']) for c in vm.qmp('query-migrate-capabilities'))
        want = dict((c, False) for c in _EXCLUDED if states.get(c))
        want['background-snapshot'] = True
        self.memory_caps = vm.instant_memory_caps()
        want.update(self.memory_caps)
        want.update(migration.WAKE_CAPS)
        # stream capabilities stay off: whoever streams next sets its own (see qemu_migration)
        self._undo_caps = dict((c, bool(states.get(c))) for c in want if c not in migration.STREAM_CAPS)
        self._undo_caps.update(dict.fromkeys(self.memory_caps, False), **{'background-snapshot': False})
        self._undo_params = dict((k, v) for k, v in vm.qmp('query-migrate-parameters').items()
                                 if k == 'max-bandwidth')
        try:
            migration.set_capabilities(vm, want)
            migration.unthrottle(vm)
        except QmpCommandError as e:
            self._disarm()
            raise CapabilityMissing("VM '%s' cannot take an instant snapshot: %s" % (vm.name, e.desc),
                                    hint="nothing was changed; the guest's memory backend (hugepages, shared or "
                                         "file-backed memory) may not support write-protect; use mode: internal")

    def _disarm(self):
        """No capability or parameter left behind: a later save or snapshot (vm_save,
        virsh save, virsh snapshot-create-as) must find QEMU as before."""
        try:
            migration.set_capabilities(self.vm, getattr(self, '_undo_caps', {'background-snapshot': False}))
        except VmfleetError:
            pass
        if getattr(self, '_undo_params', None):
            try:
                self.vm.qmp('migrate-set-parameters', **self._undo_params)
            except VmfleetError:
                pass

    def _lookup(self, name, disks):
        path = memory_path(self.memory_dir, self.vm.name, name)
        manifest = manifest_store.read_manifest(path)
        internal = [s for s in self.vm.snapshots(disks) if s['name'] == name]
        return path, manifest, (internal[0] if internal else None)

    # -- present --
    def present(self, name, disk_names, overwrite):
        validate_name(name)
        self.vm.check_instant_snapshots()
        self._sweep()
        self._check_dir()
        vm = self.vm
        disks = vm.disks()
        selected = select_disks(vm, disks, disk_names, None, False)[0]
        path, manifest, internal = self._lookup(name, disks)
        result = dict(changed=False, route=None, paused_ms=0, actions=[], mode=KIND)
        if manifest and holds(manifest, disks) and not overwrite:
            if sorted(r['name'] for r in manifest['disks']) != sorted(d.name for d in selected) and disk_names:
                raise SnapshotInconsistent(
                    "instant snapshot '%s' of VM '%s' exists on %s, not on the disks asked for (%s)"
                    % (name, vm.name, ", ".join(r['name'] for r in manifest['disks']),
                       ", ".join(d.name for d in selected)),
                    hint="nothing was changed; delete it (state: absent) or replace it (overwrite: true)")
            result['snapshot'] = describe(manifest, path, disks)
            return result, result['snapshot']
        if not overwrite and (internal or manifest or os.path.exists(path)):
            what = ("an internal snapshot of that name exists" if internal and not manifest else
                    "its memory file or manifest exists but its disks do not hold it (an interrupted snapshot)")
            raise SnapshotInconsistent("cannot create instant snapshot '%s' of VM '%s': %s" % (name, vm.name, what),
                                       hint="nothing was changed; remove it (state: absent, with the mode it was "
                                            "made with) or replace it (overwrite: true)")
        if vm.state() not in ('running', 'paused'):
            raise InvalidArgument("VM '%s' is not running (state %s)" % (vm.name, vm.state()),
                                  hint="an instant snapshot saves the RAM of a running VM")
        caps = self.check_can_snapshot()
        before = describe(manifest, path, disks) if manifest else internal
        if before or os.path.exists(path):
            result['actions'].append(dict(action='delete', disks=sorted((before or {}).get('disks', [])),
                                          memory_file=path))
        result['actions'].append(dict(action='create', disks=[d.name for d in selected], memory_file=path))
        result['changed'] = True
        if self.check_mode:
            result['snapshot'] = dict(name=name, mode=KIND, disks=[d.name for d in selected], memory_file=path)
            return result, before
        if before or os.path.exists(path) or manifest_store.read_manifest(path) is not None:
            self._delete(name, path, disks)
            disks = vm.disks()
            selected = [vm.disk(d.name, disks) for d in selected]
        result['route'] = 'qmp'
        result['paused_ms'], info = self._create(name, selected, path, caps)
        result['ram_bytes'] = info.get('ram', {}).get('total')
        result['snapshot'] = describe(manifest_store.read_manifest(path), path, vm.disks())
        return result, before

    def _create(self, name, selected, path, caps):
        vm = self.vm
        relaunch = vm.relaunch_record()
        tmp = path + manifest_store.PARTIAL
        manifest_store.remove_unlocked([tmp])
        # locked while we write it: a partial file nobody holds is a dead run's (remove_stale_partials)
        try:
            fd = manifest_store.create_locked(tmp)
        except OSError as e:
            raise SnapshotInconsistent("cannot create memory file %s: %s" % (tmp, e.strerror or e),
                                       hint="nothing was changed; another run may be writing this snapshot now")
        try:
            measured, info, was_running = self.moment([
                {'type': 'blockdev-snapshot-internal-sync', 'data': {'device': d.node_name, 'name': name}}
                for d in selected], tmp, fd, caps)
            snap_disks = vm.disks()
            records = []
            for d in selected:
                d2 = vm.disk(d.name, snap_disks)
                s = [x for x in d2.snapshots if x.name == name][-1]
                records.append(dict(_disk_record(d2), date_sec=s.date_sec, vm_clock_sec=s.vm_clock_sec))
            taken = time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime(records[0]['date_sec']))
            manifest = dict(
                kind=KIND, name=name, vm=vm.identity(),
                disks=records, date=taken,
                vm_clock_sec=records[0]['vm_clock_sec'], paused_ms=measured, state_at_snapshot=(
                    'running' if was_running else 'paused'),
                memory_bytes=os.path.getsize(tmp), ram_bytes=info.get('ram', {}).get('total'),
                memory_format=self.memory_format(),
                qemu=relaunch,
                files=[dict(file=os.path.basename(path), bytes=os.path.getsize(tmp), kind=KIND, sha256=None)])
            manifest_store.commit([tmp], manifest, path)
        except BaseException as e:
            manifest_store.remove([tmp])
            if self.switched:
                try:
                    self._delete_disks(name, vm.disks(), Deadline(120))
                except VmfleetError:
                    pass
            if isinstance(e, VmfleetError):
                e.msg += "; the instant snapshot was undone, nothing changed"
                if isinstance(e, OperationTimeout):
                    e.hint = "raise 'timeout' (the guest runs on while its RAM is written)"
            raise
        finally:
            os.close(fd)
        return measured, info

    def moment(self, actions, tmp, fd, caps):
        """The instant moment, of this mode and of a raw QEMU VM's external snapshot: the guest paused
        only while the QMP ``transaction`` of ``actions`` switches its disks and QEMU starts writing its
        RAM into ``tmp`` (open and locked as ``fd``, armed with ``caps`` from check_can_snapshot), then
        resumed while the RAM is written; the memory file is complete and fsynced on return.
        (paused_ms, QEMU's migration info, whether the guest was running). On failure the write is
        stopped and the guest resumed; ``self.switched`` says whether the disks had switched, for the
        caller to undo."""
        vm = self.vm
        was_running = vm.state() == 'running'
        paused_by_us = prepared = started = self.switched = holding = False
        try:
            self._arm(caps)
            vm.prepare_memory_write(tmp, fd, was_running)
            prepared = True
            vm.drain_events()
            holding = _ONE_PAUSE.acquire(timeout=self.deadline.remaining(1.0))
            if not holding:
                raise OperationTimeout("VM '%s' was not paused: another VM of this run stayed paused for its "
                                       "snapshot until the timeout ran out" % vm.name)
            t0 = time.monotonic()
            if was_running:
                vm.pause()
                paused_by_us = True
            vm.qmp('transaction', actions=actions)
            self.switched = started = True
            vm.start_memory_write(tmp, fd, was_running)
            self._wait_tracking()
            if paused_by_us:
                vm.resume()
                paused_by_us = False
            t_resumed = time.monotonic()
            _ONE_PAUSE.release()
            holding = False
            events = vm.drain_events()
            info = migration.wait(vm, self.deadline, "writing the memory of VM '%s' to %s" % (vm.name, tmp))
            vm.finish_memory_write(tmp, fd)
            measured = paused_ms(events)
            if measured is None:
                measured = round((t_resumed - t0) * 1000.0, 1) if was_running else 0
            return measured, info, was_running
        except BaseException:
            if started:
                vm.abort_memory_write(tmp, fd)
            elif prepared:
                vm.unprepare_memory_write(tmp, fd)
            if paused_by_us:
                try:
                    vm.resume()
                except VmfleetError:
                    pass
            raise
        finally:
            if holding:
                _ONE_PAUSE.release()
            self._disarm()

    def memory_format(self):
        """The format moment() wrote the memory file in."""
        return next(iter(self.memory_caps), 'stream')

    def _wait_tracking(self):
        """Until QEMU has saved the device state and write-protected RAM: its
        first RAM pages are out (or it is already done). Resuming the guest
        earlier would move the memory's moment past the disks'."""
        def tracking():
            info = self.vm.qmp('query-migrate')
            ram = info.get('ram', {})
            status = info.get('status')
            if status in ('failed', 'cancelled'):
                raise VmfleetError("QEMU could not start the instant snapshot: %s"
                                   % info.get('error-desc', 'no reason given'))
            if status == 'completed' or ram.get('normal', 0) + ram.get('duplicate', 0) > 0:
                # one more round trip: QEMU's resume handler is queued before our next command runs
                self.vm.qmp('query-status')
                return True
            return None
        end = Deadline(min(60.0, self.deadline.remaining(1.0)))
        poll_until(tracking, end, interval=0.002, on_timeout=lambda: OperationTimeout(
            "QEMU did not start writing the memory within %gs" % end.timeout))

    # -- absent --
    def _delete_disks(self, name, disks, deadline=None):
        holders = [d for d in disks if any(s.name == name for s in d.snapshots)]
        if not holders:
            return
        snap = dict(name=name, disks=[d.name for d in holders])
        Snapshots(self.vm, (deadline or self.deadline).remaining(1.0))._delete(name, snap, disks)

    def _delete(self, name, path, disks):
        self._delete_disks(name, disks)
        manifest_store.remove([manifest_store.manifest_path(path), path])
        manifest_store.remove_unlocked([path + manifest_store.PARTIAL])  # not one a run writes now
        durable.fsync_dir(os.path.dirname(path))

    def absent(self, name):
        validate_name(name)
        self.vm.check_instant_snapshots()
        self._sweep()
        disks = self.vm.disks()
        path, manifest, internal = self._lookup(name, disks)
        result = dict(changed=False, route=None, actions=[], mode=KIND)
        leftovers = [p for p in (path, path + manifest_store.PARTIAL) if os.path.exists(p)]
        if not manifest and not leftovers:
            if internal:
                raise InvalidArgument("snapshot '%s' of VM '%s' is an internal snapshot, not an instant one"
                                      % (name, self.vm.name), hint="nothing was changed; use mode: internal")
            return result, None
        before = describe(manifest, path, disks) if manifest else dict(name=name, disks=[], memory_file=path)
        result.update(changed=True, snapshot=before,
                      actions=[dict(action='delete', disks=before['disks'], memory_file=path)])
        if not self.check_mode:
            self._delete(name, path, disks)
            result['route'] = 'qmp'
        return result, before

    # -- reverted --
    def reverted(self, name, load='full'):
        validate_name(name)
        self.vm.check_instant_snapshots()
        self._sweep()
        vm = self.vm
        disks = vm.disks()
        path, manifest, internal = self._lookup(name, disks)
        if not manifest:
            raise SnapshotNotFound("VM '%s' has no instant snapshot '%s' in %s" % (vm.name, name, self.memory_dir),
                                   hint="nothing was changed; check name and memory_dir%s" % (
                                       " (an internal snapshot of that name exists: use mode: internal)"
                                       if internal else ""))
        # Everything is checked before anything stops: never half-revert.
        missing = missing_disks(manifest, disks)
        if missing:
            raise SnapshotInconsistent(
                "instant snapshot '%s' of VM '%s' is missing on disk %s (it was taken on %s): the image there no "
                "longer holds it" % (name, vm.name, ", ".join(missing), ", ".join(r['name'] for r in manifest['disks'])),
                hint="nothing was changed; the snapshot cannot be reverted, remove it (state: absent)")
        manifest_store.check_files(path, manifest, checksum=False)
        vm.check_relaunch(manifest['qemu'], "instant snapshot '%s'" % name)
        by_name = dict((d.name, d) for d in disks)
        files = [by_name[r['name']].file for r in manifest['disks']]
        for f in files:
            if not f or not os.path.exists(f):
                raise InvalidArgument("disk image %s of VM '%s' is not a local file" % (f, vm.name),
                                      hint="nothing was changed; revert needs the image files on this host")
        state = vm.state()
        if state not in ('running', 'paused') or vm.holds_no_guest():
            # a shut-off libvirt domain, or the QEMU waiting for a load that a failed background
            # revert left, comes back as it was at the snapshot
            state = manifest.get('state_at_snapshot', 'running')
        memory_format = manifest.get('memory_format', 'stream')
        if load == 'background':
            why, remedy = vm.background_load_refusal(memory_format) or (None, None)
            if why is None and state != 'running':
                why = "the VM is to be paused after the revert: loading in the background gains nothing"
            if why:
                raise InvalidArgument("instant snapshot '%s' of VM '%s' cannot be reverted with load: background: %s"
                                      % (name, vm.name, why), hint="nothing was changed; use load: full%s" % (
                                          ", or " + remedy if remedy else ""))
        result = dict(changed=True, mode=KIND, route=None, paused_ms=0,
                      snapshot=describe(manifest, path, disks),
                      actions=[dict(action='revert', disks=[r['name'] for r in manifest['disks']],
                                    memory_file=path)])
        if self.check_mode:
            return result, result['snapshot']
        t0 = time.monotonic()
        result.update(vm.revert_to_memory(manifest['qemu'], name, files, path, state, self.deadline,
                                          memory_format=memory_format, load=load))
        result['paused_ms'] = round((time.monotonic() - t0) * 1000.0, 1)
        return result, result['snapshot']
