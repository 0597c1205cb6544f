# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt backend: a domain reached through libvirt-python. Every step
that differs from raw QEMU is a method here (or, for save and restore, in
save_restore.py): listing, libvirt's snapshot API, the mirror driver."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import json
import os
import re
import time
import xml.etree.ElementTree as ET

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import capabilities
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import qemu_img
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import quirks
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt import save_image as libvirt_save_image
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.save_restore import LibvirtSaveRestore
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.connection import HAS_LIBVIRT, connect, domain_by_uuid, run_blocking
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk, ImageSnapshot
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.vm_handle import VmHandle
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    CapabilityMissing, ConnectionFailed, InvalidArgument, QmpCommandError, VmfleetError,
    VmGone, VmNotFound,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.qemu_img import image_info

try:
    import libvirt
    import libvirt_qemu
except ImportError:  # connection.py keeps the error for missing_required_lib
    pass

# What a call fails with when QEMU dies under it ("End of file from qemu monitor").
_DIED_CODES = (1, 38, 9)  # VIR_ERR_INTERNAL_ERROR, VIR_ERR_SYSTEM_ERROR, VIR_ERR_OPERATION_FAILED

_UUID = re.compile(r'^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$')


def list_domain_names(conn):
    return sorted(d.name() for d in conn.listAllDomains(0))


def _state_names():
    return {
        libvirt.VIR_DOMAIN_RUNNING: 'running', libvirt.VIR_DOMAIN_PAUSED: 'paused',
        libvirt.VIR_DOMAIN_SHUTOFF: 'shutoff', libvirt.VIR_DOMAIN_SHUTDOWN: 'shutdown',
        libvirt.VIR_DOMAIN_CRASHED: 'crashed', libvirt.VIR_DOMAIN_PMSUSPENDED: 'pmsuspended',
        libvirt.VIR_DOMAIN_BLOCKED: 'running', libvirt.VIR_DOMAIN_NOSTATE: 'unknown',
    }


def _lookup(conn, domain):
    if _UUID.match(domain):
        try:
            return conn.lookupByUUIDString(domain)
        except libvirt.libvirtError:
            pass
    return conn.lookupByName(domain)


def library_facts():
    """(libvirt version, binding) of the libvirt library on this host, or (None, None)."""
    if not HAS_LIBVIRT:
        return None, None
    return quirks.version_string(libvirt.getVersion()), libvirt


# the guest agent's virtio-serial port, and how a domain gets one
AGENT_PORT = 'org.qemu.guest_agent.0'
AGENT_HOW_TO_ADD = ("add <channel type='unix'><target type='virtio' name='%s'/></channel> to the domain's devices "
                    "(virsh edit; it takes effect at the next start) and run qemu-guest-agent in the guest" % AGENT_PORT)
AGENT_PING_S = 10


