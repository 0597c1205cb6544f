# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this host can do, asked of the QEMU and libvirt that will do it,
never inferred from version numbers alone."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ctypes
import os

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import quirks
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing

_SYS_USERFAULTFD = {'x86_64': 323, 'aarch64': 282, 's390x': 355, 'ppc64le': 364}
_UFFDIO_API = 0xC018AA3F
_UFFD_API = 0xAA
_UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0


def userfaultfd_wp():
    """True when the kernel offers userfaultfd write-protect, which
    background-snapshot needs to copy a page before the guest changes it."""
    nr = _SYS_USERFAULTFD.get(os.uname().machine)
    if nr is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        return False
    try:
        api = (ctypes.c_uint64 * 3)(_UFFD_API, 0, 0)
        if libc.ioctl(fd, ctypes.c_ulong(_UFFDIO_API), api) != 0:
            return False
        return bool(api[1] & _UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    finally:
        os.close(fd)


def qmp_facts(execute):
    """Version, migration capabilities and commands of a running QEMU."""
    v = execute('query-version')['qemu']
    return dict(
        version="%d.%d.%d" % (v['major'], v['minor'], v['micro']),
        migrate_caps=sorted(c['capability'] for c in execute('query-migrate-capabilities')),
        commands=sorted(c['name'] for c in execute('query-commands')),
    )


def default_emulator(module):
    path = module.get_bin_path('qemu-system-%s' % os.uname().machine) \
        or module.get_bin_path('qemu-system-x86_64')
    if not path:
        raise CapabilityMissing("no qemu-system binary found on this host",
                                hint="install QEMU (Debian: qemu-system-x86)")
    return path


def host_facts(qemu, libvirt_version=None, libvirt_binding=None):
    """The ``host`` entry of vm_info from QEMU facts and libvirt's version."""
    caps = set(qemu['migrate_caps'])
    cmds = set(qemu['commands'])
    parallel_save = 'multifd' in caps
    if libvirt_version:
        parallel_save = parallel_save and quirks.libvirt_parallel_save(libvirt_version, libvirt_binding)
    return dict(
        qemu_version=qemu['version'],
        libvirt_version=libvirt_version,
        capabilities=dict(
            mapped_ram='mapped-ram' in caps,
            multifd='multifd' in caps,
            background_snapshot='background-snapshot' in caps and userfaultfd_wp(),
            userfaultfd_wp=userfaultfd_wp(),
            parallel_save=parallel_save,
            snapshot_jobs='snapshot-save' in cmds,
            internal_snapshot_revert='snapshot-load' in cmds,
            # where libvirt cannot, the QMP route still reverts
            libvirt_snapshot_revert=bool(libvirt_version) and quirks.libvirt_can_revert(libvirt_version),
        ),
    )
