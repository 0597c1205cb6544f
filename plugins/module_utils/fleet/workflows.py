# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each fleet workflow's pipeline for one VM, as fleet.FleetRun runs it in
its pool: the same engine calls the single-VM modules make, chained, each
filling the VM's record as it goes."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import qemu_img
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import listed_names, open_vm
from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.drive_mirror import drive_mirror
from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.journal import same_file
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument, JobFailed, VmfleetError
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.policy import (
    fleet_plan, fleet_record, fleet_retention, prefixed, stale_snapshot, vm_path,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.save.save_restore import restore_image, save_vm
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.listing import list_snapshots
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.task import snapshot_task
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until

# How long a reverted or restored VM may take to show the state it should have.
SETTLE_S = 20.0
# drive_mirror's options the storage migration does not set (as the module's defaults)
MIRROR_DEFAULTS = dict(target_format=None, create_target=True, overwrite=False, sync='full', speed=0,
                       granularity=None, buf_size=None, state='pivoted', remove_target=False,
                       cancel_on_timeout=False)


def _snapshot(run, vm, state, name, mode='auto', disks=None, vmstate_disk=None):
    """One snapshot step, through the same engine choice as the snapshot module
    (a deletion or revert goes the way the snapshot was taken); its result."""
    return snapshot_task(vm, dict(state=state, name=name, mode=mode, disks=disks, vmstate_disk=vmstate_disk,
                                  memory=True, overwrite=False, memory_dir=run.p['memory_dir'], load='full',
                                  timeout=run.deadline.remaining(1.0)), run.check_mode)[0]


def _delete(run, vm, snaps):
    """Delete each of ``snaps`` (snapshot_list entries); the names deleted."""
    return [s['name'] for s in snaps if _snapshot(run, vm, 'absent', s['name'])['changed']]


def _settle(run, target, want):
    """Wait until the VM shows state ``want`` again (a relaunched QEMU, a restored domain)."""
    seen = {}

    def settled():
        seen['state'] = run.state_of(target)
        return True if seen['state'] == want else None
    poll_until(settled, Deadline(min(SETTLE_S, run.deadline.remaining(1.0))), interval=0.5,
               on_timeout=lambda: JobFailed("VM '%s' did not come back %s (it is %s)"
                                            % (target['name'], want, seen['state'])))


# -- snapshots: pre_upgrade_snapshot, snapshot_rollback, snapshot_cleanup --
def snapshot_present(run, target, record):
    """Snapshot the VM's snapshot disks, check the snapshot is on every one, keep the newest ``keep``."""
    p = run.p
    name = prefixed(p['name'], p['prefix'])
    record.update(snapshot=name, mode=p['mode'])
    if not target['disks'] and p['mode'] == 'internal':
        raise InvalidArgument('no disk of this VM can hold an internal snapshot',
                              hint="use mode auto or external (qcow2 overlays over any disk)")
    # internal snapshots cover the qcow2 disks; an external one, every writable disk
    disks = target['disks'] if p['mode'] == 'internal' or (p['mode'] == 'auto' and target['disks']) else None
    with open_vm(run.module, run.conn(target)) as vm:
        stale = stale_snapshot(list_snapshots(vm, p['memory_dir'], name=name), name, p.get('max_age'), time.time())
        if stale:
            raise InvalidArgument(stale, hint="give this run a snapshot name of its own (the playbook's default is "
                                  "dated), or delete the old one first (vmfleet.kvm.snapshot_cleanup)")
        t0 = time.monotonic()
        result = _snapshot(run, vm, 'present', name, p['mode'], disks,
                           target['vmstate_disk'] if disks and p['mode'] in ('internal', 'auto') else None)
        record.update(changed=result['changed'], route=result.get('route'), paused_ms=result.get('paused_ms'),
                      duration_s=round(time.monotonic() - t0, 3), mode=result['mode'])
        if result.get('mode_reason'):
            record['mode_reason'] = result['mode_reason']
        ours = list_snapshots(vm, p['memory_dir'], name_prefix=p['prefix'])
        if not run.check_mode:
            held = [s['disks'] for s in ours if s['name'] == name]
            if not held or not set(disks or (result.get('snapshot') or {}).get('disks') or ()) <= set(held[0]):
                raise JobFailed("snapshot %s is not on every disk of %s (%s): %s"
                                % (name, target['name'], ', '.join(target['disks']), json.dumps(ours)))
        # the snapshot just taken counts as the newest, even in check mode where it does not exist yet
        doomed = fleet_retention(ours + [dict(name=name, date='~')], p['prefix'], p['keep'])
        record['deleted'] = _delete(run, vm, [s for s in ours if s['name'] in doomed])
        record['changed'] = record['changed'] or bool(record['deleted'])


def snapshot_reverted(run, target, record):
    """Revert the VM to the snapshot, whichever mode took it, and check it runs again as it did."""
    p = run.p
    name = prefixed(p['name'], p['prefix'])
    record['snapshot'] = name
    with open_vm(run.module, run.conn(target)) as vm:
        t0 = time.monotonic()
        result = _snapshot(run, vm, 'reverted', name)
    record.update(changed=result['changed'], mode=result['mode'], route=result.get('route'), paused_ms=result.get('paused_ms'),
                  duration_s=round(time.monotonic() - t0, 3))
    if not run.check_mode:
        _settle(run, target, target['state'])


def snapshot_absent(run, target, record):
    """Delete the named snapshot and those beyond retention; never a name without the prefix."""
    p = run.p
    names = [prefixed(p['name'], p['prefix'])] if p['name'] else []
    with open_vm(run.module, run.conn(target)) as vm:
        ours = list_snapshots(vm, p['memory_dir'], name_prefix=p['prefix'])
        doomed = names + fleet_retention([s for s in ours if s['name'] not in names], p['prefix'], p['keep'])
        record['deleted'] = _delete(run, vm, [s for s in ours if s['name'] in doomed])
    record['changed'] = bool(record['deleted'])


# -- storage_migration --
def plan_moves(targets, p):
    """Each target with the ``moves`` of its disks (or the ``error`` that stops it)."""
    return fleet_plan(targets, p['target_dir'], p['source_dir'] or '', p['per_vm_dir'])


def migrate_storage(run, target, record):
    """Move the VM's disks one at a time, check each runs on its target, remove verified sources if asked."""
    p = run.p
    if target.get('error'):
        raise InvalidArgument(target['error'])
    record['moved'] = moved = []
    record['sources_removed'] = removed = []
    if not target['moves']:
        record['msg'] = 'no disk to move'
        return
    with open_vm(run.module, run.conn(target)) as vm:
        for move in target['moves']:
            tdir = os.path.dirname(move['target'])
            if not run.check_mode and not os.path.isdir(tdir):
                os.makedirs(tdir, exist_ok=True)  # the pool's other VMs may make it meanwhile
                os.chmod(tdir, 0o755)  # libvirt's QEMU runs as another user and must reach its images
            params = dict(MIRROR_DEFAULTS, disk=move['disk'], target=move['target'], copy_mode=p['copy_mode'],
                          verify=p['verify'], journal_dir=p['journal_dir'], snapshots=p['snapshots'],
                          memory_dir=p['memory_dir'], timeout=run.deadline.remaining(1.0))
            try:
                r = drive_mirror(run.module, vm, params, check_mode=run.check_mode)
            except VmfleetError as e:
                e.msg = 'disk %s: %s' % (move['disk'], e.msg)
                raise
            moved.append(dict(move, changed=r['changed'], on_target=r['on_target'], verified=r['verified'],
                              bytes_total=r['bytes_total'], rate_mib_s=r['rate_mib_s'], paused_ms=r['paused_ms'],
                              snapshots_dropped=r['snapshots_dropped'], snapshots_carried=r['snapshots_carried']))
            record['changed'] = record.get('changed') or r['changed']
        if run.check_mode:
            return
        disks = dict((d.name, d.file) for d in vm.disks())
        # the files an external snapshot still reads or reverts to (a moved top overlay is no longer one)
        named = [(s['name'], f) for s in vm.external_snapshots()
                 for f in list(s['overlays'].values()) + list(s['bases'].values())]
    for m in moved:
        if disks.get(m['disk']) != m['target']:
            raise JobFailed("disk %s of %s does not run on %s" % (m['disk'], target['name'], m['target']))
    if p['remove_sources']:
        for m in moved:
            if m['on_target'] and m['verified'] and os.path.exists(m['source']):
                held = [s['name'] for s in qemu_img.image_info(run.module, m['source'], m['format']).get('snapshots', [])]
                if held:
                    # it may hold the only copy of a rollback point: never deleted
                    m['source_kept'] = 'it holds snapshot%s %s' % ('s' if len(held) > 1 else '', ', '.join(held))
                    continue
                keeps = sorted(set(n for n, f in named if same_file(f, m['source'])))
                if keeps:
                    m['source_kept'] = 'external snapshot%s %s still use%s it' % (
                        's' if len(keeps) > 1 else '', ', '.join(keeps), '' if len(keeps) > 1 else 's')
                    continue
                os.unlink(m['source'])
                removed.append(m['source'])
                record['changed'] = True


# -- host_maintenance --
SAVED_VMS = 'saved-vms.json'


class VmsAway(object):
    """The VMs a maintenance took off this host, one record file each way:
    ``<save_dir>/saved-vms.json``, the VMs a save phase saved, each written
    durably the moment its save completed, so that a restore finds it
    whatever happens next (``evacuated-vms.json`` likewise: the VMs an evacuation
    moved, and where). Threads of one run share it."""

    def __init__(self, save_dir, lock, name=SAVED_VMS):
        self.path = os.path.join(save_dir, name)
        self.lock = lock
        try:
            with open(self.path) as f:
                self.vms = json.load(f).get('vms', [])
        except FileNotFoundError:
            self.vms = []
        except ValueError as e:
            raise InvalidArgument("the record of VMs %s is not valid JSON (%s)" % (self.path, e),
                                  hint="fix it, or move it aside; the save images next to it are untouched")

    def keys(self):
        return [v['vm'] for v in self.vms] + [n for v in self.vms for n in listed_names(v.get('connection', {}))]

    def put(self, entry):
        with self.lock:
            self.vms = [v for v in self.vms if v['vm'] != entry['vm']] + [entry]
            self._write()

    def keep_only(self, names):
        with self.lock:
            self.vms = [v for v in self.vms if v['vm'] in names]
            if self.vms:
                self._write()
            elif os.path.exists(self.path):
                os.unlink(self.path)
                durable.fsync_dir(os.path.dirname(self.path))

    def _write(self):
        durable.atomic_write(self.path, (json.dumps(dict(vms=self.vms), indent=1) + '\n').encode('utf-8'))


def save_vm_state(run, target, record):
    p = run.p
    image = vm_path(p['save_dir'], target['name'], '.vmstate')
    record['image'] = image
    # the VM runs, so an image left by an earlier maintenance is older than what it holds: overwrite
    r = save_vm(run.module, dict(run.conn(target), path=image, channels=p['channels'], compression=p['compression'],
                                 keep_running=False, verify=p['verify'], overwrite=True))
    record.update(changed=r['changed'], path_used=r.get('path_used'), bytes=r.get('bytes'),
                  rate_mib_s=r.get('rate_mib_s'), downtime_ms=r.get('downtime_ms'))
    if not run.check_mode:
        run.saved.put(dict(vm=target['name'], backend=target['backend'], connection=target['connection'],
                           image=r['image']))


def restore_vm_state(run, entry, record):
    p = run.p
    record['image'] = entry['image']
    r = restore_image(run.module, dict(run.conn(entry), path=entry['image'], state='running', verify=p['verify'],
                                       channels=None, direct_io=p['direct_io']))
    record.update(changed=r['changed'], rate_mib_s=r.get('rate_mib_s'), duration_s=r.get('duration_s'))
    if not run.check_mode:
        _settle(run, entry, 'running')


def saved_entries_as_targets(saved):
    """The VMs a save recorded, in the shape FleetRun works on."""
    return [dict(name=v['vm'], backend=v.get('backend'), state='shutoff', connection=v['connection'], image=v['image'])
            for v in saved.vms]


def earlier_saves(saved, targets, records):
    """A save re-run: VMs an earlier run saved (no longer running) are done, not missing."""
    running = [t['name'] for t in targets]
    keys = saved.keys()
    done = [fleet_record(v, 'ok', 'saved by an earlier run') for v in saved.vms if v['vm'] not in running]
    return done + [r for r in records if r['vm'] not in keys]
