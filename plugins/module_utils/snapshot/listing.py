# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every snapshot of a VM, internal, instant or external, as snapshot_info reports it:
read from the images (so also those libvirt's own list does not show) and
from the instant snapshots' manifests, each with the mode it was taken in."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import (
    DEFAULT_MEMORY_DIR, KIND, describe, find_manifests, memory_path,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.save.manifest_store import PARTIAL


def list_snapshots(vm, memory_dir, name=None, name_prefix=None):
    def wanted(n):
        if name is not None and n != name:
            return False
        return not (name_prefix and not n.startswith(name_prefix))

    known = vm.native_snapshot_names()
    disks = vm.disks()
    instant = find_manifests(memory_dir, vm.name)
    out = []
    for s in vm.snapshots(disks):
        if not wanted(s['name']):
            continue
        if s['name'] in instant:
            path, manifest = instant.pop(s['name'])
            s = dict(s, **describe(manifest, path, disks))
            if not s['disks']:
                # the disks hold a snapshot of that name, but not the one the manifest recorded
                s = dict(s, disks=[], consistent=False)
        else:
            s = dict(s, mode='internal')
        out.append(dict(s, vm=vm.name, backend=vm.backend, in_libvirt=s['name'] in known))
    for s in vm.external_snapshots():
        if wanted(s['name']):
            out.append(dict(s, vm=vm.name, backend=vm.backend, in_libvirt=s['name'] in known))
    for n, (path, manifest) in sorted(instant.items()):
        # a memory file whose disk snapshots are gone: listed so it can be removed
        if wanted(n):
            out.append(dict(describe(manifest, path, disks), vm=vm.name, backend=vm.backend, in_libvirt=False))
    return out


def mode_of(vm, memory_dir, name, asked):
    """The mode snapshot ``name`` of ``vm`` was taken in, found by its name
    (an instant snapshot's manifest or leftover memory file, else the disk
    images); ``asked`` when there is no such snapshot."""
    found = list_snapshots(vm, memory_dir, name=name)
    if found:
        return found[0]['mode']
    path = memory_path(memory_dir or DEFAULT_MEMORY_DIR, vm.name, name)
    if os.path.exists(path) or os.path.exists(path + PARTIAL):
        return KIND
    return asked
