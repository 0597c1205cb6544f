#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: vm_save
short_description: Save a running VM's RAM and device state to disk over parallel channels
version_added: 1.0.0
description:
  - Writes the VM's RAM and device state to O(path) and, unless O(keep_running), stops the VM
    (a libvirt domain ends shut off, a raw QEMU process quits), like C(virsh save) but over
    several channels at once.
  - Picks the fastest path the host supports and says which in RV(path_used) and why in RV(why).
    Without compression, QEMU's mapped-ram writes RAM to one sparse file over O(channels)
    threads (raw QEMU via a C(file:) migration; libvirt via C(saveParams) with the sparse
    format). With compression, a raw QEMU sends multifd over sockets into one file per channel;
    libvirt compresses the image in one stream.
  - A mapped-ram save over several channels writes with O_DIRECT when QEMU and the file system allow it;
    through the page cache the kernel throttles the writers once dirty pages pile up (a 4 GiB guest here
    saved in 1.8 s with O_DIRECT, in 4 to 6.5 s without).
  - A libvirt sparse save asks for O_DIRECT (C(VIR_DOMAIN_SAVE_BYPASS_CACHE)) when the file system
    takes it. A domain restored with O_DIRECT elsewhere (C(virsh restore --bypass-cache)) keeps
    QEMU's C(direct-io) parameter on, and libvirt 11.3's save without O_DIRECT then crashes QEMU 10.0,
    losing the guest.
  - Data files are written under temporary names, fsynced and renamed; a manifest
    (O(path) plus C(.manifest.json)) written last records the VM, the path used, channels, sizes,
    SHA-256 checksums and, for raw QEMU, the QEMU command line, so M(vmfleet.kvm.vm_restore)
    can bring it back. All files are created 0600.
  - A failure part-way removes the partial files and leaves the VM running as it was.
extends_documentation_fragment:
  - vmfleet.kvm.connection
  - vmfleet.kvm.relaunch
attributes:
  check_mode:
    description: Says whether a save would happen and which path it would use; touches nothing.
  diff_mode:
    support: none
    description: Nothing to compare.
options:
  path:
    description:
      - Absolute path of the save image. Its directory must exist.
    type: path
    required: true
  channels:
    description: Parallel channels (multifd threads). V(1) is a single stream.
    type: int
    default: 4
  compression:
    description: Compress the saved RAM.
    type: str
    choices: [none, zstd, zlib]
    default: none
  keep_running:
    description:
      - Let the VM run on after the save (a memory checkpoint). Raw QEMU only; libvirt's save stops the domain.
    type: bool
    default: false
  verify:
    description: Record a SHA-256 of every file in the manifest, read back from disk after the save.
    type: bool
    default: true
  overwrite:
    description:
      - Replace an existing image at O(path). Without it an existing image fails the task and is left alone.
      - The old image is removed only after the new one is complete.
    type: bool
    default: false
seealso:
  - module: vmfleet.kvm.vm_restore
  - module: vmfleet.kvm.fleet_maintenance
  - ref: ansible_collections.vmfleet.kvm.docsite.host_maintenance
    description: Saving and restoring the VMs of a host around its maintenance.
'''

EXAMPLES = r'''
- name: Save a domain before host maintenance, 4 channels
  vmfleet.kvm.vm_save:
    domain: web01
    path: /var/lib/vmfleet/save/web01.img

- name: Save a raw QEMU VM compressed
  vmfleet.kvm.vm_save:
    qmp_socket: /run/vms/build01.qmp
    path: /var/lib/vmfleet/save/build01.img
    compression: zstd
    timeout: 1800
'''

RETURN = r'''
image:
  description: The save image.
  returned: always
  type: str
  sample: /var/lib/vmfleet/save/web01.img
manifest:
  description: Path of the manifest next to the image.
  returned: always
  type: str
  sample: /var/lib/vmfleet/save/web01.img.manifest.json
path_used:
  description: V(mapped-ram), V(multifd-stream), V(libvirt-sparse) or V(libvirt-compressed).
  returned: always
  type: str
  sample: mapped-ram
why:
  description: Why that path was chosen.
  returned: always
  type: str
  sample: "no compression: QEMU writes RAM to one sparse file over 4 channel(s)"
channels:
  description: Channels used.
  returned: always
  type: int
  sample: 4
files:
  description: Data files of the image with size, kind and SHA-256.
  returned: always
  type: list
  elements: dict
  sample:
    - file: web01.img
      bytes: 1073741824
      kind: mapped-ram
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
bytes:
  description: Size of the data files (a sparse file counts its apparent size, holes included).
  returned: always
  type: int
  sample: 1073741824
bytes_written:
  description: Bytes the data files occupy on disk (a sparse file's holes excluded); RV(rate_mib_s) counts these.
  returned: always
  type: int
  sample: 889192448
direct_io:
  description:
    - Whether the image was written with O_DIRECT, past the page cache. A mapped-ram save over several
      channels is, when QEMU has the C(direct-io) migration parameter (9.1 and later) and the file system
      accepts O_DIRECT; so is a libvirt sparse save when the file system accepts it.
  returned: when a save ran
  type: bool
  sample: true
duration_s:
  description: Seconds the save took.
  returned: when a save ran
  type: float
  sample: 2.4
rate_mib_s:
  description: RV(bytes_written) per second until the RAM state was written (checksums excluded), in MiB/s.
  returned: when a save ran
  type: float
  sample: 426.7
downtime_ms:
  description:
    - Milliseconds the guest did not run because of the save.
    - Without O(keep_running) the guest stays stopped; this is the time from pausing it until its RAM state is
      written and flushed (the checksum pass of O(verify) excluded).
  returned: when a save ran
  type: float
  sample: 2400.0
error:
  description: The failure's class, one of R(the error classes,ansible_collections.vmfleet.kvm.docsite.error_classes); absent when the failure is a bug.
  returned: failed
  type: str
  sample: CapabilityMissing
'''

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import run_module, vmfleet_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.save.save_restore import save_vm


def main():
    run_module(vmfleet_module(dict(
        path=dict(type='path', required=True),
        channels=dict(type='int', default=4),
        compression=dict(type='str', choices=['none', 'zstd', 'zlib'], default='none'),
        keep_running=dict(type='bool', default=False),
        verify=dict(type='bool', default=True),
        overwrite=dict(type='bool', default=False),
    ), relaunches=True), save_vm)


if __name__ == '__main__':
    main()
