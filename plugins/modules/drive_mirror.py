#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: drive_mirror
short_description: Move a running VM's disk to new storage (live block copy), crash-safe
version_added: 1.0.0
description:
  - Copies a disk of a running VM to O(target) while the guest keeps writing, waits until
    source and target are in sync, and (with O(state=pivoted)) switches the VM to the target.
  - A libvirt domain (O(domain)) is handled with libvirt's own API (C(virDomainBlockCopy),
    C(virDomainBlockJobAbort) with pivot); its persistent definition is pointed at the target
    after the switch. A raw QEMU (O(qmp_socket)) is handled with C(blockdev-add),
    C(blockdev-mirror) and C(block-job-complete).
  - Every phase (target created, copying, ready, switching, switched, config updated) is written
    to a small journal file per VM disk in O(journal_dir), atomically (temporary file, fsync,
    rename, fsync of the directory), before the module goes on. A re-run after the module, the
    controller, libvirtd or QEMU died reads it, looks at the VM, and carries on from there; the
    journal always tells which image holds the newest data.
  - A failure leaves the VM running on its source; the source is never deleted or written over.
extends_documentation_fragment:
  - vmfleet.kvm.connection
attributes:
  check_mode:
    description: Checks the target path and the free space and predicts the actions; touches nothing.
  diff_mode:
    support: full
    description: Shows the image the disk runs on before and after.
options:
  disk:
    description:
      - The disk to move, by name (libvirt target such as V(vdb), or the QEMU device id / node name).
    type: str
    required: true
  target:
    description:
      - Path of the new image. Its directory must exist and be writable.
    type: path
    required: true
  target_format:
    description:
      - Format of the new image. Default is the format of the source.
    type: str
    choices: [qcow2, raw]
  create_target:
    description:
      - Create the target image (with C(qemu-img create)) before the copy.
      - An existing file that this mirror did not create is refused unless O(overwrite=true).
      - With V(false) the target must exist, have the right format and size, and is written over by the copy.
    type: bool
    default: true
  overwrite:
    description:
      - Replace an existing target file that this mirror did not create.
    type: bool
    default: false
  sync:
    description:
      - V(full) copies the whole disk (its backing chain flattened into the target).
      - V(top) copies only the top image; the target gets the same backing file.
      - A disk that runs on the top overlay of an external snapshot chain (see M(vmfleet.kvm.snapshot)) is always
        copied V(top), whatever this says; the snapshot keeps the image under the overlay and is pointed at the copy
        (RV(snapshots_carried)).
    type: str
    choices: [full, top]
    default: full
  copy_mode:
    description:
      - V(background) copies guest writes later from a dirty bitmap; under a heavy write load it may never converge.
      - V(write-blocking) writes each guest write to source and target before completing it, so
        the copy converges under any write load (guest writes become as slow as the slower side).
    type: str
    choices: [background, write-blocking]
    default: background
  speed:
    description:
      - Copy bandwidth limit in bytes per second; V(0) is unlimited. A re-run sets it on a running job.
    type: int
    default: 0
  granularity:
    description:
      - Granularity of the dirty bitmap in bytes (a power of two between 512 and 64 MiB); default is QEMU's.
    type: int
  buf_size:
    description:
      - How many bytes may be in flight between source and target; default is QEMU's.
    type: int
  state:
    description:
      - V(ready) starts the copy unless one runs for the disk, waits until source and target are
        in sync, and leaves the job running (mirroring every guest write).
      - V(pivoted) does the same and then switches the VM to the target. Nothing changes if the VM
        already runs on O(target).
      - V(cancelled) stops the copy; the VM stays on its source and the target is left as a
        consistent copy (or removed with O(remove_target)).
    type: str
    choices: [ready, pivoted, cancelled]
    default: pivoted
  verify:
    description:
      - Before the switch, pause the guest, wait until nothing is left to copy, compare source and
        target through QEMU (read-only NBD exports of both, C(qemu-img compare)), switch, and resume.
      - The result's RV(paused_ms) tells how long the guest was paused.
      - On a libvirt domain this uses libvirt's QMP passthrough, which libvirt marks as tainted.
    type: bool
    default: false
  remove_target:
    description:
      - With O(state=cancelled), delete the target image, but only if this mirror created it.
    type: bool
    default: false
  cancel_on_timeout:
    description:
      - When O(timeout) runs out before the copy is in sync, cancel the job. By default the job
        is left running (and named in the message) so a re-run can pick it up.
    type: bool
    default: false
  journal_dir:
    description:
      - Directory of the journal files (created with mode 0700 if missing). Keep it on local,
        persistent storage and the same across runs.
    type: path
    default: /var/lib/vmfleet/journal
  snapshots:
    description:
      - What happens to the snapshots the disk's image holds (internal snapshots, and the disk part of instant
        snapshots), which a live copy cannot carry (qcow2 internal snapshots stay in the source image).
      - V(keep) refuses the move before anything changes, naming each snapshot (checked again just before the
        switch, for one taken while the copy ran).
      - V(drop) deletes each of them from the VM before the switch (from every disk, from libvirt's metadata, and an
        instant snapshot's memory file in O(memory_dir)), so no snapshot is left missing one of its disks; the
        result's RV(snapshots_dropped) names them.
      - External snapshots are not affected by this option; a disk on the top overlay of an external chain is copied
        shallow and the snapshot carried to the copy (see O(sync)).
    type: str
    choices: [keep, drop]
    default: keep
    version_added: 1.2.0
  memory_dir:
    description:
      - Directory of the instant snapshots' memory files and manifests (see M(vmfleet.kvm.snapshot)), for
        O(snapshots=drop), and of a raw QEMU's external snapshot records, pointed at the copy of a moved overlay.
    type: path
    default: /var/lib/vmfleet/snapshots
    version_added: 1.2.0
notes:
  - A raw QEMU has no persistent definition. After the switch its command line still names the old
    image; the module warns, and the journal records the switch. Change the command line before you next
    start QEMU yourself. The collection's own relaunches (M(vmfleet.kvm.vm_save) and M(vmfleet.kvm.vm_restore),
    reverts of instant snapshots) follow the switch and start QEMU on the new image.
  - The old source is left in place (and, for a raw QEMU, open) after the switch. Delete it yourself
    once the VM runs well on the target.
  - A disk whose image holds internal snapshots is not moved unless O(snapshots=drop), because a live copy carries the
    active data only. To keep such a rollback point across a storage move, revert or delete it first, or take a new
    one on the target after the move.
  - A disk on the top overlay of an external snapshot chain is moved with its snapshot, as C(virsh blockcopy --shallow)
    does it. The target is a qcow2 image whose backing file is the image under the overlay, which stays where it
    is. After the switch, libvirt's snapshot metadata is defined again naming the copy (C(REDEFINE)), or a raw QEMU's
    external snapshot record in O(memory_dir) is rewritten (durably, last) and QEMU lets the old overlay go, so the
    old overlay may be removed. A re-run after a kill between the switch and that update finishes it. A disk that does
    not run on its chain's top overlay, an inconsistent snapshot, or a O(target_format) other than qcow2 is refused
    before anything changes, naming the snapshot.
