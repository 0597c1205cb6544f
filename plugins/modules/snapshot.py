#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: snapshot
short_description: Create, delete or revert internal, instant and external snapshots of a QEMU/KVM VM
version_added: 1.0.0
description:
  - Manages internal (qcow2) snapshots of a VM reached through libvirt (O(domain)) or a raw
    QEMU QMP socket (O(qmp_socket)).
  - On a running VM the snapshot covers the chosen O(disks) and, with O(memory), the guest's
    RAM and device state, written to O(vmstate_disk). Disks left out (such as a raw OVMF
    varstore) are neither snapshotted nor reverted.
  - A running VM is snapshotted with QEMU's C(snapshot-save) job (through libvirt's QMP
    passthrough for a libvirt domain, which libvirt marks as tainted), or with libvirt's own
    snapshot API when the snapshot covers every writable disk of the domain with RAM state
    on the first one, so that libvirt's snapshot list stays truthful. A shut-off libvirt
    domain is handled with C(qemu-img snapshot) on its images. The result's RV(route) says
    which ran.
  - With O(mode=internal) the guest is paused while its RAM is written; RV(paused_ms) reports for how long.
  - With O(mode=instant) the guest is paused only while its disks are snapshotted (one QMP
    C(transaction) of disk-only internal snapshots) and its device state is saved; its RAM is
    written to a memory file under O(memory_dir) by QEMU's C(background-snapshot) migration while
    it runs on. The snapshot's moment is the pause. A manifest next to the memory file (written
    last, after the memory file is fsynced) marks the disk snapshots as instant.
  - On a raw QEMU VM the memory file is a mapped-ram stream (QEMU 9.0 or later, each page at its own place
    in the file, so a revert can load it in the background, O(load=background)), or a plain migration stream on
    an older QEMU; a revert stops QEMU, reverts the
    disks with C(qemu-img snapshot -a), relaunches the recorded QEMU command line with
    C(-incoming defer) and loads the memory file.
  - On a libvirt domain the memory file is a libvirt save image (libvirt's header and the domain's
    migratable XML, then QEMU's stream, handed to QEMU as a file descriptor); a revert destroys
    the domain, reverts the disks with C(qemu-img snapshot -a) and restores the memory file with
    libvirt's own restore API, so the domain runs on as an ordinary libvirt domain. The steps
    libvirt 11.x has no API for (C(background-snapshot), C(getfd), C(migrate), the disk
    C(transaction)) go through libvirt's QMP passthrough, which marks the domain tainted
    (C(custom-monitor)), as partial snapshots (O(disks) leaving a disk out) already do. Every
    migration capability and parameter is set back afterwards, so a later C(virsh save),
    C(virsh snapshot-create-as) or M(vmfleet.kvm.vm_save) of the domain works as before.
    It needs libvirt >= 8.2 and a local O(uri).
  - Everything is checked before the VM is stopped for a revert. A failure half-way through
    taking an instant snapshot undoes it (disk snapshots deleted, guest resumed, capability
    switched off, partial memory file removed). A run killed half-way (QEMU or the module)
    leaves at most a partial memory file nobody writes; the next task of this module on that
    VM and O(memory_dir) removes it.
  - O(mode=instant) fails before pausing anything when the host kernel lacks userfaultfd
    write-protect, QEMU lacks C(background-snapshot), or the guest's memory backend cannot be
    write-protected.
  - O(state=absent) and O(state=reverted) find the snapshot by its O(name), whatever mode took
    it; O(mode) matters only when a snapshot is created.
extends_documentation_fragment:
  - vmfleet.kvm.connection
  - vmfleet.kvm.relaunch
attributes:
  check_mode:
    description: Predicts what would be created, deleted or reverted; touches nothing.
  diff_mode:
    support: full
    description: Shows the disks holding the snapshot before and after.
options:
  name:
    description:
      - Name (tag) of the snapshot.
      - Up to 128 printable characters; not all digits (qcow2 would confuse it with an ID).
    type: str
    required: true
  state:
    description:
      - V(present) creates the snapshot unless it exists on every selected disk.
      - V(absent) deletes it from every disk that holds it.
      - V(reverted) loads it (disks and RAM); the VM runs on from the snapshot's moment,
        or stays paused if it was paused. Always reports a change.
    type: str
    choices: [present, absent, reverted]
    default: present
  disks:
    description:
      - Disks to snapshot, by name (libvirt target such as V(vda), or the QEMU device id / node name).
      - Default is every writable disk whose format can hold internal snapshots (qcow2).
      - Naming a raw or read-only disk fails before anything is touched.
    type: list
    elements: str
  vmstate_disk:
    description:
      - Disk that stores the RAM state. Must be one of O(disks).
      - Default is the first of O(disks); never a raw disk.
    type: str
  memory:
    description:
      - Save the RAM and device state with the disks (V(true)), or take a crash-consistent
        disk-only snapshot of all O(disks) at one instant (V(false)).
      - A disk-only snapshot of a running VM can only be reverted while the VM is shut off.
    type: bool
    default: true
  overwrite:
    description:
      - Replace a snapshot of that name (deleted first, then created anew).
      - Without it an existing snapshot is left alone and the task reports no change.
    type: bool
    default: false
  mode:
    description:
      - How O(state=present) takes the snapshot.
      - V(auto) takes an internal snapshot where every chosen disk is qcow2 and the firmware allows it, and an
        external one otherwise (raw files, block devices, pflash firmware with a raw NVRAM under libvirt, or a VM
        already running on the overlays of an external snapshot); RV(mode) and RV(mode_reason) say which and why.
        VMs whose disks are all qcow2 are snapshotted as with V(internal).
      - V(external) puts each chosen disk, of any format, on a new qcow2 overlay under O(overlay_dir); the image
        under it keeps the snapshot's moment. A revert drops the writes made since, a delete commits them into
        that image, so the VM ends on its original image paths.
      - V(internal) keeps RAM state inside a qcow2 image, written while the guest is paused.
      - V(instant) freezes the moment in milliseconds and writes RAM to a memory file under
        O(memory_dir) while the guest runs (raw QEMU VMs and libvirt domains);
        O(vmstate_disk) and O(memory) do not apply.
      - Ignored by O(state=absent) and O(state=reverted), which handle the snapshot the way it was taken.
    type: str
    choices: [auto, internal, instant, external]
    default: auto
    version_added: 1.2.0
  memory_dir:
    description:
      - Directory of the memory files and manifests of instant snapshots
        (C(<memory_dir>/<vm>.<name>.vmstate) and C(.vmstate.manifest.json)).
      - Must exist. M(vmfleet.kvm.snapshot_info) needs the same directory to list them.
      - Also read to find a snapshot's mode for O(state=absent) and O(state=reverted), and to refuse
        an internal snapshot of an instant snapshot's name.
    type: path
    default: /var/lib/vmfleet/snapshots
  overlay_dir:
    description:
      - Directory of the qcow2 overlays of an external snapshot (C(<image stem>.<name>.qcow2)).
      - Default is the directory of each disk's image; a disk on a block device needs it.
    type: path
    version_added: 1.2.0
  quiesce:
    description:
      - Freeze the guest's filesystems with the QEMU guest agent around a disk-only snapshot
        (O(memory=false)), so that the snapshot holds them clean; thawed within O(timeout) even if the
        module dies. Fails before anything changes when the VM has no guest agent.
      - Needs O(memory=false) (a snapshot with RAM state needs no freeze); not for O(mode=instant). A VM that is
        shut off is snapshotted without a freeze.
    type: bool
    default: false
    version_added: 1.2.0
  guest_agent_socket:
    description:
      - The QEMU guest agent's socket of a raw QEMU VM, for O(quiesce).
      - Default is the agent socket found on the QEMU command line.
    type: path
    version_added: 1.2.0
  load:
    description:
      - How O(state=reverted) loads the RAM of an instant snapshot.
      - V(full) loads all of it, then the guest runs (seconds per GiB). A raw QEMU VM's mapped-ram memory file
        is read by QEMU's own loader, with several threads.
      - V(background) runs the guest at once and loads its RAM behind it through QEMU's postcopy, each page the
        guest touches first fetched on demand (RV(running_after_s)); the task returns once all RAM is in
        (RV(load)). Raw QEMU VMs only, for instant snapshots this collection took with mapped-ram (QEMU >= 9.0),
        and only when the VM is to run after the revert.
      - If the background load fails half-way (its helper process killed, the memory file unreadable), the
        guest cannot run on, as pages it never got cannot be made up. The module fails saying so, stops that
        QEMU (a vCPU waiting for a missing page can hold QEMU's lock, so it may never answer QMP again) and leaves
        a QEMU waiting for a load (paused) on the VM's QMP socket, with the snapshot untouched, so that the same
        revert can simply run again; it brings the VM back as it was at the snapshot, running if it ran then.
      - libvirt domains always load fully - libvirt's restore takes its memory file as one stream and has no
        postcopy input.
    type: str
    choices: [full, background]
    default: full
    version_added: 1.1.0
seealso:
  - module: vmfleet.kvm.snapshot_info
  - module: vmfleet.kvm.fleet_snapshot
  - ref: ansible_collections.vmfleet.kvm.docsite.snapshot_modes
    description: Choosing a snapshot mode (auto, internal, instant or external).
'''

EXAMPLES = r'''
- name: Snapshot a VM before an upgrade, leaving its raw OVMF varstore out
  vmfleet.kvm.snapshot:
    domain: web01
    name: pre-upgrade
    disks: [vda, vdb]
    vmstate_disk: vda

- name: Roll back
  vmfleet.kvm.snapshot:
    domain: web01
    name: pre-upgrade
    state: reverted

- name: Drop it after a good upgrade
  vmfleet.kvm.snapshot:
    domain: web01
    name: pre-upgrade
    state: absent

- name: A VM no libvirt manages
  vmfleet.kvm.snapshot:
    qmp_socket: /run/vms/build01.qmp
    name: nightly
    timeout: 600

- name: Instant snapshot of a big VM, paused for milliseconds
  vmfleet.kvm.snapshot:
    qmp_socket: /run/vms/db01.qmp
    name: pre-upgrade
    mode: instant
    memory_dir: /var/lib/vmfleet/snapshots

- name: Instant snapshot of a libvirt domain
  vmfleet.kvm.snapshot:
    domain: db02
    name: pre-upgrade
    mode: instant

- name: Roll it back (found by name, whatever mode took it)
  vmfleet.kvm.snapshot:
    domain: db02
    name: pre-upgrade
    state: reverted
'''

RETURN = r'''
snapshot:
  description: The snapshot as the disk images record it (for V(absent), as it was).
  returned: when a snapshot exists or would exist
  type: dict
  sample:
    name: pre-upgrade
    disks: [vda, vdb]
    vmstate_disk: vda
    vm_state_size: 268435456
    date: "2026-11-23T10:00:00+00:00"
    vm_clock_sec: 812.5
    consistent: true
route:
  description:
    - V(qmp) (QEMU snapshot jobs, or the QMP steps of an instant snapshot), V(libvirt) (libvirt's snapshot API),
      V(qemu-img) (VM shut off), V(qemu-relaunch) or V(libvirt-restore) (revert of an instant snapshot);
      null when nothing ran.
  returned: always
  type: str
  sample: qmp
qmp_refused:
  description:
    - QEMU's words when it refused its own load of a libvirt domain's snapshot and libvirt's revert then took
      the domain back (RV(route) is V(libvirt)). QEMU 10 refuses the load in a process whose outgoing migration
      was cancelled mid-stream.
  returned: when QEMU refused the load and libvirt's revert took the domain back
  type: str
  sample: "snapshot-load 'pre-upgrade' of VM 'web01' failed: Error -22 while loading VM state"
actions:
  description: What was (or in check mode would be) done, in order.
  returned: always
  type: list
  elements: dict
  sample:
    - action: create
      disks: [vda, vdb]
      vmstate_disk: vda
paused_ms:
  description:
    - How long the guest was paused, in milliseconds, from QEMU's STOP and RESUME events.
    - Through libvirt no events are seen, so this is the length of the operation, an upper bound; for an
      external snapshot of a libvirt domain with memory, QEMU's downtime of the memory write as libvirt reports it.
  returned: when O(state) is V(present) or V(reverted)
  type: float
  sample: 812.4
duration_s:
  description: Wall time of the whole operation in seconds.
  returned: always
  type: float
  sample: 1.25
state:
  description: The VM's state after a revert.
  returned: when O(state=reverted) and not in check mode
  type: str
  sample: running
mode:
  description:
    - The mode of the snapshot the task handled, V(internal), V(instant) or V(external) (for O(state=absent) and
      O(state=reverted), the mode it was taken in).
  returned: always
  type: str
  sample: instant
mode_reason:
  description: Why O(mode=auto) chose RV(mode) for this VM.
  returned: when O(mode=auto) and O(state=present)
  type: str
  sample: disk vda is raw, which cannot hold internal snapshots
pid:
  description: PID of the relaunched QEMU after the revert of an instant or external snapshot of a raw QEMU VM.
  returned: when an instant or external snapshot of a raw QEMU VM was reverted, not in check mode
  type: int
  sample: 4242
qmp_socket:
  description: QMP socket of the relaunched QEMU after the revert of an instant or external snapshot of a raw QEMU VM.
  returned: when an instant or external snapshot of a raw QEMU VM was reverted, not in check mode
  type: str
  sample: /run/vms/db01.qmp
domain_id:
  description: libvirt's id of the domain restored by the revert of an instant snapshot.
  returned: when an instant snapshot of a libvirt domain was reverted, not in check mode
  type: int
  sample: 7
load_s:
  description: Seconds libvirt's restore of the memory file took, in the revert of an instant snapshot of a libvirt domain.
  returned: when an instant snapshot of a libvirt domain was reverted, not in check mode
  type: float
  sample: 1.16
running_after_s:
  description:
    - With O(load=background), seconds from the old QEMU's exit until the reverted guest ran again (its RAM
      still loading).
  returned: when an instant snapshot of a raw QEMU VM was reverted with O(load=background), not in check mode
  type: float
  sample: 0.41
load:
  description: How the RAM of the reverted instant snapshot of a raw QEMU VM was loaded.
  returned: when an instant snapshot of a raw QEMU VM with a mapped-ram memory file was reverted, not in check mode
  type: dict
  contains:
    mode:
      description: V(full) or V(background).
      type: str
    loader:
      description:
        - V(qemu) for a full load, QEMU's own mapped-ram C(file:) loader reading with several threads (after the
          module filled in the image's page bitmap); V(helper) for a background load, the postcopy source
          process of this collection.
      type: str
    seconds:
      description: Seconds from the start of the load until all RAM was in.
      type: float
    pages:
      description: Pages loaded (a full load does not count the pages the snapshot found zero, which it never wrote).
      type: int
    requested:
      description: Pages the running guest asked for before they came in the background (V(background)).
      type: int
    rate_mib_s:
      description: MiB of guest RAM loaded per second.
      type: float
    progress:
      description: The load's progress, a sample every 64 MiB (what C(-v) shows).
      type: list
      elements: dict
  sample: {mode: background, loader: helper, seconds: 2.4, pages: 262144, requested: 180, rate_mib_s: 426.7, progress: []}
quiesced:
  description:
    - The freeze of the guest's filesystems around the disk snapshot (O(quiesce)), where this collection froze them
      through the QEMU guest agent; a libvirt external snapshot freezes through libvirt's own agent and has none.
  returned: when O(quiesce=true) froze the guest's filesystems
  type: dict
  contains:
    filesystems:
      description: How many filesystems the agent froze.
      type: int
    frozen_ms:
      description: Milliseconds from the freeze until the thaw.
      type: float
  sample: {filesystems: 1, frozen_ms: 84.2}
nvram_restored:
  description: Whether the revert of an external snapshot of a UEFI libvirt domain wrote its NVRAM copy back.
  returned: when an external snapshot of a libvirt domain was reverted, not in check mode
  type: bool
  sample: true
removed:
  description: Files the delete of an external snapshot of a libvirt domain removed itself (its NVRAM copy).
  returned: when an external snapshot of a libvirt domain was deleted, not in check mode
  type: list
  elements: str
  sample: [/var/lib/vmfleet/snapshots/db01.pre-upgrade.nvram]
ram_bytes:
  description: Bytes of guest RAM the instant snapshot (or external snapshot with O(memory)) wrote.
  returned: when O(mode=instant) created a snapshot, or an external snapshot of a raw QEMU VM with O(memory)
  type: int
  sample: 4294967296
booted:
  description:
    - V(true) when the reverted external snapshot of a raw QEMU VM had no memory (O(memory=false)) and the
      guest was booted again from its disks; V(false) when its RAM was loaded.
  returned: when an external snapshot of a raw QEMU VM was reverted, not in check mode
  type: bool
  sample: false
commit_s:
  description: Seconds the commit of the overlays into the images under them took, deleting an external snapshot of a raw QEMU VM.
  returned: when an external snapshot of a raw QEMU VM was deleted, not in check mode
  type: float
  sample: 2.7
error:
  description: The failure's class, one of R(the error classes,ansible_collections.vmfleet.kvm.docsite.error_classes); absent when the failure is a bug.
  returned: failed
  type: str
  sample: SnapshotNotFound
'''

import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import open_vm
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import DEFAULT_MEMORY_DIR
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import run_module, vmfleet_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.task import snapshot_task
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.vm_lock import held_for_change


def _diff(state, name, before, result):
    held = sorted(before['disks']) if before else []
    if state == 'present':
        after = sorted(result['snapshot']['disks']) if result.get('snapshot') else held
    elif state == 'absent':
        after = []
    else:
        return dict(before='VM at its current state\n', after="VM at snapshot '%s'\n" % name)
    return dict(before=dict(snapshot=name, disks=held), after=dict(snapshot=name, disks=after))


def work(module):
    p = module.params
    t0 = time.monotonic()
    with held_for_change(module.check_mode, p, 'snapshot %s %s' % (p['state'], p['name']), p['timeout']), open_vm(module) as vm:
        result, before = snapshot_task(vm, p, module.check_mode)
    result['duration_s'] = round(time.monotonic() - t0, 3)
    if module._diff and result['changed']:
        result['diff'] = _diff(p['state'], p['name'], before, result)
    return result


def main():
    run_module(vmfleet_module(dict(
        name=dict(type='str', required=True),
        state=dict(type='str', choices=['present', 'absent', 'reverted'], default='present'),
        disks=dict(type='list', elements='str'),
        vmstate_disk=dict(type='str'),
        memory=dict(type='bool', default=True),
        overwrite=dict(type='bool', default=False),
        mode=dict(type='str', choices=['auto', 'internal', 'instant', 'external'], default='auto'),
        memory_dir=dict(type='path', default=DEFAULT_MEMORY_DIR),
        overlay_dir=dict(type='path'),
        quiesce=dict(type='bool', default=False),
        guest_agent_socket=dict(type='path'),
        load=dict(type='str', choices=['full', 'background'], default='full'),
    ), relaunches=True), work)


if __name__ == '__main__':
    main()
