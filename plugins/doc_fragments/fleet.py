# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Paired with FLEET_ARGS in plugins/module_utils/common/arg_specs.py.
    DOCUMENTATION = r'''
author:
  - vmfleet.kvm contributors (@vmfleet)
attributes:
  check_mode:
    support: full
    description: Predicts what the module would do; changes nothing.
  diff_mode:
    support: none
    description: No diff; each VM's record says what changed.
  platform:
    support: full
    platforms: posix
    description: Runs on a Linux hypervisor host (the target of the task), next to QEMU and libvirtd.
options:
  uri:
    description:
      - libvirt connection URI whose domains are candidates.
      - An empty string leaves libvirt out (a host with raw QEMU VMs only).
    type: str
    default: qemu:///system
  vms:
    description:
      - The VMs to act on, by libvirt domain name or raw QEMU QMP socket path.
      - Empty means every VM of the host in the states the workflow acts on.
      - A name that matches no VM is reported as a failed VM.
    type: list
    elements: str
    default: []
  exclude:
    description:
      - VMs never to touch, by name, QMP socket path or shell-style glob of names.
    type: list
    elements: str
    default: []
  name_pattern:
    description:
      - A regular expression the VM name must match (searched, not anchored).
    type: str
    default: ""
  qmp_sockets:
    description:
      - QMP sockets of raw QEMU VMs (which no registry lists) that are candidates too.
    type: list
    elements: path
    default: []
  concurrency:
    description:
      - How many VMs are worked at once (a bounded pool of threads in the module). At least 1.
    type: int
    default: 2
  timeout:
    description:
      - Seconds the whole run may take, every VM included; each VM's step gets what is left.
      - A VM not started when it runs out fails with a message saying so; the others are reported as they ended.
      - Each VM is worked under its lock on the host (one change at a time per VM, whichever run asks); a VM
        another run is changing is waited for within this timeout, then reported failed naming that run.
        Two runs launched together over the same VMs thus take turns VM by VM.
    type: float
    default: 600.0
  progress_file:
    description:
      - A JSON file the module rewrites as each VM is done (count, and each VM's status and time),
        for M(vmfleet.kvm.fleet_progress) to follow the run while it goes on. Its directory is created (0700).
    type: path
  report_file:
    description:
      - When the run ends, every VM's record is written to this JSON file on the host (0600; its directory is
        created 0700), as C(vms), C(failed) (the failed records) and C(changed) (the names of the VMs changed),
        whether VMs failed or not. Not written in check mode.
    type: path
  report_extra:
    description:
      - Keys put at the top of the O(report_file) (the roles add C(role) and C(host)).
    type: dict
    default: {}
requirements:
  - libvirt-python >= 12.1.0 (for libvirt domains)
  - qemu.qmp (for raw QEMU VMs)
notes:
  - Runs on the hypervisor host. Each VM is isolated - its failure is recorded in RV(vms) and the others go on;
    the module then fails, naming each failed VM and why, with every VM's record in the result.
'''