seealso:
  - module: vmfleet.kvm.vm_info
  - module: vmfleet.kvm.fleet_storage_migration
  - ref: ansible_collections.vmfleet.kvm.docsite.storage_migration
    description: Moving the disks of running VMs to new storage.
'''

EXAMPLES = r'''
- name: Move web01's data disk to the new array, switching when in sync
  vmfleet.kvm.drive_mirror:
    domain: web01
    disk: vdb
    target: /srv/array2/web01-data.qcow2
    copy_mode: write-blocking
    timeout: 3600

- name: Start the copy now, switch later in the maintenance window
  vmfleet.kvm.drive_mirror:
    domain: web01
    disk: vdb
    target: /srv/array2/web01-data.qcow2
    state: ready

- name: In the window, prove the copy identical, then switch
  vmfleet.kvm.drive_mirror:
    domain: web01
    disk: vdb
    target: /srv/array2/web01-data.qcow2
    state: pivoted
    verify: true

- name: Give up, and remove the copy
  vmfleet.kvm.drive_mirror:
    qmp_socket: /run/vms/build01.qmp
    disk: data
    target: /srv/array2/build01-data.qcow2
    state: cancelled
    remove_target: true
'''

RETURN = r'''
disk:
  description: The disk's name.
  returned: always
  type: str
  sample: vdb
source:
  description: The image the disk ran on before the mirror.
  returned: always
  type: str
  sample: /var/lib/libvirt/images/web01-data.qcow2
target:
  description: The absolute target path.
  returned: always
  type: str
  sample: /srv/array2/web01-data.qcow2
live_file:
  description: The image the VM runs the disk on now.
  returned: always
  type: str
  sample: /srv/array2/web01-data.qcow2
on_target:
  description: Whether the VM runs the disk on O(target) now.
  returned: always
  type: bool
