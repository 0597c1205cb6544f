"""One test body, two backends: how a test names a VM and its disks."""

import re
import subprocess
import time

from .guest import disk_counter, last_serial_counter

# The rig's disks: role -> libvirt target. Raw QEMU names disks by device id (= role).
LIBVIRT_TARGETS = {'root': 'vda', 'data': 'vdb', 'varstore': 'vdc'}


class Target:
    def __init__(self, vm, backend):
        self.vm = vm
        self.backend = backend

    @property
    def conn(self):
        if self.backend == 'qemu':
            return {'qmp_socket': self.vm.qmp_socket}
        return {'domain': self.vm.name}

    def disk(self, role):
        return role if self.backend == 'qemu' else LIBVIRT_TARGETS[role]

    def task(self, module, **args):
        return {'vmfleet.kvm.' + module: dict(self.conn, **args)}

    def pause(self):
        self._control('stop', 'suspend')

    def resume(self):
        self._control('cont', 'resume')

    def _control(self, qmp_cmd, virsh_cmd):
        if self.backend == 'qemu':
            from qemu.qmp.legacy import QEMUMonitorProtocol
            q = QEMUMonitorProtocol(self.vm.qmp_socket)
            q.connect()
            try:
                q.cmd(qmp_cmd)
            finally:
                q.close()
        else:
            subprocess.run(['virsh', '-c', 'qemu:///system', virsh_cmd, self.vm.name], check=True, capture_output=True)

    def counter(self):
        return last_serial_counter(self.vm.serial_log) or 0

    def wait_counter(self, at_least, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            c = self.counter()
            if c >= at_least:
                return c
            time.sleep(0.2)
        raise AssertionError('guest counter did not reach %d (at %s)' % (at_least, self.counter()))

    def counters_after(self, offset):
        with open(self.vm.serial_log, 'rb') as f:
            f.seek(offset)
            text = f.read().decode('utf-8', 'replace')
        return [int(n) for n in re.findall(r'VMFLEET-COUNTER (\d+)', text)]

    def serial_size(self):
        with open(self.vm.serial_log, 'rb') as f:
            return len(f.read())

    def disk_counter(self, role):
        fmt = 'raw' if role == 'varstore' else 'qcow2'
        return disk_counter(self.vm.disk_path(role), fmt)
