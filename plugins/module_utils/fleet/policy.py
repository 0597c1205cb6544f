# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet workflows' policy, pure data in and out: which VMs, which of
their disks, which snapshots may go, where disks move. The fleet modules ask
it on the hypervisor."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime

import fnmatch
import posixpath
import re
from urllib.parse import quote

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import listed_names
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import SNAPSHOT_FORMATS
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument


def _matches(vm, entry):
    return entry == vm.get('name') or entry in listed_names(vm.get('connection') or {})


def _pattern_ok(name, pattern):
    if not pattern:
        return True
    try:
        return re.search(pattern, name) is not None
    except re.error as e:
        raise InvalidArgument("name pattern %r is not a valid regular expression: %s" % (pattern, e))


def snapshot_disks(vm):
    """The disks a snapshot of ``vm`` can cover, the one for its RAM state,
    and the ones left out with the reason."""
    disks, left_out = [], []
    for d in vm.get('disks') or []:
        if d.get('read_only'):
            left_out.append(dict(disk=d['name'], reason='read-only (%s)' % (d.get('file') or 'no file')))
        elif d.get('format') not in SNAPSHOT_FORMATS:
            left_out.append(dict(disk=d['name'], reason='%s image cannot hold snapshots (varstore-like disk: left as it is)'
                                 % d.get('format')))
        else:
            disks.append(d['name'])
    return dict(disks=disks, vmstate_disk=disks[0] if disks else None, left_out=left_out)


def fleet_select(vms_info, vms=None, exclude=None, pattern='', states=('running',), unreachable=None):
    """Pick the VMs a role acts on.

    ``vms_info``: the ``vms`` lists vm_info returned (a list of them, or one).
    ``vms``: names or QMP socket paths; empty = every VM in ``states``.
    ``exclude``: names, socket paths or shell-style globs of names.
    ``pattern``: a regular expression the VM name must match.
    ``unreachable``: vm_info results that failed (for a QMP socket).
    Returns targets (each VM with its connection and snapshot disks),
    missing (asked for but not found, with why) and skipped (with why)."""
    found, seen = [], set()
    for item in vms_info or []:
        for vm in (item if isinstance(item, list) else [item]):
            key = (vm.get('backend'), vm.get('name'), str(vm.get('connection')))
            if key not in seen:
                seen.add(key)
                found.append(vm)
    vms, exclude = list(vms or []), list(exclude or [])
    targets, skipped, missing = [], [], []
    why = dict((r.get('item'), r.get('msg')) for r in unreachable or [])
    for entry in vms:
        if not any(_matches(vm, entry) for vm in found):
            missing.append(dict(vm=entry, msg=why.get(entry) or "no VM named '%s' on this host" % entry))
    for entry, msg in why.items():
        if entry not in vms:  # a socket from the role's own list
            missing.append(dict(vm=entry, msg=msg))
    for vm in found:
        name = vm.get('name')
        if vms and not any(_matches(vm, e) for e in vms):
            continue
        if any(_matches(vm, e) or fnmatch.fnmatchcase(name or '', e) for e in exclude):
            skipped.append(dict(vm=name, reason='excluded'))
            continue
        if not _pattern_ok(name or '', pattern):
            continue
        if states and vm.get('state') not in states:
            if vms:  # asked for by name: say why nothing is done to it
                skipped.append(dict(vm=name, reason='state is %s, not %s' % (vm.get('state'), ' or '.join(states))))
            continue
        target = dict(name=name, backend=vm.get('backend'), state=vm.get('state'),
                      connection=vm.get('connection'), disks_all=vm.get('disks') or [],
                      snapshots=vm.get('snapshots') or [])
        target.update(snapshot_disks(vm))
        targets.append(target)
    return dict(targets=targets, missing=missing, skipped=skipped)


def prefixed(name, prefix):
    """The snapshot name as the roles write it: always carrying the prefix."""
    if not name:
        raise InvalidArgument("a snapshot name is required")
    return name if name.startswith(prefix) else prefix + name


def stale_snapshot(snapshots, name, max_age, now):
    """The message for a snapshot ``name`` among ``snapshots`` (snapshot_list entries) older than
    ``max_age`` seconds at ``now`` (epoch): an earlier run's rollback point, which a run taking that
    name again must not report as its own. None when there is none, or ``max_age`` < 1."""
    if int(max_age or 0) < 1:
        return None
    for s in snapshots or []:
        if s.get('name') != name or not s.get('date'):
            continue
        taken = datetime.datetime.fromisoformat(s['date']).timestamp()
        age = now - taken
        if age > int(max_age):
            return "snapshot '%s' of VM '%s' was taken at %s, %s ago: an earlier run's rollback point, not this run's" % (
                name, s.get('vm', '?'), s['date'], _age(age))
    return None


