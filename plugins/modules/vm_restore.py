#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: vm_restore
short_description: Bring a VM back from an image written by vmfleet.kvm.vm_save
version_added: 1.0.0
description:
  - Restores the VM saved at O(path); it runs on from the moment it was saved.
  - A libvirt domain is restored with C(restoreParams) over parallel channels (see O(channels)).
    A raw QEMU VM is started again from its recorded command line with C(-incoming defer),
    the capabilities of the save are set, and the image is loaded with C(migrate-incoming).
  - With O(verify), every file is checked against the manifest's size and SHA-256 before anything
    starts; a truncated or corrupt image fails naming the file.
  - A failed restore stops the half-restored QEMU and leaves the image untouched.
extends_documentation_fragment:
  - vmfleet.kvm.connection
  - vmfleet.kvm.relaunch
attributes:
  check_mode:
    description: Checks the image and says whether a restore would run; starts nothing.
  diff_mode:
    support: none
    description: Nothing to compare.
options:
  path:
    description: The save image (as given to M(vmfleet.kvm.vm_save)).
    type: path
    required: true
  state:
    description: Leave the restored VM V(running) or V(paused).
    type: str
    choices: [running, paused]
    default: running
  verify:
    description: Check every file's SHA-256 against the manifest before starting anything.
    type: bool
    default: true
  channels:
    description:
      - Threads that read the image. A mapped-ram or libvirt C(sparse) image puts every page at a fixed
        place whatever the channel count it was saved with, so it can be read over any number of channels.
        Not set, it is read over the channels it was saved with, but at least 4, so a 1- or 2-channel image
        loads as fast as a 4-channel one (measured on this project's 2-core benchmark host, 3 GiB image
        with O_DIRECT, MiB/s, 1 thread about 600, 2 threads 950, 4 threads 1800 to 2200; 8 and 16 threads
        were no faster).
      - A compressed image is read over the channels it was saved with (raw QEMU, one file per channel) or
        as one stream (libvirt); another value fails.
    type: int
  direct_io:
    description:
      - Read a parallel (mapped-ram or libvirt C(sparse)) image with O_DIRECT, straight into guest RAM,
        instead of through the page cache. On this project's benchmark host a libvirt domain with 4 GiB
        (3 GiB image) came back 1.7 to 2.2 times as fast (two runs, median of 4 rounds each, 2.1 s against
        3.6 s and 2.3 s against 5.0 s).
      - Not set, it is used when QEMU has the C(direct-io) migration parameter (9.1 and later) and the file
        system accepts O_DIRECT.
      - On a libvirt domain it is C(VIR_DOMAIN_SAVE_BYPASS_CACHE). libvirt 11.3 leaves QEMU's C(direct-io)
        parameter on afterwards and has no API to switch it off, and QEMU 10.0 then crashes, losing the
        guest, in the next save in the C(sparse) format without that flag (C(virsh save --image-format
        sparse), or a managed save such as C(libvirt-guests) at shutdown when C(save_image_format) in
        C(qemu.conf) is C(sparse)). So the module switches it off again through libvirt's QMP passthrough,
        and libvirt marks the domain tainted (C(custom-monitor); C(virsh dominfo) shows it under
        C(Messages)) until its QEMU next starts. This is only a mark for support; the domain works as before.
      - V(false) always reads through the page cache, and leaves a libvirt domain untainted.
    type: bool
notes:
  - O(domain) and O(qmp_socket) are optional here; the manifest names the VM. For a raw QEMU VM,
    O(qmp_socket) adds a QMP socket at that path to the restored QEMU when it differs from the saved one.
seealso:
  - module: vmfleet.kvm.vm_save
  - module: vmfleet.kvm.fleet_maintenance
  - ref: ansible_collections.vmfleet.kvm.docsite.host_maintenance
    description: Saving and restoring the VMs of a host around its maintenance.
'''

EXAMPLES = r'''
- name: Bring a domain back after maintenance
  vmfleet.kvm.vm_restore:
    path: /var/lib/vmfleet/save/web01.img

- name: Bring a domain back through the page cache, slower, and without marking it tainted
  vmfleet.kvm.vm_restore:
    path: /var/lib/vmfleet/save/db01.img
    direct_io: false

- name: Bring a raw QEMU VM back paused
  vmfleet.kvm.vm_restore:
    path: /var/lib/vmfleet/save/build01.img
    state: paused
'''

RETURN = r'''
vm:
  description: Name of the restored VM.
  returned: always
  type: str
  sample: web01
backend:
  description: C(libvirt) or C(qemu).
  returned: always
  type: str
  sample: qemu
state:
  description: The VM's state after the restore.
  returned: always
  type: str
  sample: running
path_used:
  description: The save path the image was written with.
  returned: always
  type: str
  sample: mapped-ram
qmp_socket:
  description: QMP socket of the restored raw QEMU.
  returned: for raw QEMU
  type: str
  sample: /run/vms/build01.qmp
pid:
  description: PID of the restored raw QEMU.
  returned: for raw QEMU
  type: int
  sample: 4242
channels:
  description: Threads that read the image (see O(channels)).
  returned: when a restore ran
  type: int
  sample: 4
direct_io:
  description: Whether the image was read with O_DIRECT (see O(direct_io)).
  returned: when a restore ran
  type: bool
  sample: true
bytes:
  description: Bytes of the image.
  returned: always
  type: int
  sample: 1073741824
duration_s:
  description: Seconds the restore took (checks included).
  returned: when a restore ran
  type: float
  sample: 1.9
load_s:
  description:
    - Seconds QEMU took to read the image into RAM (from C(migrate-incoming) to done), without starting
      QEMU before nor resuming the guest after. RV(duration_s) counts those too.
  returned: when a raw QEMU restore ran
  type: float
  sample: 0.42
rate_mib_s:
  description: Image bytes on disk (sparse holes excluded) loaded per second, in MiB/s, QEMU's start included.
  returned: when a restore ran
  type: float
  sample: 560.2
error:
  description: The failure's class, one of R(the error classes,ansible_collections.vmfleet.kvm.docsite.error_classes); absent when the failure is a bug.
  returned: failed
  type: str
  sample: ImageCorrupt
'''

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import run_module, vmfleet_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.save.save_restore import restore_image


def main():
    run_module(vmfleet_module(dict(
        path=dict(type='path', required=True),
        state=dict(type='str', choices=['running', 'paused'], default='running'),
        verify=dict(type='bool', default=True),
        channels=dict(type='int'),
        direct_io=dict(type='bool'),
    ), needs_vm=False, relaunches=True), restore_image)


if __name__ == '__main__':
    main()
