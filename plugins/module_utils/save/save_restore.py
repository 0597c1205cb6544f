# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Save a VM's RAM and device state to disk over several channels, and bring
it back (seed 002). The backend picks the fastest route its host has and
names it (``path_used``) in the manifest; its ``save``, ``restore`` and
``image_streams`` are the only ones that read that name.

This file holds what both backends share: idempotence, the checks before
anything is touched, the manifest written last, the results."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import backend_class, open_vm
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument, VmfleetError
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.vm_lock import held_for_change, vm_locked
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline

MIB = 1024.0 * 1024.0

# Threads that read a mapped-ram image back, at least. Its layout does not
# depend on how many wrote it, so a 1- or 2-channel image loads as fast as a
# 4-channel one. Measured with a 3 GiB image on this project's 2-core host,
# O_DIRECT: 1 thread 600, 2 threads 950, 4 threads 1800-2200 MiB/s; 8 and 16
# no faster than 4.
LOAD_CHANNELS = 4


def _check_channels(n):
    if n < 1 or n > 64:
        raise InvalidArgument("channels must be between 1 and 64, not %d" % n)


def load_channels(manifest, streams, asked=None):
    """How many threads read ``manifest``'s image: ``asked``, or the saved
    count but at least LOAD_CHANNELS. An image of ``streams`` streams (the
    backend's image_streams) is read by exactly that many."""
    if streams is not None:
        if asked not in (None, streams):
            raise InvalidArgument("the %s image holds %d stream(s) and is read over as many channels, not %d"
                                  % (manifest['path_used'], streams, asked), hint="leave channels unset")
        return streams
    if asked is not None:
        _check_channels(asked)
        return asked
    return max(manifest['channels'], LOAD_CHANNELS)


class Saver(object):
    """One save: what was asked, and the steps every backend's ``save`` shares."""

    def __init__(self, module, vm, path, channels, compression, keep_running, verify, timeout, why=None):
        self.module = module
        self.vm = vm
        self.path = path
        self.channels = channels
        self.compression = compression
        self.keep_running = keep_running
        self.verify = verify
        self.deadline = Deadline(timeout)
        self.why = why
        self.direct_io = False

    def progress(self, info):
        ram = info.get('ram', {})
        if ram.get('total') and self.module._verbosity >= 3:
            self.module.log('vmfleet.kvm.vm_save: %s %.0f%% (%d/%d bytes, %s MiB/s)' % (
                info.get('status'), 100.0 * ram.get('transferred', 0) / ram['total'],
                ram.get('transferred', 0), ram['total'], ram.get('mbps', 0) / 8.0))

    def manifest(self, path_used, state, info=None, qemu=None):
        return dict(vm=self.vm.identity(), path_used=path_used, why=self.why, channels=self.channels,
                    compression=self.compression, saved_state=state, keep_running=self.keep_running,
                    qemu=qemu or dict(argv=None, version=None),
                    ram_bytes=(info or {}).get('ram', {}).get('total'))

    def commit(self, partials, kinds, manifest):
        """Describe the written files, make the image complete (manifest last),
        then remove what an overwritten image left that the new one does not use."""
        finals = [p[:-len(manifest_store.PARTIAL)] for p in partials]
        manifest['files'] = manifest_store.describe_files(partials, kinds, self.verify)
        for f in manifest['files']:
            f['file'] = f['file'][:-len(manifest_store.PARTIAL)]
        # only what the replaced image's manifest lists: never a file that merely shares the name
        old = [p for p in manifest_store.listed_files(self.path, manifest_store.read_manifest(self.path))
               if p not in finals]
        manifest = manifest_store.commit(partials, manifest, self.path)
        manifest_store.remove(old)
        return manifest


def _save_result(path, manifest, changed):
    return dict(changed=changed, image=path, manifest=manifest_store.manifest_path(path),
                path_used=manifest['path_used'], why=manifest.get('why'), channels=manifest['channels'],
                files=manifest['files'], bytes=sum(f['bytes'] for f in manifest['files']),
                bytes_written=sum(f.get('allocated', f['bytes']) for f in manifest['files']))


