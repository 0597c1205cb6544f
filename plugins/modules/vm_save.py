#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: vm_save
short_description: Save a running VM's RAM and device state to disk over parallel channels
version_added: 0.1.0
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
author:
  - vmfleet.kvm contributors (@vmfleet)
extends_documentation_fragment:
  - vmfleet.kvm.connection
attributes:
  check_mode:
    support: full
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
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmfleet.kvm.plugins.module_utils import save_image
from ansible_collections.vmfleet.kvm.plugins.module_utils.args_common import (
    CONNECTION_MUTUALLY_EXCLUSIVE, argument_spec,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.exceptions import InvalidArgument, VmfleetError
from ansible_collections.vmfleet.kvm.plugins.module_utils.runner import run_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.vm import open_vm
from ansible_collections.vmfleet.kvm.plugins.module_utils.vm_state import Saver, choose_path, socket_alive


def _result(path, manifest, changed):
    return dict(changed=changed, image=path, manifest=save_image.manifest_path(path),
                path_used=manifest['path_used'], why=manifest.get('why'), channels=manifest['channels'],
                files=manifest['files'], bytes=sum(f['bytes'] for f in manifest['files']),
                bytes_written=sum(f.get('allocated', f['bytes']) for f in manifest['files']))


def _already_saved(module, manifest):
    """The VM named by the task is the one in the manifest and no longer runs."""
    p = module.params
    vm = manifest['vm']
    if p['qmp_socket']:
        return vm.get('qmp_socket') == p['qmp_socket'] and not socket_alive(p['qmp_socket'])
    if vm.get('backend') != 'libvirt' or p['domain'] not in (vm.get('name'), vm.get('uuid')):
        return False
    with open_vm(module) as handle:
        return handle.state() == 'shutoff'


def work(module):
    p = module.params
    path = p['path']
    save_image.validate_path(path)
    if p['channels'] < 1 or p['channels'] > 64:
        raise InvalidArgument("channels must be between 1 and 64, not %d" % p['channels'])
    manifest = save_image.read_manifest(path)
    if manifest and not p['overwrite'] and _already_saved(module, manifest):
        save_image.check_files(path, manifest, checksum=False)
        return _result(path, manifest, False)
    existing = [f for f in save_image.existing_files(path) if not f.endswith(save_image.PARTIAL)]
    if existing and not p['overwrite']:
        raise VmfleetError("save image %s already exists (%s)" % (path, ", ".join(os.path.basename(f) for f in existing)),
                           hint="nothing was touched; set overwrite: true to replace it, or pick another path")
    with open_vm(module) as vm:
        if vm.backend == 'libvirt':
            path_used, why = choose_path('libvirt', [], p['channels'], p['compression'], vm.parallel_save_supported())
        else:
            path_used, why = choose_path('qemu', vm.migrate_caps(), p['channels'], p['compression'])
        if not vm.is_running():
            raise InvalidArgument("VM '%s' is %s, there is no running state to save" % (vm.name, vm.state()),
                                  hint="start it, or restore it if it was saved")
        if module.check_mode:
            return dict(changed=True, image=path, manifest=save_image.manifest_path(path), path_used=path_used,
                        why=why, channels=p['channels'], files=[], bytes=0, bytes_written=0)
        # A save that died before its manifest leaves only partial files: never an image.
        save_image.remove([f for f in save_image.existing_files(path) if f.endswith(save_image.PARTIAL)])
        saver = Saver(module, vm, path, p['channels'], p['compression'], p['keep_running'], p['verify'], p['timeout'])
        saver.why = why
        t0 = time.monotonic()
        if vm.backend == 'libvirt':
            manifest, duration, downtime = saver.save_libvirt(path_used)
        else:
            manifest, duration, downtime = saver.save_qemu(path_used)
    result = _result(path, manifest, True)
    result.update(duration_s=round(time.monotonic() - t0, 3), downtime_ms=downtime, direct_io=saver.direct_io,
                  rate_mib_s=round(result['bytes_written'] / 1048576.0 / duration, 1) if duration else None)
    return result


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            path=dict(type='path', required=True),
            channels=dict(type='int', default=4),
            compression=dict(type='str', choices=['none', 'zstd', 'zlib'], default='none'),
            keep_running=dict(type='bool', default=False),
            verify=dict(type='bool', default=True),
            overwrite=dict(type='bool', default=False),
        ),
        mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE,
        required_one_of=[('domain', 'qmp_socket')],
        supports_check_mode=True,
    )
    run_module(module, work)


if __name__ == '__main__':
    main()
