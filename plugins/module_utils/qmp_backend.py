# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw QEMU backend: a VM that only its QMP socket reaches."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import socket
import stat
import struct

from ansible_collections.vmfleet.kvm.plugins.module_utils.exceptions import (
    CapabilityMissing, ConnectionFailed,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.jobs import mirror_job_id
from ansible_collections.vmfleet.kvm.plugins.module_utils.qmp_client import (
    HAS_QMP, QMP_IMPORT_ERROR, QmpClient,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.vm import (
    Disk, ImageSnapshot, VmHandle,
)

# QMP RunState -> the state names libvirt users know.
_STATES = {
    'running': 'running', 'paused': 'paused', 'prelaunch': 'paused',
    'inmigrate': 'paused', 'postmigrate': 'paused', 'finish-migrate': 'paused',
    'save-vm': 'paused', 'restore-vm': 'paused', 'suspended': 'paused',
    'shutdown': 'shutoff', 'guest-panicked': 'crashed', 'internal-error': 'crashed',
    'io-error': 'paused', 'watchdog': 'paused', 'debug': 'paused', 'colo': 'running',
}


def _disk_name(dev):
    """qdev id of the device (``/machine/peripheral/<id>/...``), else the legacy
    drive id, else the node name: the name an operator gave the disk."""
    qdev = dev.get('qdev') or ''
    parts = qdev.strip('/').split('/')
    if len(parts) >= 3 and parts[1] == 'peripheral':
        return parts[2]
    if qdev and not qdev.startswith('/'):
        return qdev
    return dev.get('device') or dev['inserted'].get('node-name')


class QmpVm(VmHandle):
    backend = 'qemu'

    def __init__(self, module, socket_path, client):
        super(QmpVm, self).__init__(module, None)
        self.socket_path = socket_path
        self.client = client
        self.name = self._vm_name()

    @classmethod
    def open(cls, module, socket_path, timeout):
        if not HAS_QMP:
            from ansible.module_utils.basic import missing_required_lib
            raise CapabilityMissing(missing_required_lib('qemu.qmp'), exception=QMP_IMPORT_ERROR)
        try:
            mode = os.stat(socket_path).st_mode
        except OSError as e:
            raise ConnectionFailed(
                "QMP socket %s does not exist (%s)" % (socket_path, e.strerror),
                hint="check the path and that the QEMU process is running")
        if not stat.S_ISSOCK(mode):
            raise ConnectionFailed("%s is not a UNIX socket" % socket_path,
                                   hint="qmp_socket must be the path given to QEMU's '-qmp unix:PATH,server=on'")
        client = QmpClient('vmfleet').connect(socket_path, min(float(timeout), 30.0))
        return cls(module, socket_path, client)

    def _vm_name(self):
        try:
            name = self.client.execute('query-name').get('name')
        except Exception:
            name = None
        # An unnamed QEMU is known by its socket.
        return name or os.path.basename(self.socket_path)

    def close(self):
        self.client.close()

    def qmp(self, command, _timeout=60.0, **args):
        return self.client.execute(command, args, timeout=_timeout)

    def wait_event(self, timeout):
        return self.client.wait_event(timeout)

    def state(self):
        return _STATES.get(self.qmp('query-status')['status'], 'unknown')

    def disks(self):
        out = []
        for dev in self.qmp('query-block'):
            ins = dev.get('inserted')
            if not ins:
                continue
            image = ins.get('image', {})
            out.append(Disk(
                name=_disk_name(dev), node_name=ins.get('node-name'), file=ins.get('file'),
                fmt=ins.get('drv'), virtual_size=image.get('virtual-size'), read_only=ins.get('ro', False),
                snapshots=[ImageSnapshot.from_qemu(s) for s in image.get('snapshots', [])]))
        return out

    def block_jobs(self):
        # QEMU names a blockdev job by its job id, not by the disk: drive_mirror's ids
        # (vmfleet-mirror-<disk>) lead back to the disk, a node or device name is the disk
        names = {}
        for d in self.disks():
            names.update({d.node_name: d.name, d.name: d.name, mirror_job_id(d.name): d.name})
        return [dict(disk=names.get(j.get('device'), j.get('device')), job=j.get('device'), type=j.get('type'),
                     status=j.get('status'), bytes_total=j.get('len'), bytes_done=j.get('offset'),
                     speed=j.get('speed'), ready=j.get('ready'))
                for j in self.qmp('query-block-jobs')]

    def qemu_version(self):
        v = self.qmp('query-version')['qemu']
        return "%d.%d.%d" % (v['major'], v['minor'], v['micro'])

    def pid(self):
        return peer_pid(self.socket_path)


def peer_pid(socket_path):
    """PID of the process listening on a UNIX socket, from the kernel's peer
    credentials: a connection QEMU has not accepted yet still carries them."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(socket_path)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize('3i'))
        return struct.unpack('3i', creds)[0]
    except OSError:
        return None
    finally:
        s.close()