class LibvirtVm(LibvirtSaveRestore, VmHandle):
    backend = 'libvirt'
    native_snapshots = True
    offline_snapshots = True
    # its external snapshots freeze through libvirt's own agent (VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
    freezes_in_snapshot = True

    def __init__(self, module, conn, dom, uri, own_conn=True):
        super(LibvirtVm, self).__init__(module, dom.name())
        self.conn = conn
        self.dom = dom
        self.uri = uri
        self._own_conn = own_conn
        self._memory_fd = None  # the fd name QEMU holds for an instant snapshot's memory file, once handed

    @classmethod
    def open(cls, module, params, conn=None):
        uri, domain = params['uri'], params['domain']
        own = conn is None
        conn = conn or connect(uri)
        try:
            dom = _lookup(conn, domain)
        except libvirt.libvirtError as e:
            if own:
                conn.close()
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise VmNotFound("libvirt domain '%s' not found on %s" % (domain, uri),
                                 hint="list the domains with 'virsh -c %s list --all'" % uri)
            raise ConnectionFailed("libvirt at %s failed looking up '%s': %s" % (uri, domain, e.get_error_message()))
        return cls(module, conn, dom, uri, own_conn=own)

    @classmethod
    @contextlib.contextmanager
    def open_all(cls, module, params):
        """Every domain of the libvirt at ``uri`` (those that vanish while listed left out)."""
        conn = connect(params['uri'])
        vms = []
        try:
            for name in list_domain_names(conn):
                try:
                    vms.append(cls.open(module, dict(params, domain=name), conn=conn))
                except (VmGone, VmNotFound):
                    continue
            yield vms, _Host(module, conn, vms)
        finally:
            for vm in vms:
                vm.close()
            conn.close()

    def close(self):
        if self._own_conn:
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass

    def _call(self, what, fn, *args):
        try:
            return fn(*args)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise VmGone("libvirt domain '%s' disappeared during %s" % (self.name, what))
            if e.get_error_code() in _DIED_CODES and not self._still_running():
                raise VmGone("libvirt domain '%s' is not running any more: it went away during %s (%s)"
                             % (self.name, what, e.get_error_message()))
            raise VmfleetError("libvirt refused %s on domain '%s': %s" % (what, self.name, e.get_error_message()))

    def _still_running(self):
        # A QEMU killed mid-command reaches us as a generic internal error
        # ("End of file from qemu monitor"): only the domain's state tells.
        try:
            return bool(self.dom.isActive())
        except libvirt.libvirtError:
            return False

    def connection(self):
        return dict(domain=self.name, uri=self.uri)

    def memory_bytes(self):
        return self._call('reading the memory size', self.dom.maxMemory) * 1024

    @classmethod
    def migrator_class(cls):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.migrator import LibvirtMigrator
        return LibvirtMigrator

    def identity(self):
        return dict(name=self.name, backend=self.backend, uuid=self.dom.UUIDString(), uri=self.uri,
                    qmp_socket=None)

    def state(self):
        st = self._call('reading the state', self.dom.state)[0]
        return _state_names().get(st, 'unknown')

    def xml(self, inactive=False):
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return ET.fromstring(self._call('reading the XML', self.dom.XMLDesc, flags))

    def disks(self):
        out = []
        for el in self.xml().findall('./devices/disk'):
            if el.get('device', 'disk') != 'disk':
                continue
            target = el.find('target').get('dev')
            src = el.find('source')
            path = None
            index = None
            if src is not None:
                path = src.get('file') or src.get('dev')
                index = src.get('index')
            drv = el.find('driver')
            fmt = drv.get('type') if drv is not None else None
            info = image_info(self.module, path, fmt) if path and fmt else {}
            out.append(Disk(
                name=target,
                # libvirt names the format node of source index N 'libvirt-N-format'.
                node_name='libvirt-%s-format' % index if index else None,
                file=path, fmt=fmt or info.get('format'), virtual_size=info.get('virtual-size'),
                read_only=el.find('readonly') is not None,
                snapshots=[ImageSnapshot.from_qemu(s) for s in info.get('snapshots', [])]))
        return out

    def block_jobs(self):
        jobs = []
        for d in self.disks():
            info = self._call('reading block jobs', self.dom.blockJobInfo, d.name, 0)
            if info:
                jobs.append(dict(disk=d.name, job=None, type=info.get('type'), status=None,
                                 bytes_total=info.get('end'), bytes_done=info.get('cur'),
                                 speed=info.get('bandwidth'), ready=info.get('cur') == info.get('end')))
        return jobs

    def qmp(self, command, _timeout=None, _files=None, **args):
        """QMP passthrough. libvirt marks the domain tainted (custom-monitor);
        used only where libvirt's own API cannot do the job. libvirt gives no
        per-call timeout: callers check their deadline between calls.
        ``_files``: file descriptors handed to QEMU with the command (getfd)."""
        msg = json.dumps({'execute': command, 'arguments': args} if args else {'execute': command})
        try:
            if _files:
                reply = json.loads(libvirt_qemu.qemuMonitorCommandWithFiles(self.dom, msg, list(_files), 0)[0])
            else:
                reply = json.loads(libvirt_qemu.qemuMonitorCommand(self.dom, msg, 0))
        except libvirt.libvirtError as e:
            if (e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)
                    or e.get_error_code() in _DIED_CODES and not self._still_running()):
                raise VmGone("libvirt domain '%s' is not running (%s)" % (self.name, e.get_error_message()))
            raise VmfleetError("libvirt QMP passthrough '%s' on '%s' failed: %s"
                               % (command, self.name, e.get_error_message()))
        if 'error' in reply:
            raise QmpCommandError(command, reply['error'].get('class'), reply['error'].get('desc'))
        return reply.get('return')

    def wait_event(self, timeout):
        # Events would need a libvirt event loop in the module; callers poll instead.
        time.sleep(min(timeout, 0.2))
        return None

    def emulator(self):
        el = self.xml().find('./devices/emulator')
        return el.text if el is not None else None

    def host_facts(self, timeout):
        return _Host(self.module, self.conn, [self]).host_facts(timeout)

    def qemu_version(self):
        return quirks.version_string(self._call('reading the QEMU version', self.conn.getVersion))

    def pause(self):
        self._call('suspending', self.dom.suspend)

    # -- the guest agent: libvirt owns its channel, we ask libvirt --
    def check_guest_agent(self):
        targets = [t for t in self.xml().findall('./devices/channel/target') if t.get('name') == AGENT_PORT]
        if not targets:
            raise CapabilityMissing("libvirt domain '%s' has no QEMU guest agent channel (%s)" % (self.name, AGENT_PORT),
                                    hint=AGENT_HOW_TO_ADD)
        state = targets[0].get('state')
        if state != 'connected':
            raise CapabilityMissing("the QEMU guest agent of libvirt domain '%s' is not connected (its channel is %s)"
                                    % (self.name, state or 'in no state'), hint="start qemu-guest-agent in the guest")
        try:
            libvirt_qemu.qemuAgentCommand(self.dom, json.dumps({'execute': 'guest-ping'}), AGENT_PING_S, 0)
        except libvirt.libvirtError as e:
            raise CapabilityMissing("the QEMU guest agent of libvirt domain '%s' does not answer: %s"
                                    % (self.name, e.get_error_message()), hint="check qemu-guest-agent in the guest")

    def fs_freeze(self, deadline):
        return run_blocking(self.dom.fsFreeze, deadline, "freezing the filesystems of libvirt domain '%s'" % self.name)

    def fs_thaw(self):
        return self._call('thawing the filesystems', self.dom.fsThaw)

    def thaw_spec(self):
        return dict(backend=self.backend, uri=self.uri, uuid=self.dom.UUIDString())

    @classmethod
    def thawer(cls, spec):
        dom = connect(spec['uri']).lookupByUUIDString(spec['uuid'])
        return dom.fsThaw

    def resume(self):
        self._call('resuming', self.dom.resume)

    # -- instant snapshots: libvirt's save-image format, written through QEMU's background-snapshot --
    def check_instant_snapshots(self):
        why = quirks.libvirt_instant_missing(self.conn.getLibVersion(), libvirt_qemu, self.uri)
        if why:
            raise CapabilityMissing("libvirt domain '%s' cannot take instant snapshots: %s" % (self.name, why),
                                    hint="nothing was changed; use mode: internal")

    def relaunch_record(self):
        return dict(uuid=self.dom.UUIDString(), disks=dict((d.name, d.file) for d in self.disks()),
                    libvirt=quirks.version_string(self.conn.getLibVersion()), version=self.qemu_version())

    def check_relaunch(self, record, what):
        if record.get('uuid') != self.dom.UUIDString():
            raise InvalidArgument("%s was taken of another VM (uuid %s), not of libvirt domain '%s'"
                                  % (what, record.get('uuid'), self.name), hint="nothing was changed")
        now = dict((d.name, d.file) for d in self.disks())
        for target, path in sorted(record['disks'].items()):
            if now.get(target) != path:
                raise InvalidArgument(
                    "disk %s of libvirt domain '%s' is %s, not %s as when %s was taken (moved by drive_mirror?): "
                    "the definition in its memory file names the old image" % (target, self.name, now.get(target),
                                                                               path, what),
                    hint="nothing was changed; the snapshot cannot be reverted, remove it")

    def prepare_memory_write(self, path, fd, was_running):
        # the header (the domain's XML: the transaction of internal snapshots leaves it as it is) and the
        # fd handed to QEMU before the pause: two round trips through libvirtd less while the guest waits
        flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
        xml = self._call('reading the migratable XML', self.dom.XMLDesc, flags)
        libvirt_save_image.write_header(fd, xml, was_running)
        # QEMU writes through its copy of the fd from the offset the header ends at, as libvirt's own save does
        fdname = 'vmfleet-memory-%d' % os.getpid()
        self.qmp('getfd', _files=[fd], fdname=fdname)
        self._memory_fd = fdname

    def unprepare_memory_write(self, path, fd):
        fdname, self._memory_fd = self._memory_fd, None
        if fdname:
            try:
                self.qmp('closefd', fdname=fdname)
            except VmfleetError:
                pass

    def start_memory_write(self, path, fd, was_running):
        if not self._memory_fd:
            self.prepare_memory_write(path, fd, was_running)
        try:
            self.qmp('migrate', uri='fd:%s' % self._memory_fd)
        except Exception:
            self.unprepare_memory_write(path, fd)
            raise
        self._memory_fd = None  # QEMU's migration holds it now

    def finish_memory_write(self, path, fd):
        libvirt_save_image.mark_complete(fd)

    def background_load_refusal(self, memory_format):
        return ("a libvirt domain loads its RAM in full: libvirt's restore takes the memory file as one stream and "
                "has no postcopy input", None)

    def revert_to_memory(self, record, name, images, memory_file, state, deadline, memory_format=None, load='full'):
        """Destroy the domain, apply the disk snapshots, and let libvirt restore the memory file."""
        libvirt_save_image.check_complete(memory_file)
        hint = ("libvirt domain '%s' is shut off; memory file %s is intact: revert again, or start the domain"
                % (self.name, memory_file))
        if self.is_running():
            self._call('destroying the domain', self.dom.destroy)
        for f in images:
            qemu_img.snapshot(self.module, '-a', name, f, hint=hint)
        flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if state == 'paused' else libvirt.VIR_DOMAIN_SAVE_RUNNING
        t0 = time.monotonic()
        try:
            run_blocking(lambda: self.conn.restoreFlags(memory_file, None, flags), deadline,
                         "restoring libvirt domain '%s' from %s" % (self.name, memory_file))
        except VmfleetError as e:
            e.hint = hint
            raise
        load_s = round(time.monotonic() - t0, 3)
        self.dom = domain_by_uuid(self.conn, record['uuid']) or self.dom
        return dict(route='libvirt-restore', state=self.state(), domain_id=self.dom.ID(), load_s=load_s)

    def mirror_driver(self):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.mirror import LibvirtMirrorDriver
        return LibvirtMirrorDriver(self)

    # -- libvirt's own snapshot API, used where it can do the job --
    def native_snapshot_names(self):
        return set(self._call('listing snapshots', self.dom.snapshotListNames, 0))

    def native_snapshot_disks(self):
        out = {}
        for name in self.native_snapshot_names():
            try:
                snap = self.dom.snapshotLookupByName(name, 0)
                root = ET.fromstring(snap.getXMLDesc(0))
            except libvirt.libvirtError:
                continue  # deleted meanwhile
            out[name] = [d.get('name') for d in root.findall('./disks/disk')
                         if d.get('snapshot', 'internal') == 'internal']
        return out

    def native_snapshot_create(self, name, disk_names):
        root = ET.Element('domainsnapshot')
        ET.SubElement(root, 'name').text = name
        ET.SubElement(root, 'memory', snapshot='internal')
        el = ET.SubElement(root, 'disks')
        for d in disk_names:
            ET.SubElement(el, 'disk', name=d, snapshot='internal')
        self._call("creating snapshot '%s'" % name, self.dom.snapshotCreateXML,
                   ET.tostring(root, encoding='unicode'), 0)

    def native_snapshot_delete(self, name, metadata_only=False):
        snap = self._call("looking up snapshot '%s'" % name, self.dom.snapshotLookupByName, name, 0)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY if metadata_only else 0
        self._call("deleting snapshot '%s'" % name, snap.delete, flags)

    def native_snapshot_revert(self, name):
        snap = self._call("looking up snapshot '%s'" % name, self.dom.snapshotLookupByName, name, 0)
        self._call("reverting to snapshot '%s'" % name, self.dom.revertToSnapshot, snap, 0)

    def native_snapshot_can_revert(self):
        return quirks.libvirt_can_revert(self.conn.getLibVersion())

    # -- external (overlay) snapshots: libvirt's own, plus the NVRAM it leaves out (external_snapshot.py) --
    def _external(self):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.external_snapshot import (
            LibvirtExternalSnapshots,
        )
        return LibvirtExternalSnapshots(self)

    def external_snapshots(self):
        return self._external().list()

    def check_external_snapshot(self, disks, memory, quiesce):
        self._external().check(disks, memory, quiesce)

    def external_snapshot_create(self, name, disks, overlays, memory, quiesce, memory_dir, deadline):
        return self._external().create(name, disks, overlays, memory, quiesce, memory_dir, deadline)

    def external_snapshot_revert(self, snap, memory_dir, deadline):
        return self._external().revert(snap, memory_dir, deadline)

    def external_snapshot_delete(self, snap, memory_dir, deadline):
        return self._external().delete(snap, memory_dir, deadline)

    def external_snapshot_moved(self, disk, old, new, memory_dir):
        return self._external().moved(disk, old, new)

    def internal_snapshot_refusal(self, disks):
        return self._external().internal_refusal()


class _Host(object):
    """The host facts vm_info reports, asked of libvirt and of the QEMU its domains run."""

    def __init__(self, module, conn, vms):
        self.module = module
        self.conn = conn
        self.vms = vms

    def host_facts(self, timeout):
        # here, not at the top: it brings qemu.qmp and asyncio, which a domain's other work never needs
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as qemu_process
        emulator = next((e for e in (vm.emulator() for vm in self.vms) if e), None)
        qemu = qemu_process.probe_binary(emulator or capabilities.default_emulator(self.module), timeout)
        return capabilities.host_facts(qemu, quirks.version_string(self.conn.getLibVersion()), libvirt)
