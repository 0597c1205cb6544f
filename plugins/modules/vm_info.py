#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: vm_info
short_description: Describe QEMU/KVM VMs on a hypervisor and what the host can do
version_added: 1.0.0
description:
  - Lists the VMs of a hypervisor (every libvirt domain on O(uri)), or one VM named by
    O(domain) or reached through O(qmp_socket), with their disks, internal snapshots and
    running block jobs.
  - Reports the host's QEMU and libvirt versions and the capabilities the other modules
    of this collection rely on, asked of the QEMU binary that runs the VMs.
  - Changes nothing; snapshots are read from the disk images themselves, so snapshots made
    outside libvirt's snapshot API are listed too.
extends_documentation_fragment:
  - vmfleet.kvm.connection
attributes:
  check_mode:
    description: The module never changes anything.
  diff_mode:
    support: none
    description: Nothing to compare.
options: {}
seealso:
  - module: vmfleet.kvm.snapshot_info
  - module: vmfleet.kvm.snapshot
  - module: vmfleet.kvm.drive_mirror
'''

EXAMPLES = r'''
- name: Every libvirt domain on this hypervisor
  vmfleet.kvm.vm_info:
  register: fleet

- name: One libvirt domain
  vmfleet.kvm.vm_info:
    domain: web01
  register: web01

- name: A QEMU that no libvirt manages
  vmfleet.kvm.vm_info:
    qmp_socket: /run/vms/build01.qmp
  register: build01

- name: Refuse to go on without parallel save
  ansible.builtin.assert:
    that: fleet.host.capabilities.parallel_save
    fail_msg: this host cannot save VMs over several channels
'''

RETURN = r'''
vms:
  description: The VMs found, one entry each.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: libvirt domain name, or the QEMU C(-name) (else the socket's file name).
      type: str
      sample: web01
    backend:
      description: C(libvirt) or C(qemu) (raw QEMU through its QMP socket).
      type: str
      sample: libvirt
    connection:
      description:
        - The connection options that reach this VM, ready to pass to the other modules
          (C(domain) and C(uri), or C(qmp_socket)).
      type: dict
      sample: {domain: web01, uri: "qemu:///system"}
    state:
      description: C(running), C(paused), C(shutoff), C(crashed) or another libvirt state name.
      type: str
      sample: running
    disks:
      description: The VM's disks.
      type: list
      elements: dict
      sample:
        - name: vda
          node_name: libvirt-3-format
          file: /var/lib/libvirt/images/web01.qcow2
          format: qcow2
          virtual_size: 21474836480
          read_only: false
    snapshots:
      description: Internal snapshots found in the disk images, one entry per name.
      type: list
      elements: dict
      sample:
        - name: pre-upgrade
          disks: [vda, vdb]
          vmstate_disk: vda
          vm_state_size: 268435456
          date: "2026-11-23T10:00:00+00:00"
          vm_clock_sec: 812.5
          consistent: true
    block_jobs:
      description:
        - Block jobs running on the VM's disks (empty when it is not running).
        - C(disk) is the disk the job works on; C(job) is QEMU's job id (raw QEMU), null through libvirt.
      type: list
      elements: dict
      sample:
        - disk: vda
          job: vmfleet-mirror-vda
          type: mirror
          bytes_total: 2147483648
          bytes_done: 1073741824
          ready: false
host:
  description: What this hypervisor runs and can do.
  returned: always
  type: dict
  contains:
    qemu_version:
      description: Version of the QEMU that runs (or would run) the VMs.
      type: str
      sample: 10.0.2
    libvirt_version:
      description: Version of libvirt, null when the VM was reached through a QMP socket and libvirt is absent.
      type: str
      sample: 11.3.0
    capabilities:
      description:
        - C(mapped_ram) - QEMU can save RAM to a file over parallel channels (mapped-ram).
        - C(multifd) - QEMU can migrate over several channels.
        - C(background_snapshot) - QEMU and the kernel (userfaultfd write-protect) allow instant snapshots.
        - C(userfaultfd_wp) - the kernel offers userfaultfd write-protect.
        - C(parallel_save) - a save over several channels works through this backend.
        - C(snapshot_jobs) - QEMU has the snapshot-save job.
        - C(internal_snapshot_revert) - QEMU can load internal snapshots (snapshot-load).
        - C(libvirt_snapshot_revert) - libvirt's own snapshot revert is usable (not 11.2-11.3).
      type: dict
      sample:
        mapped_ram: true
        multifd: true
        background_snapshot: true
        userfaultfd_wp: true
        parallel_save: true
        snapshot_jobs: true
        internal_snapshot_revert: true
        libvirt_snapshot_revert: false
error:
  description: The failure's class, one of R(the error classes,ansible_collections.vmfleet.kvm.docsite.error_classes); absent when the failure is a bug.
  returned: failed
  type: str
  sample: ConnectionFailed
'''

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import backend_of, open_vms
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmGone
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import run_module, vmfleet_module


def work(module):
    p = module.params
    named = backend_of(p) is not None
    descs = []
    with open_vms(module) as (vms, host):
        for vm in vms:
            try:
                descs.append(dict(vm.describe(), connection=vm.connection()))
            except VmGone:
                if named:
                    raise
                # shut down and undefined while we listed; not ours to report
        return dict(changed=False, vms=descs, host=host.host_facts(p['timeout']))


def main():
    run_module(vmfleet_module(needs_vm=False), work)


if __name__ == '__main__':
    main()
