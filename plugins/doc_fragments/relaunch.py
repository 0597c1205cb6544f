# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Paired with RELAUNCH_ARGS in plugins/module_utils/common/arg_specs.py: the modules that start a raw
    # QEMU again from its command line (a restore, a revert, a migration's destination) or record it for that.
    DOCUMENTATION = r'''
options:
  allow_exec_options:
    description:
      - A raw QEMU VM (O(qmp_socket)) is started again from its command line - by M(vmfleet.kvm.vm_restore),
        by the revert of an instant snapshot, at a migration's destination - as the user its QEMU ran as. The
        command line is checked before the VM stops. One with an option that makes QEMU run another program
        (C(-netdev tap) without C(script=no,downscript=no), C(helper=), C(-netdev bridge), C(-run-with),
        C(-plugin), C(-readconfig)) is refused, naming the option, unless this is V(true).
      - Set it only for a VM you started with such an option yourself; the relaunch runs that program again.
      - Whatever its value, the command line is used only when its program is the QEMU process's own
        C(qemu-system-*) binary, owned by root (or by the user QEMU runs as) and writable by no one else.
    type: bool
    default: false
    version_added: 1.1.0
'''