def save_vm(module, params=None):
    """vm_save: the VM's RAM to ``path``, or no change when it is there already."""
    p = params or module.params
    path = p['path']
    manifest_store.validate_path(path)
    _check_channels(p['channels'])
    manifest = manifest_store.read_manifest(path)
    if manifest and not p['overwrite'] and \
            backend_class(manifest['vm']['backend']).saved_and_gone(module, manifest['vm'], p):
        manifest_store.check_files(path, manifest, checksum=False)
        return _save_result(path, manifest, False)
    foreign = manifest_store.foreign_files(path, manifest)
    if foreign:
        raise VmfleetError("save image path %s shares its name with %s, which belong to no save image"
                           % (path, ", ".join(os.path.basename(f) for f in foreign)),
                           hint="nothing was touched (overwrite replaces only a save image's own files); "
                                "pick another path, such as one ending in .vmstate")
    manifest_store.listed_files(path, manifest)  # an image the overwrite could not remove safely fails here
    if manifest and not p['overwrite']:
        raise VmfleetError("save image %s already exists (%s)"
                           % (path, ", ".join([os.path.basename(manifest_store.manifest_path(path))] +
                                              [f['file'] for f in manifest['files']])),
                           hint="nothing was touched; set overwrite: true to replace it, or pick another path")
    with held_for_change(module.check_mode, p, 'vm_save to %s' % path, p['timeout']), open_vm(module, p) as vm:
        path_used, why = vm.save_route(p['channels'], p['compression'])
        if not vm.is_running():
            raise InvalidArgument("VM '%s' is %s, there is no running state to save" % (vm.name, vm.state()),
                                  hint="start it, or restore it if it was saved")
        if module.check_mode:
            return dict(changed=True, image=path, manifest=manifest_store.manifest_path(path), path_used=path_used,
                        why=why, channels=p['channels'], files=[], bytes=0, bytes_written=0)
        # A save that died before its manifest leaves only partial files: never an image.
        manifest_store.remove(manifest_store.stale_partials(path))
        saver = Saver(module, vm, path, p['channels'], p['compression'], p['keep_running'], p['verify'],
                      p['timeout'], why=why)
        t0 = time.monotonic()
        manifest, duration, downtime = vm.save(saver, path_used)
    result = _save_result(path, manifest, True)
    result.update(duration_s=round(time.monotonic() - t0, 3), downtime_ms=downtime, direct_io=saver.direct_io,
                  rate_mib_s=round(result['bytes_written'] / MIB / duration, 1) if duration else None)
    return result


def restore_image(module, params=None):
    """vm_restore: the VM saved at ``path`` running again, or no change when this very restore still runs."""
    p = params or module.params
    path = p['path']
    manifest_store.validate_path(path)
    manifest = manifest_store.read_manifest(path)
    if manifest is None:
        raise VmfleetError("no complete save image at %s (its manifest %s is missing)"
                           % (path, manifest_store.manifest_path(path)),
                           hint="check the path; an interrupted save leaves no manifest and must be redone")
    vm = manifest['vm']
    backend = backend_class(vm['backend'])
    base = dict(vm=vm['name'], backend=vm['backend'], path_used=manifest['path_used'],
                bytes=sum(f['bytes'] for f in manifest['files']))
    read = sum(f.get('allocated', f['bytes']) for f in manifest['files'])

    def unchanged(latest):
        """The result when the VM already runs from this restore, else None."""
        done = backend.running_from(module, latest, p) if latest.get('restored') else None
        if done:
            return dict(base, changed=False, state='running', **{k: done[k] for k in backend.restored_reach if k in done})
        return None

    result = unchanged(manifest)
    if result:
        return result
    t0 = time.monotonic()
    deadline = Deadline(p['timeout'])
    channels = load_channels(manifest, backend.image_streams(manifest), p['channels'])
    manifest_store.check_files(path, manifest, checksum=p['verify'])
    if module.check_mode:
        return dict(base, changed=True, state=p['state'], channels=channels)
    with vm_locked(vm, 'vm_restore from %s' % path, deadline.remaining(), vm['name']):
        # a run that held the lock before us may have restored it meanwhile
        result = unchanged(manifest_store.read_manifest(path) or manifest)
        if result:
            return result
        t_load = time.monotonic()
        restored = backend.restore(module, manifest, path, p, deadline, channels)
        load_s = time.monotonic() - t_load
        manifest['restored'] = dict(restored, at=time.time())
        manifest_store.write_manifest(path, manifest)
    if p['direct_io'] and not restored['direct_io']:
        module.warn("%s was read through the page cache, not with O_DIRECT: that needs an uncompressed image read over "
                    "several channels, QEMU >= 9.1 and a file system that accepts O_DIRECT" % path)
    result = dict(base, changed=True, state=restored['state'], direct_io=restored['direct_io'], channels=channels,
                  duration_s=round(time.monotonic() - t0, 3),
                  rate_mib_s=round(read / MIB / load_s, 1) if load_s else None)
    result.update((k, restored[k]) for k in backend.restored_reach + ('load_s',) if k in restored)
    return result
