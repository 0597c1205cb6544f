# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Paired with CONNECTION_ARGS in plugins/module_utils/common/arg_specs.py.
    DOCUMENTATION = r'''
author:
  - vmfleet.kvm contributors (@vmfleet)
attributes:
  check_mode:
    support: full
    description: Predicts what the module would do; changes nothing.
  platform:
    support: full
    platforms: posix
    description: Runs on a Linux hypervisor host (the target of the task), next to QEMU and libvirtd.
options:
  domain:
    description:
      - Name or UUID of the libvirt domain to act on.
      - Mutually exclusive with O(qmp_socket).
    type: str
  uri:
    description:
      - libvirt connection URI used with O(domain), or to list domains.
    type: str
    default: qemu:///system
  qmp_socket:
    description:
      - Path of the QMP UNIX socket of a QEMU process that no libvirt manages.
      - QEMU serves one QMP client at a time; the module fails with a clear
        message if another client holds the socket.
      - Mutually exclusive with O(domain).
    type: path
  timeout:
    description:
      - Seconds the whole operation may take, connection included.
      - When it runs out the module fails and says what was left running.
      - A module that changes the VM first takes the VM's lock on the host (one change at a time per VM,
        whichever run asks), waiting for it within this timeout; when another run holds it all that time,
        the module fails naming that run's process and what it does, and touches nothing.
    type: float
    default: 300.0
requirements:
  - libvirt-python >= 12.1.0 (for O(domain) and O(uri))
  - qemu.qmp (for O(qmp_socket))
notes:
  - Runs on the hypervisor host, which must reach libvirtd or the QMP socket.
'''
