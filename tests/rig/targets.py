"""One test body, two backends: how a test names a VM and its disks."""

import time

from .guest import disk_counter, last_serial_counter, serial_counters
from .libvirt_guest import LibvirtGuest
from .qmp import qmp

# The backends, as test ids name them: a bare qemu-system-x86_64 (QemuGuest) and a libvirt domain (LibvirtGuest).
BACKENDS = ('qemu', 'libvirt')

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

    def qmp(self, command, **args):
        """One QMP command to a raw QEMU VM."""
        assert self.backend == 'qemu', 'QMP is for raw QEMU VMs; a libvirt domain is driven with virsh'
        return qmp(self.vm.qmp_socket, command, **args)

    def pause(self):
        self._control('stop', 'suspend')

    def resume(self):
        self._control('cont', 'resume')

    def _control(self, qmp_cmd, virsh_cmd):
        if self.backend == 'qemu':
            self.qmp(qmp_cmd)
        else:
            self.vm.virsh(virsh_cmd, self.vm.name)

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

    def wait_disk_counter(self, role, at_least, timeout=60):
        """Wait until the guest wrote at least ``at_least`` to disk ``role``; the value read."""
        end = time.time() + timeout
        while time.time() < end:
            c = self.disk_counter(role)
            if c >= at_least:
                return c
            time.sleep(0.2)
        raise AssertionError('disk %s counter did not reach %d (at %s)' % (role, at_least, self.disk_counter(role)))

    def counters_after_going_back(self, offset, last, timeout=180):
        """After a revert: the counters the guest printed from where its sequence fell back
        below ``last`` (the guest may print a few more before it), once three are there.
        The bound is generous: a loaded host's TCG guest ticks several times slower."""
        end = time.time() + timeout
        while time.time() < end:
            seen = [last] + self.counters_after(offset)
            drops = [i for i in range(1, len(seen)) if seen[i] < seen[i - 1]]
            if drops and len(seen) - drops[0] >= 3:
                assert len(drops) == 1, seen
                return seen[drops[0]:]
            time.sleep(0.3)
        raise AssertionError('the guest counter never went back: %s' % self.counters_after(offset))

    def counters_after(self, offset):
        return serial_counters(self.vm.serial_log, offset)

    def serial_size(self):
        with open(self.vm.serial_log, 'rb') as f:
            return len(f.read())

    def disk_counter(self, role):
        fmt = 'raw' if self.vm.disk_path(role).endswith('.raw') else 'qcow2'
        return disk_counter(self.vm.disk_path(role), fmt)


def host_targets(host):
    """A Target for each VM the rig runs on ``host`` (a simulated hypervisor)."""
    return [Target(vm, 'libvirt' if isinstance(vm, LibvirtGuest) else 'qemu') for vm in host.vms]


def assert_consecutive(counters):
    """The guest counted on without a gap or a step back."""
    steps = [b - a for a, b in zip(counters, counters[1:])]
    assert steps and all(s == 1 for s in steps), counters
