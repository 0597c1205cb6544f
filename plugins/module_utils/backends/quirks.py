# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt and QEMU versions whose behaviour the collection works
around or relies on: the one table, read by the backends and vm_info."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

# libvirt 11.2 and 11.3 cannot revert internal snapshots in some
# configurations (fixed in 11.4): there the revert goes through QEMU's job.
LIBVIRT_SNAPSHOT_REVERT_BROKEN = ((11, 2, 0), (11, 4, 0))
# virDomainSaveParams with parallel channels came with libvirt 11.2; older
# libvirt-python bindings lack the constant and send the parameter wrongly.
LIBVIRT_PARALLEL_SAVE = (11, 2, 0)
LIBVIRT_PARALLEL_SAVE_CONSTANT = 'VIR_DOMAIN_SAVE_PARAM_PARALLEL_CHANNELS'
# QEMU's direct-io migration parameter came with 9.1: without it libvirt
# refuses VIR_DOMAIN_SAVE_BYPASS_CACHE on a sparse image.
QEMU_DIRECT_IO = (9, 1, 0)


def version_tuple(v):
    """(major, minor, micro) from libvirt's packed integer or a dotted string."""
    if isinstance(v, int):
        return (v // 1000000, (v // 1000) % 1000, v % 1000)
    return tuple(int(x) for x in v.split('.')[:3])


def version_string(v):
    return "%d.%d.%d" % version_tuple(v)


def libvirt_can_revert(libvirt_version):
    low, high = LIBVIRT_SNAPSHOT_REVERT_BROKEN
    return not (low <= version_tuple(libvirt_version) < high)


def libvirt_parallel_save(libvirt_version, binding):
    return version_tuple(libvirt_version) >= LIBVIRT_PARALLEL_SAVE and \
        hasattr(binding, LIBVIRT_PARALLEL_SAVE_CONSTANT)


def qemu_direct_io(qemu_version):
    return version_tuple(qemu_version) >= QEMU_DIRECT_IO
