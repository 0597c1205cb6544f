# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU's migration machinery (capabilities, parameters, the migrate job) as
save, restore and instant snapshots use it to move a VM's RAM to or from a
file. Not to be confused with storage migration (drive_mirror) or with
moving a VM between hosts."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import JobFailed, OperationTimeout
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import poll_until

ACTIVE = ('setup', 'active', 'device', 'pre-switchover', 'wait-unplug', 'postcopy-active',
          'postcopy-paused', 'postcopy-recover-setup', 'postcopy-recover', 'colo', 'cancelling')


# Capabilities that change the shape of QEMU's migration stream. A save or a
# restore leaves them set on the process, and QEMU 10 then crashes in
# snapshot-save (multifd + mapped-ram): whoever streams next clears them.
STREAM_CAPS = ('multifd', 'mapped-ram', 'background-snapshot', 'xbzrle', 'postcopy-ram', 'postcopy-preempt')


# QEMU throttles a migration to 128 MiB/s unless told otherwise; a save to
# local storage or a snapshot wants the disk's speed, as libvirt asks for its saves.
NO_BANDWIDTH_LIMIT = ((1 << 63) - 1) >> 20 << 20


# Without it QEMU announces no migration state change and wait() learns of a
# finished save or restore only at its next poll, up to 0.2 s late.
WAKE_CAPS = {'events': True}


def unthrottle(vm):
    vm.qmp('migrate-set-parameters', **{'max-bandwidth': NO_BANDWIDTH_LIMIT})


def clear_stream_caps(vm):
    on = [c['capability'] for c in vm.qmp('query-migrate-capabilities')
          if c['state'] and c['capability'] in STREAM_CAPS]
    if on:
        set_capabilities(vm, dict.fromkeys(on, False))


def set_capabilities(vm, caps):
    vm.qmp('migrate-set-capabilities',
           capabilities=[{'capability': k, 'state': bool(v)} for k, v in sorted(caps.items())])


def configure(vm, caps, params, direct_io=False):
    """Set capabilities and parameters from any previous state. QEMU checks
    each against the other (mapped-ram refuses compression), so mapped-ram
    goes off first (with every stream capability an earlier run left on),
    then the parameters, then the capabilities wanted. ``direct_io``: read
    or write a mapped-ram file with O_DIRECT if this QEMU can (>= 9.1);
    returns whether it will."""
    clear_stream_caps(vm)
    # parameters persist too: a zstd restore leaves multifd-compression set, which mapped-ram refuses
    # and a migration's TLS credentials (vm_migrate tls) are never left on for the next one
    wanted = {'multifd-compression': 'none', 'max-bandwidth': NO_BANDWIDTH_LIMIT, 'tls-creds': '', 'tls-hostname': ''}
    if 'direct-io' in vm.qmp('query-migrate-parameters'):
        wanted['direct-io'] = bool(direct_io)
    wanted.update(params or {})
    vm.qmp('migrate-set-parameters', **wanted)
    set_capabilities(vm, dict(caps, **WAKE_CAPS))
    return wanted.get('direct-io', False)


def wait(vm, deadline, what, on_progress=None):
    """Poll query-migrate until completed; fail with QEMU's reason, or time out
    (the caller decides whether to cancel)."""
    seen = {}

    def probe():
        info = seen['info'] = vm.qmp('query-migrate', _timeout=deadline.remaining(1.0))
        status = info.get('status', 'none')
        if on_progress:
            on_progress(info)
        if status == 'completed':
            return info
        if status in ('failed', 'cancelled'):
            raise JobFailed("%s %s: %s" % (what, status, info.get('error-desc', 'QEMU gave no reason')))
        return None

    def timed_out():
        status = seen['info'].get('status', 'none')
        ram = seen['info'].get('ram', {})
        return OperationTimeout("%s did not finish within %gs (status %s, %d of %d bytes)"
                                % (what, deadline.timeout, status, ram.get('transferred', 0), ram.get('total', 0)),
                                migration_status=status)

    return poll_until(probe, deadline, timed_out, interval=0.2, wait=vm.wait_event)


def cancel(vm):
    try:
        vm.qmp('migrate_cancel')
    except Exception:  # nothing to cancel, or QEMU gone: the caller reports the first error
        pass
