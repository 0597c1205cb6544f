# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One vmfleet.kvm.snapshot task: which engine handles it. ``mode`` chooses
how a snapshot is taken; a snapshot is deleted or reverted the way it was
taken, found by its name, whatever ``mode`` the task gives."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import (
    KIND, InstantSnapshots, guard_internal, remove_stale_partials,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.external import KIND as EXTERNAL, ExternalSnapshots
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.internal import Snapshots
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.listing import mode_of
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.mode_choice import choose_mode


def snapshot_task(vm, p, check_mode):
    """Run the task ``p`` (the module's params) on ``vm``: (result, snapshot before)."""
    why = None
    if p['state'] == 'present':
        mode = p['mode']
        if mode == 'auto':
            found = mode_of(vm, p['memory_dir'], p['name'], None)
            mode, why = (found, "snapshot '%s' exists, taken in mode %s" % (p['name'], found)) if found \
                else choose_mode(vm, p['disks'])
            if mode != 'internal':
                # a fleet names the disk for RAM state of an internal snapshot; auto chose otherwise
                p = dict(p, vmstate_disk=None)
        if mode in (KIND, EXTERNAL) and p['vmstate_disk']:
            raise InvalidArgument("vmstate_disk does not apply to mode: %s" % mode,
                                  hint="its RAM goes to a memory file under memory_dir; drop it")
        if mode == KIND and not p['memory']:
            raise InvalidArgument("memory: false does not apply to mode: instant (it always saves the guest's RAM)",
                                  hint="its RAM goes to a memory file under memory_dir; drop memory, or use mode "
                                       "internal or external for a disk-only snapshot")
        if mode == KIND and p.get('quiesce'):
            raise InvalidArgument("quiesce does not apply to mode: instant (it always saves the guest's RAM)",
                                  hint="a snapshot with RAM state brings the guest back mid-write, so a freeze adds "
                                       "nothing; for a quiesced disk-only snapshot use memory: false in mode internal or external")
    else:
        mode = mode_of(vm, p['memory_dir'], p['name'], p['mode'])
    if not check_mode:
        # a run that died half-way (QEMU or the module killed) leaves a partial memory file no one writes
        remove_stale_partials(p['memory_dir'], vm.name)
    if mode == EXTERNAL:
        ops = ExternalSnapshots(vm, p['timeout'], p['memory_dir'], p.get('overlay_dir'), p.get('quiesce', False),
                                check_mode=check_mode)
        create = (p['name'], p['disks'], p['memory'], p['overwrite'])
    elif mode == KIND:
        ops = InstantSnapshots(vm, p['timeout'], p['memory_dir'], check_mode=check_mode)
        create = (p['name'], p['disks'], p['overwrite'])
    else:
        if p['state'] == 'present':
            guard_internal(vm, p['memory_dir'], p['name'])
        ops = Snapshots(vm, p['timeout'], check_mode=check_mode, quiesce=p.get('quiesce', False))
        create = (p['name'], p['disks'], p['vmstate_disk'], p['memory'], p['overwrite'])
    if p['state'] == 'present':
        result, before = ops.present(*create)
    elif p['state'] == 'absent':
        result, before = ops.absent(p['name'])
    else:
        if p['load'] != 'full' and mode != KIND:
            raise InvalidArgument("load: %s applies to instant snapshots; '%s' is an internal snapshot" % (
                p['load'], p['name']), hint="nothing was changed; drop load (an internal snapshot loads from its qcow2)")
        result, before = ops.reverted(p['name'], **({'load': p['load']} if mode == KIND else {}))
    result['mode'] = mode
    if why:
        result['mode_reason'] = why
    return result, before
