# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt backend: a domain reached through libvirt-python."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import re
import time
import traceback
import xml.etree.ElementTree as ET

from ansible_collections.vmfleet.kvm.plugins.module_utils.exceptions import (
    CapabilityMissing, ConnectionFailed, QmpCommandError, VmfleetError, VmGone, VmNotFound,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.images import image_info
from ansible_collections.vmfleet.kvm.plugins.module_utils.vm import Disk, ImageSnapshot, VmHandle

try:
    import libvirt
    import libvirt_qemu
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

_UUID = re.compile(r'^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$')


def _require_libvirt():
    if not HAS_LIBVIRT:
        from ansible.module_utils.basic import missing_required_lib
        raise CapabilityMissing(missing_required_lib('libvirt-python'), exception=LIBVIRT_IMPORT_ERROR)


def _silence_libvirt():
    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda *a: None, None)


def connect(uri):
    _require_libvirt()
    _silence_libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise ConnectionFailed(
            "cannot connect to libvirt at %s: %s" % (uri, e.get_error_message()),
            hint="check that libvirtd (or virtqemud) runs on this host and that the uri is right")


def version_string(n):
    return "%d.%d.%d" % (n // 1000000, (n // 1000) % 1000, n % 1000)


def list_domain_names(conn):
    return sorted(d.name() for d in conn.listAllDomains(0))


def _state_names():
    return {
        libvirt.VIR_DOMAIN_RUNNING: 'running', libvirt.VIR_DOMAIN_PAUSED: 'paused',
        libvirt.VIR_DOMAIN_SHUTOFF: 'shutoff', libvirt.VIR_DOMAIN_SHUTDOWN: 'shutdown',
        libvirt.VIR_DOMAIN_CRASHED: 'crashed', libvirt.VIR_DOMAIN_PMSUSPENDED: 'pmsuspended',
        libvirt.VIR_DOMAIN_BLOCKED: 'running', libvirt.VIR_DOMAIN_NOSTATE: 'unknown',
    }


class LibvirtVm(VmHandle):
    backend = 'libvirt'

    def __init__(self, module, conn, dom, uri, own_conn=True):
        super(LibvirtVm, self).__init__(module, dom.name())
        self.conn = conn
        self.dom = dom
        self.uri = uri
        self._own_conn = own_conn

    @classmethod
    def open(cls, module, uri, domain, conn=None):
        own = conn is None
        conn = conn or connect(uri)
        try:
            dom = cls._lookup(conn, domain)
        except libvirt.libvirtError as e:
            if own:
                conn.close()
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise VmNotFound("libvirt domain '%s' not found on %s" % (domain, uri),
                                 hint="list the domains with 'virsh -c %s list --all'" % uri)
            raise ConnectionFailed("libvirt at %s failed looking up '%s': %s" % (uri, domain, e.get_error_message()))
        return cls(module, conn, dom, uri, own_conn=own)

    @staticmethod
    def _lookup(conn, domain):
        if _UUID.match(domain):
            try:
                return conn.lookupByUUIDString(domain)
            except libvirt.libvirtError:
                pass
        return conn.lookupByName(domain)

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
            raise VmfleetError("libvirt refused %s on domain '%s': %s" % (what, self.name, e.get_error_message()))

    def parallel_save_supported(self):
        # 11.2 added the parameter; older libvirt-python bindings send it wrongly.
        return self.conn.getLibVersion() >= 11002000 and \
            hasattr(libvirt, 'VIR_DOMAIN_SAVE_PARAM_PARALLEL_CHANNELS')

    def uuid(self):
        return self.dom.UUIDString()

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
            info = image_info(self.module, path, fmt) if path else {}
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

    def qmp(self, command, _timeout=None, **args):
        """QMP passthrough. libvirt marks the domain tainted (custom-monitor);
        used only where libvirt's own API cannot do the job. libvirt gives no
        per-call timeout: callers check their deadline between calls."""
        msg = json.dumps({'execute': command, 'arguments': args} if args else {'execute': command})
        try:
            reply = json.loads(libvirt_qemu.qemuMonitorCommand(self.dom, msg, 0))
        except libvirt.libvirtError as e:
            if e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
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

    # -- libvirt's own snapshot API, used where it can do the job --
    def libvirt_snapshot_names(self):
        return set(self._call('listing snapshots', self.dom.snapshotListNames, 0))

    def libvirt_snapshot_create(self, name, disk_names):
        root = ET.Element('domainsnapshot')
        ET.SubElement(root, 'name').text = name
        ET.SubElement(root, 'memory', snapshot='internal')
        el = ET.SubElement(root, 'disks')
        for d in disk_names:
            ET.SubElement(el, 'disk', name=d, snapshot='internal')
        self._call("creating snapshot '%s'" % name, self.dom.snapshotCreateXML,
                   ET.tostring(root, encoding='unicode'), 0)

    def libvirt_snapshot_delete(self, name, metadata_only=False):
        snap = self._call("looking up snapshot '%s'" % name, self.dom.snapshotLookupByName, name, 0)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY if metadata_only else 0
        self._call("deleting snapshot '%s'" % name, snap.delete, flags)

    def libvirt_snapshot_revert(self, name):
        snap = self._call("looking up snapshot '%s'" % name, self.dom.snapshotLookupByName, name, 0)
        self._call("reverting to snapshot '%s'" % name, self.dom.revertToSnapshot, snap, 0)

    def libvirt_can_revert(self):
        # libvirt 11.2 and 11.3 cannot revert internal snapshots in some
        # configurations (fixed in 11.4): there we revert through QEMU's job.
        v = self.conn.getLibVersion()
        return not (11002000 <= v < 11004000)
