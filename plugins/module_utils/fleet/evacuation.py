# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Evacuating a hypervisor by live migration, and bringing its VMs back: the
pipelines of fleet_maintenance's phases ``evacuate``, ``send_back`` and
``return``, one VM each, as fleet.FleetRun runs them.

Evacuate runs on the host going into maintenance: each VM goes live to the
destination fleet_spread gives it and is recorded in
``<save_dir>/evacuated-vms.json`` the moment it runs there; one that cannot
move (no room anywhere, the migration failed and it runs on here) is saved
instead, as the save phase does. Send-back runs on each host holding
evacuated VMs (a raw QEMU VM can only be moved from the host it runs on) and
moves them home. Return runs on the maintained host again: it checks each
VM of the record runs here, forgets those that do and restores the saved
ones."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import threading

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import (
    available_memory, destination_key, destination_uris, open_vm, prefetch_connection, shared_connections,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import addresses
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    ConnectionFailed, JobFailed, VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.policy import fleet_record, fleet_spread
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.workflows import save_vm_state
from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.vm_migration import migrate
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline

EVACUATED_VMS = 'evacuated-vms.json'
MIB = 1024 * 1024
# how long reading a destination's free memory may take
MEMINFO_TIMEOUT = 30.0
# what a migration result keeps in the VM's report
MIGRATION_KEYS = ('route', 'mode', 'why', 'downtime_ms', 'bytes', 'duration_s', 'rate_mib_s', 'destination_qmp_socket',
                  'tls')


def host_address(h):
    """A destination (or home) with both its URIs: libvirt's for domains, SSH's for raw QEMU VMs.
    ``h``: name, and optionally address, user, libvirt_uri, ssh_uri, free_mib. Inventory values:
    checked (plain user and host, no query string), as root acts on them."""
    uris = destination_uris(h.get('address') or h['name'], h.get('user'))
    for key in uris:
        if h.get(key):
            addresses.parse(h[key], '%s of host %s' % (key, h['name']), plain=True)
            uris[key] = h[key]
    return dict(uris, name=h['name'], free_mib=h.get('free_mib'))


def _measure(d):
    try:
        avail = available_memory(d['ssh_uri'], Deadline(MEMINFO_TIMEOUT))
    except VmfleetError as e:
        d['error'] = e.message
    except Exception as e:  # a bug of ours: raised by start_measuring's figures, as it would be without the thread
        d['bug'] = e
    else:
        d['free_mib'] = avail // MIB if avail is not None else None
        if avail is None:
            d['error'] = 'its /proc/meminfo gives no MemAvailable: give its free_mib'


def start_measuring(destinations):
    """Each destination's free memory (as given, or MemAvailable read over SSH), or an ``error``
    saying why it cannot take VMs: returns at once a function that waits for the figures and gives
    them. All read at once, while the host's VMs are listed: one SSH connection each, a few tenths
    of a second, would add up over a row of destinations and come before any VM moves."""
    out = [host_address(d) for d in destinations or []]
    threads = [threading.Thread(target=_measure, args=(d,), name='meminfo %s' % d['name'])
               for d in out if d['free_mib'] is None]
    for t in threads:
        t.daemon = True
        t.start()

    def figures():
        for t in threads:
            t.join()  # each within MEMINFO_TIMEOUT
        for d in out:
            if 'bug' in d:
                raise d['bug']
        return out
    return figures


def start_connecting(run, destinations):
    """The libvirt connections to every destination, opened in the background while the host's VMs
    are listed and the destinations measured (within shared_connections, the migrations take them)."""
    if not run.check_mode and run.p['uri']:
        for d in destinations or []:
            prefetch_connection(host_address(d)['libvirt_uri'], run.deadline)


def memory_mib(run, target):
    """The VM's memory size in MiB."""
    with open_vm(run.module, run.conn(target)) as vm:
        return vm.memory_bytes() // MIB


def plan_evacuation(run, targets, measuring):
    """Where each target goes: {vm name: destination}, {vm name: why it goes nowhere}, and the
    destinations as measured (for the report). ``measuring``: what start_measuring returned."""
    measured = measuring()
    sizes, unplaced = [], {}
    for t in targets:
        try:
            sizes.append(dict(name=t['name'], memory_mib=memory_mib(run, t)))
        except VmfleetError as e:
            unplaced[t['name']] = 'its memory size could not be read: %s' % e.message
    plan = fleet_spread(sizes, measured, run.p['reserve_mib'])
    by_name = dict((d['name'], d) for d in measured)
    placed = dict((vm, by_name[dest]) for vm, dest in plan['placed'].items())
    refused = ['%s (%s)' % (d['name'], d.get('error') or 'free memory unknown')
               for d in measured if d.get('error') or d['free_mib'] is None]
    for u in plan['unplaced']:
        unplaced[u['vm']] = u['reason'] + ('; refused: %s' % ', '.join(refused) if refused else '')
    return placed, unplaced, [dict((k, d.get(k)) for k in ('name', 'free_mib', 'error')) for d in measured]


def _migration_params(run, connection, destination_uri, destination_qmp_socket=None):
    p = run.p
    return dict(run.conn(dict(connection=connection)), destination_uri=destination_uri,
                destination_qmp_socket=destination_qmp_socket, destination_python=None, migration_address=None,
                storage=p['storage'], destination_dir=p['destination_dir'], persistent=True, undefine_source=True,
                bandwidth_mib_s=p['bandwidth_mib_s'], max_downtime_ms=p['max_downtime_ms'],
                parallel_connections=p['parallel_connections'], auto_converge=p['auto_converge'],
                postcopy=p['postcopy'], tls=p.get('tls', False), tls_dir=p.get('tls_dir'),
                # a raw QEMU's snapshot files move with it (migrate/snapshot_files.py); None: the defaults
                journal_dir=p.get('journal_dir'), memory_dir=p.get('memory_dir'))


def _kept(result):
    return dict((k, result[k]) for k in MIGRATION_KEYS if result.get(k) is not None)


def evacuate_host(run):
    """The evacuate phase: every running VM of this host to a destination (or saved); its result."""
    p = run.p
    with shared_connections():
        # both while the VMs are listed, before the first one moves
        measuring = start_measuring(p['destinations'])
        start_connecting(run, p['destinations'])
        targets, records = run.select(detail=False)  # a VM moves whole: its disks need no reading
        run.placed, run.unplaced, measured = plan_evacuation(run, targets, measuring)
        run.run(targets, evacuate_vm, earlier_evacuations(run.evacuated, run.saved, targets, records))
    return run.result(destinations=measured)


def evacuate_vm(run, target, record):
    """Move the VM live to its destination and record it there; when it cannot move and runs on
    here, save it instead (``fallback: save``), the record saying why."""
    dest = run.placed.get(target['name'])
    if dest is None:
        why = run.unplaced.get(target['name'], 'no destination was planned for it')
    else:
        record['destination'] = dest['name']
        conn = target['connection']
        sock = conn.get('qmp_socket')  # a raw QEMU's moves to the same path, or into destination_qmp_dir
        dest_sock = os.path.join(run.p['destination_qmp_dir'], os.path.basename(sock)) \
            if sock and run.p['destination_qmp_dir'] else sock
        params = _migration_params(run, conn, dest[destination_key(target['backend'])], dest_sock)
        try:
            r = migrate(run.module, params)
        except VmfleetError as e:
            # past postcopy's switch, or any failure leaving the VM not running here, saving is no rescue
            if run.p['fallback'] != 'save' or run.state_of(target) != 'running':
                raise
            why = 'its migration to %s failed: %s' % (dest['name'], e.message)
        else:
            record.update(_kept(r), changed=r['changed'], msg='migrated to %s' % dest['name'])
            if not run.check_mode:
                run.evacuated.put(dict(vm=target['name'], backend=target['backend'], connection=conn,
                                       destination=dict((k, dest[k]) for k in ('name', 'libvirt_uri', 'ssh_uri')),
                                       destination_qmp_socket=params['destination_qmp_socket'], home=run.p['home']))
            return
    if run.p['fallback'] != 'save':
        raise JobFailed('not moved: %s' % why, hint='free memory at a destination, add one, or set fallback: save')
    record['destination'] = None
    save_vm_state(run, target, record)
    record.update(saved_instead=why, msg='saved instead of migrated: %s' % why)


def earlier_evacuations(evacuated, saved, targets, records):
    """An evacuation re-run: the VMs an earlier run moved or saved (no longer running here) are
    done, not missing (their raw QEMU sockets no longer answer here)."""
    running = [t['name'] for t in targets]
    keys = evacuated.keys() + saved.keys()
    done = [fleet_record(v, 'ok', 'moved to %s by an earlier run' % v['destination']['name'],
                         dict(destination=v['destination']['name'])) for v in evacuated.vms if v['vm'] not in running]
    done += [fleet_record(v, 'ok', 'saved by an earlier run') for v in saved.vms if v['vm'] not in running]
    return done + [r for r in records if r['vm'] not in keys]


# -- send_back, on a host holding evacuated VMs --
def evacuated_as_targets(entries):
    """The record's entries (of the VMs this host holds), in the shape FleetRun works on, reached
    where they run now."""
    out = []
    for e in entries:
        if e.get('destination_qmp_socket'):
            conn = dict(qmp_socket=e['destination_qmp_socket'])
        else:
            conn = dict(domain=e['connection']['domain'])
        out.append(dict(name=e['vm'], backend=e.get('backend'), state='running', connection=conn, entry=e))
    return out


def send_back_vm(run, target, record):
    """Move the VM live back to the host it was evacuated from, under its old QMP socket path."""
    e = target['entry']
    home = host_address(e['home'])
    record['destination'] = home['name']
    params = _migration_params(run, target['connection'], home[destination_key(e.get('backend'))],
                               e['connection'].get('qmp_socket'))
    r = migrate(run.module, params)
    record.update(_kept(r), changed=r['changed'], msg=r.get('msg') or 'sent back to %s' % home['name'])


# -- return, on the maintained host --
def sent_back_outcomes(results):
    """{vm name: what its send-back said} from the send_back tasks' results (one per holder)."""
    out = {}
    for r in results or []:
        holder = r.get('item') or r.get('_ansible_delegated_vars', {}).get('ansible_host') or 'its holder'
        for v in r.get('vms') or []:
            out[v['vm']] = '%s at %s: %s' % (v['status'], holder, v.get('msg', ''))
        if not r.get('vms') and r.get('msg'):
            out['@' + str(holder)] = r['msg']
    return out


def returned_vm(run, target, record):
    """The VM must run here again; then the record forgets it."""
    where = target['destination']['name']
    record['destination'] = where
    state = run.state_of(target)
    if state == 'running':
        record['msg'] = 'back from %s' % where
        return
    if run.check_mode:
        record.update(changed=True, msg='would come back from %s' % where)
        return
    said = run.sent_back.get(target['name']) or run.sent_back.get('@' + where)
    raise ConnectionFailed("VM '%s' is not running here (%s); it was evacuated to %s%s"
                           % (target['name'], state, where,
                              ': its send-back said %s' % said if said else ' and was not sent back'),
                           hint="check where it runs and run the return phase again; the record "
                                "%s keeps it until it is back" % run.evacuated.path)


def evacuated_entries_as_targets(evacuated):
    return [dict(name=v['vm'], backend=v.get('backend'), state='running', connection=v['connection'],
                 destination=v['destination']) for v in evacuated.vms]