def _age(seconds):
    seconds = int(seconds)
    for unit, size in (('days', 86400), ('hours', 3600), ('minutes', 60)):
        if seconds >= size:
            return '%d %s' % (seconds // size, unit)
    return '%d seconds' % seconds


def fleet_retention(snapshots, prefix, keep, vm=None):
    """Names of the snapshots to delete so that only the newest ``keep``
    carrying ``prefix`` remain. Snapshots without the prefix are never
    returned. ``keep`` < 1 keeps everything."""
    keep = int(keep)
    if keep < 1:
        return []
    if not prefix:
        raise InvalidArgument("retention needs a non-empty name prefix: it must never touch snapshots it did not make")
    ours = [s for s in snapshots or [] if str(s.get('name', '')).startswith(prefix)
            and (vm is None or s.get('vm') == vm)]
    names = {}
    for s in ours:  # one entry per name: the newest date seen for it
        names[s['name']] = max(names.get(s['name'], ''), s.get('date') or '')
    newest_first = sorted(names, key=lambda n: (names[n], n), reverse=True)
    return newest_first[keep:]


def vm_path(directory, vm_name, suffix=''):
    """``directory/<vm_name><suffix>`` with the name quoted as instant snapshots' memory
    files are (a raw QEMU's ``-name`` is anything its starter chose: ``../../x`` too);
    a path that would still leave ``directory`` is refused."""
    name = quote(vm_name or '', safe='') + suffix
    path = posixpath.join(directory, name)
    if name in ('', '.', '..') or posixpath.dirname(posixpath.normpath(path)) != posixpath.normpath(directory):
        raise InvalidArgument("VM name %r gives the path %s, outside %s" % (vm_name, path, directory),
                              hint="rename the VM (QEMU's -name, libvirt's domain name)")
    return path


def _moves(vm, target_dir, source_dir='', per_vm_dir=False):
    """The disks of ``vm`` to move to ``target_dir``: writable file-backed
    disks not already there (and under ``source_dir`` when given), each with
    its target path (``target_dir/<vm>/<file>`` with ``per_vm_dir``)."""
    if not target_dir or not target_dir.startswith('/'):
        raise InvalidArgument("the target directory must be an absolute path, not %r" % target_dir)
    target_dir = target_dir.rstrip('/')
    under = (source_dir.rstrip('/') + '/') if source_dir else None
    moves = []
    for d in vm.get('disks_all') or vm.get('disks') or []:
        src = d.get('file') or ''
        if not isinstance(d, dict) or d.get('read_only') or not src.startswith('/') \
                or src.startswith(target_dir + '/') or (under and not src.startswith(under)):
            continue
        dest_dir = vm_path(target_dir, vm['name']) if per_vm_dir else target_dir
        moves.append(dict(disk=d['name'], source=src, target=vm_path(dest_dir, src.rsplit('/', 1)[1]),
                          format=d.get('format')))
    return moves


def fleet_plan(targets, target_dir, source_dir='', per_vm_dir=False):
    """Each target VM with the ``moves`` of its disks; a VM whose target path
    would collide with another disk's gets an ``error`` instead."""
    if not target_dir or not target_dir.startswith('/'):
        raise InvalidArgument("the target directory must be an absolute path, not %r" % target_dir)
    plan = []
    for t in targets or []:
        try:
            plan.append(dict(t, moves=_moves(t, target_dir, source_dir, per_vm_dir)))
        except InvalidArgument as e:  # this VM's name: the others move on
            plan.append(dict(t, moves=[], error=e.message))
    seen = {}
    for p in plan:
        for m in p['moves']:
            seen.setdefault(m['target'], []).append('%s:%s' % (p['name'], m['disk']))
    for p in plan:
        clash = [m['target'] for m in p['moves'] if len(seen[m['target']]) > 1]
        if clash:
            p['error'] = ("target %s would hold several disks (%s): set per_vm_dir to give each VM its own directory"
                          % (clash[0], ', '.join(seen[clash[0]])))
    return plan


def fleet_spread(vms, destinations, reserve_mib=0):
    """Where each VM of an evacuated host goes: the largest VM first, each to the
    destination with the most free memory left (after ``reserve_mib`` kept free
    there and the VMs already given to it); ties go to the destination named first.

    ``vms``: dicts with ``name`` and ``memory_mib``.
    ``destinations``: dicts with ``name`` and ``free_mib`` (None: unknown, such as
    an unreachable host) and optionally ``error`` (why it cannot take VMs).
    Returns ``placed`` ({vm name: destination name}), ``unplaced`` (each VM no
    destination can hold, with why) and ``free_mib`` (each destination's memory
    left after the plan)."""
    free, order, refused = {}, [], []
    for d in destinations or []:
        if d['name'] in free or d['name'] in refused:
            raise InvalidArgument("destination '%s' is named twice" % d['name'])
        if d.get('error') or d.get('free_mib') is None:
            refused.append(d['name'])
            continue
        free[d['name']] = int(d['free_mib']) - int(reserve_mib)
        order.append(d['name'])
    placed, unplaced = {}, []
    for vm in sorted(vms or [], key=lambda v: (-int(v['memory_mib']), v['name'])):
        need = int(vm['memory_mib'])
        best = None
        for name in order:
            if free[name] >= need and (best is None or free[name] > free[best]):
                best = name
        if best is None:
            if not order:
                why = 'no destination can take VMs (%s)' % (', '.join(refused) or 'none given')
            else:
                most = max(order, key=lambda n: free[n])
                why = 'no destination has %d MiB free (the most: %d MiB at %s)' % (need, max(free[most], 0), most)
            unplaced.append(dict(vm=vm['name'], reason=why))
            continue
        free[best] -= need
        placed[vm['name']] = best
    return dict(placed=placed, unplaced=unplaced, free_mib=free)


def fleet_record(vm, status, msg=None, extra=None):
    """One VM's line in a role's report."""
    rec = dict(vm=vm.get('name') or vm.get('vm'), backend=vm.get('backend'), status=status, changed=False)
    for key in ('disks', 'left_out', 'connection'):
        if key in vm:
            rec[key] = vm[key]
    msg = msg or vm.get('error')
    if msg:
        rec['msg'] = msg
    rec.update(extra or {})
    return rec
