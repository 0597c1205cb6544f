# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading disk images from the host side with qemu-img."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

from ansible_collections.vmfleet.kvm.plugins.module_utils.exceptions import CapabilityMissing, VmfleetError


def qemu_img(module):
    path = module.get_bin_path('qemu-img')
    if not path:
        raise CapabilityMissing("qemu-img is not installed on this host",
                                hint="install the qemu-utils package")
    return path


def image_info(module, path, fmt=None):
    """``qemu-img info`` of an image, shared-locked so it works while QEMU runs."""
    argv = [qemu_img(module), 'info', '-U', '--output=json']
    if fmt:
        argv += ['-f', fmt]
    rc, out, err = module.run_command(argv + [path])
    if rc != 0:
        raise VmfleetError("cannot read image %s: %s" % (path, err.strip()))
    return json.loads(out)
