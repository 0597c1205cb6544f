# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""drive_mirror's driver for libvirt: virDomainBlockCopy, then
virDomainBlockJobAbort with PIVOT, and the persistent definition pointed at
the copy. The engine is drive_mirror.py."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import xml.etree.ElementTree as ET

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.mirror_driver import MirrorDriver
from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.journal import same_file
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import JobFailed, OperationTimeout
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import poll_until

try:
    import libvirt
except ImportError:  # LibvirtVm reports the missing library before a driver is made
    libvirt = None

POLL_S = 0.25


class LibvirtMirrorDriver(MirrorDriver):
    """libvirt: virDomainBlockCopy, virDomainBlockJobAbort (PIVOT)."""

    route = 'libvirt'
    keeps_config = True
    silent_failure = 'the job ended without an error message (libvirt reports it only in its log)'

    def __init__(self, vm):
        super(LibvirtMirrorDriver, self).__init__(vm)
        self.dom = vm.dom

    def _disk_el(self, disk, inactive=False):
        for el in self.vm.xml(inactive=inactive).findall('./devices/disk'):
            t = el.find('target')
            if t is not None and t.get('dev') == disk.name:
                return el
        return None

    def _mirror_el(self, disk):
        el = self._disk_el(disk)
        return el.find('mirror') if el is not None else None

    def job(self, disk, job_id=None):
        info = self.vm._call('reading the block job of %s' % disk.name, self.dom.blockJobInfo, disk.name, 0)
        if not info:
            return None
        if info.get('type') != libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY:
            return dict(id='%s:%s' % (disk.name, info.get('type')), foreign=True, len=info.get('end', 0),
                        offset=info.get('cur', 0), ready=False, status='running', error=None,
                        speed=info.get('bandwidth'))
        mirror = self._mirror_el(disk)
        ready = mirror is not None and mirror.get('ready') == 'yes'
        return dict(id='%s:copy' % disk.name, len=info.get('end', 0), offset=info.get('cur', 0), ready=ready,
                    status='ready' if ready else 'running', error=None, speed=info.get('bandwidth'))

    def job_target(self, disk):
        mirror = self._mirror_el(disk)
        if mirror is None:
            return None
        src = mirror.find('source')
        return (src.get('file') if src is not None else None) or mirror.get('file')

    def start(self, disk, target, fmt, sync, copy_mode, speed, granularity, buf_size, backing_node=None):
        root = ET.Element('disk', type='file')
        ET.SubElement(root, 'driver', type=fmt)
        ET.SubElement(root, 'source', file=target)
        # We create the target ourselves (qemu-img), so libvirt reuses it.
        flags = libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
        if self.vm._call('reading persistence', self.dom.isPersistent):
            # libvirt refuses a copy on a persistent domain unless the job is
            # transient ("domain is not transient"); the persistent definition
            # is then updated by us after the pivot (and recorded).
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
        if sync == 'top':
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW
        if copy_mode == 'write-blocking':
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES
        params = {}
        if speed:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH] = int(speed)
        if granularity:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_GRANULARITY] = int(granularity)
        if buf_size:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_BUF_SIZE] = int(buf_size)
        self.vm._call('starting the copy of disk %s' % disk.name, self.dom.blockCopy, disk.name,
                      ET.tostring(root, encoding='unicode'), params, flags)
        return '%s:copy' % disk.name

    def set_speed(self, job, speed):
        disk = job['id'].split(':')[0]
        self.vm._call('setting the copy speed', self.dom.blockJobSetSpeed, disk, int(speed or 0),
                      libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES)

    def complete(self, disk, job, deadline):
        # synchronous: returns once libvirt (and QEMU) switched the disk
        self.vm._call('switching disk %s to its copy' % disk.name, self.dom.blockJobAbort, disk.name,
                      libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        return None

    def cancel(self, disk, job, deadline):
        self.vm._call('cancelling the copy of disk %s' % disk.name, self.dom.blockJobAbort, disk.name, 0)
        try:
            poll_until(lambda: True if self.job(disk) is None else None, deadline, interval=POLL_S,
                       on_timeout=lambda: OperationTimeout("the copy of disk %s did not end after its cancel" % disk.name))
        except OperationTimeout:
            pass  # the caller reads the job again and reports what it finds
        return None

    def config_source(self, disk):
        """The disk's source in the persistent definition, or None for a transient domain."""
        if not self.vm._call('reading persistence', self.dom.isPersistent):
            return None
        el = self._disk_el(disk, inactive=True)
        src = el.find('source') if el is not None else None
        return (src.get('file') or src.get('dev')) if src is not None else None

    def update_config(self, disk, target, fmt):
        """Point the persistent definition's disk at ``target``. True if changed."""
        if not self.vm._call('reading persistence', self.dom.isPersistent):
            return False
        root = self.vm.xml(inactive=True)
        for el in root.findall('./devices/disk'):
            t = el.find('target')
            if t is None or t.get('dev') != disk.name:
                continue
            src = el.find('source')
            if src is not None and same_file(src.get('file'), target):
                return False
            if src is None:
                src = ET.SubElement(el, 'source')
            for k in list(src.attrib):
                if k != 'file':
                    del src.attrib[k]
            src.set('file', target)
            el.set('type', 'file')
            drv = el.find('driver')
            if drv is None:
                drv = ET.SubElement(el, 'driver', name='qemu')
            drv.set('type', fmt)
            # the old image's backing chain does not describe the new one
            for bs in el.findall('backingStore'):
                el.remove(bs)
            self.vm._call('updating the persistent definition', self.vm.conn.defineXML,
                          ET.tostring(root, encoding='unicode'))
            return True
        return False

    def pause(self):
        self.vm._call('pausing the guest', self.dom.suspend)

    def resume(self):
        self.vm._call('resuming the guest', self.dom.resume)

    def nodes_for_verify(self, disk, target):
        mirror = self._mirror_el(disk)
        src = mirror.find('source') if mirror is not None else None
        if src is None or not src.get('index'):
            raise JobFailed("cannot verify disk %s: libvirt does not show the copy's node" % disk.name)
        return disk.node_name, 'libvirt-%s-format' % src.get('index')
