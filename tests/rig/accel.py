"""Which accelerator the test guests run with. /dev/kvm may exist yet be
unable to boot a stock kernel (nested PVM), so ask a real boot."""

import os
import subprocess
import tempfile
import time

from . import guest

PROBE_SECONDS = 15


def _kvm_usable():
    try:
        fd = os.open('/dev/kvm', os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _boots_with_kvm():
    with tempfile.TemporaryDirectory(prefix='vmfleet-accel-') as tmp:
        log = os.path.join(tmp, 'serial.log')
        proc = subprocess.Popen(
            ['qemu-system-x86_64', '-machine', 'q35', '-accel', 'kvm', '-cpu', 'host',
             '-m', '256', '-smp', '1', '-display', 'none', '-nodefaults', '-no-reboot',
             '-serial', 'file:' + log, '-kernel', guest.KERNEL, '-initrd', guest.INITRD,
             '-append', 'console=ttyS0 quiet panic=-1'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            end = time.monotonic() + PROBE_SECONDS
            while time.monotonic() < end and proc.poll() is None:
                try:
                    guest.wait_serial(log, r'VMFLEET-(BOOT|COUNTER)', 0.5)
                    return True
                except TimeoutError:
                    pass
            return False
        finally:
            proc.kill()
            proc.wait()


def detect_accel():
    """'kvm' or 'tcg'. ``VMFLEET_ACCEL`` overrides; the probe's answer is
    cached in GUEST_DIR/accel for the kernel it booted."""
    forced = os.environ.get('VMFLEET_ACCEL')
    if forced:
        return forced
    guest.build_guest()
    cache = os.path.join(guest.GUEST_DIR, 'accel')
    key = str(os.stat(guest.KERNEL).st_mtime_ns)
    try:
        with open(cache) as f:
            cached_key, answer = f.read().split()
        if cached_key == key and answer in ('kvm', 'tcg'):
            return answer
    except (OSError, ValueError):
        pass
    answer = 'kvm' if _kvm_usable() and _boots_with_kvm() else 'tcg'
    with open(cache + '.tmp', 'w') as f:
        f.write('%s %s\n' % (key, answer))
    os.replace(cache + '.tmp', cache)
    return answer
