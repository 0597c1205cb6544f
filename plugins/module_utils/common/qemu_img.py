# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every qemu-img call of the collection: images read and changed from the
host side, as argument lists, never through a shell."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing, VmfleetError


def qemu_img_path(module):
    path = module.get_bin_path('qemu-img')
    if not path:
        raise CapabilityMissing("qemu-img is not installed on this host",
                                hint="install the qemu-utils package")
    return path


def _run(module, args):
    return module.run_command([qemu_img_path(module)] + list(args))


def image_info(module, path, fmt, chain=False):
    """``qemu-img info`` of an image, shared-locked so it works while QEMU runs.
    With ``chain``, a list: the image and every backing file below it. ``fmt`` is
    the format QEMU or libvirt says the disk has, never probed: a guest that wrote
    a qcow2 header on its raw disk would name a backing file root's qemu-img opens."""
    args = ['info', '-U', '--output=json', '-f', fmt]
    if chain:
        args.append('--backing-chain')
    rc, out, err = _run(module, args + [path])
    if rc != 0:
        raise VmfleetError("cannot read image %s: %s" % (path, err.strip()))
    info = json.loads(out)
    if chain and isinstance(info, dict):
        info = [info]
    return info


def snapshot(module, action, name, path, hint="the image may be in use by another process"):
    """``qemu-img snapshot`` with ``action`` one of -c (create), -d (delete), -a (apply).
    Internal snapshots live in qcow2 images only (vm_handle.SNAPSHOT_FORMATS): never probed."""
    rc, out, err = _run(module, ['snapshot', '-f', 'qcow2', action, name, path])
    if rc != 0:
        raise VmfleetError("qemu-img snapshot %s %s on %s failed: %s" % (action, name, path, err.strip()), hint=hint)


def create(module, path, fmt, size, backing=None, backing_fmt=None, unsafe=False):
    """``unsafe``: the backing image is not opened (a running QEMU holds its lock; ``size`` is given)."""
    args = ['create', '-q', '-f', fmt]
    if backing:
        args += ['-b', backing, '-F', backing_fmt or 'qcow2']
        if unsafe:
            args.append('-u')
    rc, out, err = _run(module, args + [path, str(size)])
    if rc != 0:
        raise VmfleetError("cannot create image %s: %s" % (path, err.strip()))


def _unlocked(path, fmt):
    return 'driver=%s,file.driver=file,file.filename=%s,file.locking=off' % (fmt, path.replace(',', ',,'))


def compare_unlocked(module, a, a_fmt, b, b_fmt):
    """``qemu-img compare`` of two images without taking their locks (the
    caller made sure nothing writes them). Returns (rc, output): rc 0 equal,
    1 different, anything else an error."""
    rc, out, err = _run(module, ['compare', '--image-opts', _unlocked(a, a_fmt), _unlocked(b, b_fmt)])
    return rc, (out + err).strip()
