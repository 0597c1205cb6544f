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
# virDomainQemuMonitorCommandWithFiles (an fd handed to QEMU through libvirt's
# monitor: getfd for an instant snapshot's memory file) came with libvirt 8.2.
LIBVIRT_MONITOR_FILES = (8, 2, 0)
LIBVIRT_MONITOR_FILES_CALL = 'qemuMonitorCommandWithFiles'
# libvirt's external snapshots, step by step: creating one (disk-only or with an
# external memory file) is old; deleting one (block commit, and pivot for the active
# layer) came with 9.0, reverting to one (QEMU restarted on fresh overlays) with 9.7.
LIBVIRT_EXTERNAL_STEPS = (('create', (1, 2, 0)), ('delete', (9, 0, 0)), ('revert', (9, 7, 0)))


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


def libvirt_instant_missing(libvirt_version, binding_qemu, uri):
    """Why libvirt cannot take an instant snapshot of a domain (None when it can):
    the memory file's fd goes to QEMU through libvirt's monitor, which needs
    libvirt >= 8.2, a binding that has the call, and a local connection (an fd
    does not cross hosts, and the file must be where libvirt restores it)."""
    if version_tuple(libvirt_version) < LIBVIRT_MONITOR_FILES:
        return "libvirt %s cannot hand QEMU a file descriptor (libvirt >= %s is needed)" % (
            version_string(libvirt_version), "%d.%d.%d" % LIBVIRT_MONITOR_FILES)
    if not hasattr(binding_qemu, LIBVIRT_MONITOR_FILES_CALL):
        return "this libvirt-python lacks libvirt_qemu.%s (libvirt-python >= 8.2 is needed)" % (
            LIBVIRT_MONITOR_FILES_CALL)
    if '://' in uri and uri.split('://', 1)[1].split('/', 1)[0]:
        return "the connection %s is remote; run the task on the domain's host with a local uri" % uri
    return None


def libvirt_external_missing(libvirt_version):
    """Why this libvirt cannot run an external snapshot's whole cycle (create, revert,
    delete), naming each step it lacks and the version that has it; None when it can."""
    have = version_tuple(libvirt_version)
    lacking = ["%s needs libvirt >= %d.%d.%d" % ((step,) + need) for step, need in LIBVIRT_EXTERNAL_STEPS
               if have < need]
    if not lacking:
        return None
    return "libvirt %s cannot run an external snapshot's cycle: %s" % (
        version_string(libvirt_version), ", ".join(lacking))