route:
  description: V(libvirt) (libvirt's block copy API) or V(qemu) (QMP blockdev-mirror).
  returned: always
  type: str
  sample: libvirt
actions:
  description: What was (or in check mode would be) done, in order.
  returned: always
  type: list
  elements: dict
  sample:
    - action: create_target
      path: /srv/array2/web01-data.qcow2
      format: qcow2
    - action: start_copy
    - action: switch
      to: /srv/array2/web01-data.qcow2
bytes_total:
  description: Bytes the copy job had to cover when last seen (grows while the guest writes).
  returned: always
  type: int
  sample: 2147483648
bytes_copied:
  description: Bytes the copy job had copied when last seen.
  returned: always
  type: int
  sample: 2147483648
duration_s:
  description: Wall time of the whole task in seconds.
  returned: always
  type: float
  sample: 12.5
copy_s:
  description: Seconds from the start (or adoption) of the copy until source and target were in sync.
  returned: when this run waited for a copy
  type: float
  sample: 11.2
rate_mib_s:
  description: RV(bytes_copied) over RV(copy_s), in MiB/s.
  returned: always
  type: float
  sample: 182.9
paused_ms:
  description: How long the guest was paused for O(verify) and the switch, in milliseconds.
  returned: always
  type: float
  sample: 640.2
verified:
  description: V(true) if O(verify) found source and target identical; null when no verify ran.
  returned: always
  type: bool
progress:
  description: Progress samples taken about once a second while waiting (at verbosity C(-vvv) and above).
  returned: with -vvv
  type: list
  elements: dict
snapshots_dropped:
  description: The snapshots O(snapshots=drop) deleted (or in check mode would delete) before the move.
  returned: always
  type: list
  elements: str
  sample: [pre-upgrade]
snapshots_carried:
  description:
    - The external snapshots pointed at the copy after the switch (in check mode, that would be); their overlay on
      this disk is now the target.
  returned: always
  type: list
  elements: str
  sample: [pre-upgrade]
  version_added: 1.2.0
journal:
  description: The journal of this disk's mirror (phase, history with timestamps, source, target, path).
  returned: when a journal exists
  type: dict
  sample:
    phase: done
    source: /var/lib/libvirt/images/web01-data.qcow2
    target: /srv/array2/web01-data.qcow2
    history:
      - phase: planned
        at: "2026-11-23T10:00:00.000+00:00"
      - phase: switched
        at: "2026-11-23T10:00:12.000+00:00"
space_needed:
  description: Bytes the copy needs on the target filesystem (when the check failed).
  returned: on failure for lack of space
  type: int
space_free:
  description: Bytes free on the target filesystem (when the check failed).
  returned: on failure for lack of space
  type: int
error:
  description: The failure's class, one of R(the error classes,ansible_collections.vmfleet.kvm.docsite.error_classes); absent when the failure is a bug.
  returned: failed
  type: str
  sample: SpaceTooSmall
'''

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import open_vm
from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.drive_mirror import drive_mirror
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import run_module, vmfleet_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.vm_lock import held_for_change
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import DEFAULT_MEMORY_DIR


def work(module):
    p = module.params
    with held_for_change(module.check_mode, p, 'drive_mirror %s %s' % (p['disk'], p['state']), p['timeout']), \
            open_vm(module) as vm:
        before = vm.disk(module.params['disk']).file if module._diff else None
        result = drive_mirror(module, vm, module.params, check_mode=module.check_mode)
    if module._diff and result['changed']:
        after = result['target'] if (result['on_target'] or module.params['state'] == 'pivoted') else before
        result['diff'] = dict(before=dict(disk=result['disk'], image=before),
                              after=dict(disk=result['disk'], image=after))
    return result


def main():
    run_module(vmfleet_module(dict(
        disk=dict(type='str', required=True),
        target=dict(type='path', required=True),
        target_format=dict(type='str', choices=['qcow2', 'raw']),
        create_target=dict(type='bool', default=True),
        overwrite=dict(type='bool', default=False),
        sync=dict(type='str', choices=['full', 'top'], default='full'),
        copy_mode=dict(type='str', choices=['background', 'write-blocking'], default='background'),
        speed=dict(type='int', default=0),
        granularity=dict(type='int'),
        buf_size=dict(type='int'),
        state=dict(type='str', choices=['ready', 'pivoted', 'cancelled'], default='pivoted'),
        verify=dict(type='bool', default=False),
        remove_target=dict(type='bool', default=False),
        cancel_on_timeout=dict(type='bool', default=False),
        journal_dir=dict(type='path', default='/var/lib/vmfleet/journal'),
        snapshots=dict(type='str', choices=['keep', 'drop'], default='keep'),
        memory_dir=dict(type='path', default=DEFAULT_MEMORY_DIR),
    )), work)


if __name__ == '__main__':
    main()
