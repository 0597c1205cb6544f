# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Saving a libvirt domain to a file and restoring it: libvirt's saveParams and
restoreParams, in the sparse (mapped-ram) format over parallel channels or
compressed in one stream, and the direct-io switch-off a restore may need."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import quirks
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.connection import connect, domain_by_uuid, run_blocking
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing, ConnectionFailed, InvalidArgument, VmfleetError

try:
    import libvirt
except ImportError:  # connection.py keeps the error for missing_required_lib
    pass

LIBVIRT_FORMATS = {'zstd': 'zstd', 'zlib': 'gzip'}


def choose_save_path(channels, compression, parallel_supported):
    """(path_used, why) of a libvirt save, or a clear error when libvirt cannot do it."""
    if compression != 'none':
        return 'libvirt-compressed', ("compression asked: libvirt compresses the image in one %s stream "
                                      "(its parallel save needs the uncompressed sparse format)" % compression)
    if not parallel_supported:
        raise CapabilityMissing("this libvirt cannot save over parallel channels",
                                hint="libvirt >= 11.2 and libvirt-python >= 12.1 are needed")
    return 'libvirt-sparse', "no compression: libvirt's sparse (mapped-ram) format over %d channel(s)" % channels


class LibvirtSaveRestore(object):
    """The save and restore steps of LibvirtVm (which these methods are part of)."""

    def save_route(self, channels, compression):
        return choose_save_path(channels, compression,
                                quirks.libvirt_parallel_save(self.conn.getLibVersion(), libvirt))

    def save(self, saver, path_used):
        if saver.keep_running:
            raise InvalidArgument("keep_running is not available for libvirt domain '%s'" % self.name,
                                  hint="libvirt's save stops the domain; use vmfleet.kvm.snapshot for a checkpoint "
                                       "that keeps it running")
        state = self.state()
        tmp = saver.path + manifest_store.PARTIAL
        params = {libvirt.VIR_DOMAIN_SAVE_PARAM_FILE: tmp}
        if path_used == 'libvirt-sparse':
            params[libvirt.VIR_DOMAIN_SAVE_PARAM_IMAGE_FORMAT] = 'sparse'
            params[libvirt.VIR_DOMAIN_SAVE_PARAM_PARALLEL_CHANNELS] = saver.channels
        else:
            params[libvirt.VIR_DOMAIN_SAVE_PARAM_IMAGE_FORMAT] = LIBVIRT_FORMATS[saver.compression]
        flags = 0
        manifest_store.remove([tmp])  # an interrupted save's
        if path_used == 'libvirt-sparse' and manifest_store.opens_direct(tmp, create=True):
            # A domain restored with O_DIRECT (virsh restore --bypass-cache) keeps QEMU's direct-io on, and
            # libvirt 11.3's next save without O_DIRECT crashes QEMU 10.0: the guest is lost. With it the save
            # is safe either way and does not flood the page cache. The price, measured on a 4 GiB guest: the
            # save ~7% slower, a restore through the page cache 4.7 s instead of 3.7 s (with O_DIRECT: 2.5-2.9 s).
            flags |= libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE
        saver.direct_io = bool(flags)
        t0 = time.monotonic()
        try:
            run_blocking(lambda: self.dom.saveParams(params, flags), saver.deadline,
                         "saving libvirt domain '%s'" % self.name, on_timeout=self.dom.abortJob)
            durable.fsync_path(tmp)  # libvirt leaves the sparse format unflushed
            dt = time.monotonic() - t0
            manifest = saver.commit([tmp], [path_used], saver.manifest(path_used, state))
        except Exception:
            manifest_store.remove([tmp])
            raise
        return manifest, dt, round(dt * 1000.0, 1)

    @classmethod
    def image_streams(cls, manifest):
        # the sparse format is mapped-ram; libvirt compresses through a pipe, one stream
        return None if manifest['path_used'] == 'libvirt-sparse' else 1

    @classmethod
    def saved_and_gone(cls, module, saved_vm, params):
        """True when the task names the domain ``saved_vm`` records and it no longer runs."""
        if params.get('domain') not in (saved_vm.get('name'), saved_vm.get('uuid')):
            return False
        with cls.open(module, params) as vm:
            return vm.state() == 'shutoff'

    @classmethod
    def running_from(cls, module, manifest, params):
        """The restore ``manifest`` records, when that very run of the domain still goes on."""
        done = manifest['restored']
        conn = connect(params['uri'])
        try:
            dom = domain_by_uuid(conn, manifest['vm']['uuid'])
            if dom is not None and dom.isActive() and dom.ID() == done.get('domain_id'):
                return done
        finally:
            conn.close()
        return None

    @classmethod
    def restore(cls, module, manifest, path, params, deadline, channels):
        uri = params['uri']
        conn = connect(uri)
        try:
            dom = domain_by_uuid(conn, manifest['vm']['uuid'])
            name = manifest['vm']['name']
            if dom is not None and dom.isActive():
                raise ConnectionFailed("libvirt domain '%s' is running" % name,
                                       hint="restoring would replace its running state; stop it first")
            params_ = {libvirt.VIR_DOMAIN_SAVE_PARAM_FILE: path}
            flags = libvirt.VIR_DOMAIN_SAVE_RUNNING if params['state'] == 'running' else libvirt.VIR_DOMAIN_SAVE_PAUSED
            sparse = manifest['path_used'] == 'libvirt-sparse'
            direct = params['direct_io'] is not False and sparse and \
                quirks.qemu_direct_io(conn.getVersion()) and manifest_store.opens_direct(path)
            if sparse:
                params_[libvirt.VIR_DOMAIN_SAVE_PARAM_PARALLEL_CHANNELS] = channels
            if direct:
                flags |= libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE
            run_blocking(lambda: conn.restoreParams(params_, flags), deadline,
                         "restoring libvirt domain '%s' from %s" % (name, path))
            dom = domain_by_uuid(conn, manifest['vm']['uuid'])
            # cls is LibvirtVm, which this class is a part of
            with cls(module, conn, dom, uri, own_conn=False) as vm:  # pylint: disable=not-context-manager
                if direct:
                    vm._switch_off_direct_io(path)
                return dict(domain_id=dom.ID(), state=vm.state(), direct_io=direct, channels=channels)
        finally:
            conn.close()

    def _switch_off_direct_io(self, path):
        # libvirt leaves it on after an O_DIRECT restore, and QEMU 10.0 then
        # crashes in the next save that brings no O_DIRECT file descriptor.
        try:
            self.qmp('migrate-set-parameters', **{'direct-io': False})
        except VmfleetError as e:
            raise VmfleetError("libvirt domain '%s' runs again from %s, but QEMU's direct-io migration parameter "
                               "could not be switched off: %s" % (self.name, path, e),
                               hint="save it only with vmfleet.kvm.vm_save or 'virsh save --bypass-cache' until it "
                                    "is restarted: a save in the sparse format without --bypass-cache would crash it")
