# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live migration of one running VM to another hypervisor (issue #21).

libvirt domains go peer to peer: the source libvirtd connects to the
destination's libvirtd itself (``destination_uri``, ``qemu+ssh://`` or
``qemu+tcp://``), QEMU sends memory (and with ``storage: copy`` the disks, over
NBD + block mirror) straight to the destination QEMU at ``migration_address``.
The module watches the job (progress samples, postcopy switch, ``timeout`` ->
abort: the VM runs on at the source) and reports what QEMU measured.

Nothing is changed before the checks pass: the destination answers, has the
memory, holds no running copy; with ``storage: copy`` the destination images
do not exist yet (libvirt creates them only inside a storage pool)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    ConnectionFailed, DestinationProblem, InvalidArgument, JobFailed, OperationTimeout, SpaceTooSmall, TargetProblem,
    VmNotFound,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmfleetError
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.vm_lock import changing
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline

try:
    from urllib.parse import urlsplit
except ImportError:  # Python 2 controllers never run this; keeps the import sanity test quiet
    from urlparse import urlsplit

try:
    import libvirt
    HAS_LIBVIRT = True
except ImportError:
    HAS_LIBVIRT = False

MIB = 1024 * 1024
# a progress sample into the result every this many seconds (and the first and last)
SAMPLE_EVERY = 1.0
# a raw QEMU's precopy that sends nothing for this long has lost its destination (libvirt's own
# keepalive, 5 s x 5, finds a lost peer in about as long)
STALL_S = 30


def _require_libvirt():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.vm import _require_libvirt as req
    req()


def destination_host(uri):
    """The host part of a libvirt URI (``qemu+ssh://user@host:port/system`` -> ``host``)."""
    host = urlsplit(uri).hostname
    if not host:
        raise InvalidArgument("destination_uri %r names no host" % uri,
                              hint="give the destination's libvirt as qemu+ssh://USER@HOST/system or qemu+tcp://HOST/system")
    return host


_EVENT_LOOP_LOCK = threading.Lock()


def _event_loop():
    """libvirt's default event loop in a daemon thread (for the job-completed event);
    registered once per process (a fleet run migrates from several threads), before
    the connections that wait for the event."""
    with _EVENT_LOOP_LOCK:
        if not getattr(_event_loop, 'started', False):
            _start_event_loop()


def _start_event_loop():
    libvirt.virEventRegisterDefaultImpl()

    def run():
        while True:
            libvirt.virEventRunDefaultImpl()

    t = threading.Thread(target=run, name='libvirt-events')
    t.daemon = True
    t.start()
    _event_loop.started = True


def _open(uri, deadline, what):
    """A libvirt connection, within the deadline (an SSH that hangs must not hang the task)."""
    box = {}

    def target():
        try:
            box['conn'] = libvirt.open(uri)
        except libvirt.libvirtError as e:
            box['error'] = e.get_error_message()

    t = threading.Thread(target=target)
    t.daemon = True
    t.start()
    t.join(max(1.0, min(60.0, deadline.remaining())))
    if 'conn' in box:
        try:
            # a destination lost mid-run (link cut, host down) is noticed in ~20 s: calls on this
            # connection, and closing it, fail instead of waiting for TCP to give up (many minutes)
            box['conn'].setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass
        return box['conn']
    raise ConnectionFailed("%s %s is unreachable: %s" % (what, uri, box.get('error', 'no answer within %.0f s' % min(60.0, deadline.timeout))),
                           hint="check that its libvirtd runs and that this host reaches it (for qemu+ssh: "
                                "root's SSH key and known_hosts on the source host)")


def _close(conn):
    """Close a connection; one whose peer is lost may block in its goodbye until keepalive gives
    up on it: the run ends anyway (at most 30 s more)."""
    def target():
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    t = threading.Thread(target=target)
    t.daemon = True
    t.start()
    t.join(30)


def _state(dom):
    try:
        return dom.state()[0]
    except libvirt.libvirtError:
        return None


def _lookup(conn, name):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _running(dom):
    return dom is not None and _state(dom) in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                                               libvirt.VIR_DOMAIN_BLOCKED)


def _reclaimable_memory(conn):
    """Bytes a new guest can have at ``conn``'s host: free memory, buffers and page cache, as its libvirt
    reads /proc/meminfo. MemFree alone (getFreeMemory) would turn away a host whose idle RAM sits in
    page cache, as it does on any hypervisor that has run a while."""
    stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    return sum(stats.get(k, 0) for k in ('free', 'buffers', 'cached')) * 1024


def _sample(stats, t0):
    total = stats.get('memory_total') or 0
    remaining = stats.get('memory_remaining')
    disk_total = stats.get('disk_total') or 0
    disk_remaining = stats.get('disk_remaining') or 0
    done_of = total + disk_total
    left = (remaining or 0) + disk_remaining
    pct = round(100.0 * (done_of - left) / done_of, 1) if done_of and remaining is not None else None
    return dict(t=round(time.monotonic() - t0, 2), percent=pct,
                rate_mib_s=round((stats.get('memory_bps') or 0) / float(MIB), 1),
                remaining_mib=round(left / float(MIB), 1) if remaining is not None else None,
                iteration=stats.get('memory_iteration'),
                dirty_rate_pages_s=stats.get('memory_dirty_rate'),
                throttle_pct=stats.get('auto_converge_throttle'))


class LibvirtMigration(object):
    """One libvirt domain moving to ``destination_uri``."""

    def __init__(self, module, params):
        _require_libvirt()
        self.module = module
        self.p = params
        self.deadline = Deadline(params['timeout'])
        self.name = params['domain']
        self.dest_uri = params['destination_uri']
        self.dest_host = destination_host(self.dest_uri)
        self.migration_address = params.get('migration_address') or self.dest_host
        self.samples = []
        self.completed_stats = None
        self.postcopy_started = None
        self.src = self.dst = None
        self.pool = None          # the destination's storage pool for copied disks
        self.pool_made = False    # a transient pool this run made (destroyed at the end; files stay)
        self.volumes_made = []    # images this run created at the destination (removed on failure)

    # --- the steps --------------------------------------------------------------
    def run(self):
        _event_loop()
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.vm import connect
        self.src = connect(self.p['uri'])
        try:
            return self._run()
        finally:
            self._drop_pool()
            for c in (self.src, self.dst):
                if c is not None:
                    _close(c)

    def _base_result(self):
        return dict(changed=False, domain=self.name, source_uri=self.p['uri'], destination=self.dest_uri,
                    backend='libvirt', storage=self.p['storage'])

    def _run(self):
        result = self._base_result()
        dom = _lookup(self.src, self.name)
        if not _running(dom):
            # not (or no longer) running here: done if it runs at the destination
            self.dst = _open(self.dest_uri, self.deadline, 'the destination libvirt')
            there = _lookup(self.dst, self.name)
            if _running(there):
                result.update(msg="domain '%s' already runs at %s" % (self.name, self.dest_uri), state='running-at-destination')
                return result
            raise VmNotFound("libvirt domain '%s' runs neither on this host (%s) nor at %s"
                             % (self.name, self.p['uri'], self.dest_uri),
                             hint="start it, or name the host it runs on", **result)
        self.dst = _open(self.dest_uri, self.deadline, 'the destination libvirt')
        plan = self._plan(dom)
        result.update(plan['report'])
        if self.module.check_mode:
            result.update(changed=True, msg="would migrate '%s' to %s" % (self.name, self.dest_uri))
            return result
        with changing(False, self.p, 'migrate', self.deadline.remaining(), self.name):
            try:
                if plan['disks']:
                    self._create_images(plan['disks'])
                result.update(self._migrate(dom, plan))
            except BaseException:
                self._remove_images()
                raise
        result['changed'] = True
        return result

    def _plan(self, dom):
        """Checks (nothing touched yet) and the flags and parameters of the migration."""
        there = _lookup(self.dst, self.name)
        if _running(there):
            raise DestinationProblem("domain '%s' runs on this host and also at %s" % (self.name, self.dest_uri),
                                     hint="two copies of one VM: stop the one that should not run, then run again")
        mem_kib = dom.maxMemory()
        free = _reclaimable_memory(self.dst)
        if free < mem_kib * 1024:
            raise DestinationProblem("not enough memory at %s: the domain needs %d MiB, %d MiB are free or "
                                     "reclaimable there"
                                     % (self.dest_uri, mem_kib // 1024, free // MIB),
                                     hint="free memory at the destination or pick another one")
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
        if self.p['persistent']:
            flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
        if self.p['undefine_source']:
            flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        params = {libvirt.VIR_MIGRATE_PARAM_URI: 'tcp://%s' % self._bracketed(self.migration_address)}
        if self.p['bandwidth_mib_s']:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(self.p['bandwidth_mib_s'])
        if self.p['parallel_connections'] > 1:
            flags |= libvirt.VIR_MIGRATE_PARALLEL
            params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = int(self.p['parallel_connections'])
        if self.p['auto_converge']:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if self.p['postcopy']:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        report = dict(route='libvirt-p2p', migration_uri=params[libvirt.VIR_MIGRATE_PARAM_URI],
                      parallel_connections=self.p['parallel_connections'], memory_mib=mem_kib // 1024)
        disks = []
        if self.p['storage'] == 'copy':
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
            xml, persist_xml, disks = self._copy_xml(dom)
            if disks:
                params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [d['target'] for d in disks]
            if xml is not None:
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = xml
                if persist_xml is not None and self.p['persistent']:
                    params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = persist_xml
            self._check_destination_images(dom, disks)
            report['disks'] = [dict((k, d[k]) for k in ('target', 'source', 'destination', 'format')) for d in disks]
        return dict(flags=flags, params=params, report=report, disks=disks)

    @staticmethod
    def _bracketed(host):
        return '[%s]' % host if ':' in host else host

    def _copy_xml(self, dom):
        """With storage copy: the writable file disks to copy, and the domain XML with their
        paths under ``destination_dir`` (None when the paths are kept)."""
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
        root = ET.fromstring(dom.XMLDesc(flags))
        dest_dir = self.p.get('destination_dir')
        disks = []
        for disk in root.findall('./devices/disk'):
            src = disk.find('source')
            target = disk.find('target')
            if disk.get('device', 'disk') != 'disk' or src is None or src.get('file') is None or \
                    disk.find('readonly') is not None or disk.find('shareable') is not None:
                continue
            path = src.get('file')
            new = os.path.join(dest_dir, os.path.basename(path)) if dest_dir else path
            if new == path and dest_dir:
                raise InvalidArgument("disk %s (%s) is already in destination_dir" % (target.get('dev'), path))
            src.set('file', new)
            driver = disk.find('driver')
            disks.append(dict(target=target.get('dev'), source=path, destination=new,
                              format=driver.get('type', 'raw') if driver is not None else 'raw'))
        if not disks:
            raise InvalidArgument("storage: copy, but domain '%s' has no writable file disk to copy" % self.name)
        if not dest_dir:
            return None, None, disks
        persist = None
        if self.p['persistent'] and dom.isPersistent():
            proot = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | flags))
            moves = dict((d['source'], d['destination']) for d in disks)
            for src in proot.findall('./devices/disk/source'):
                if src.get('file') in moves:
                    src.set('file', moves[src.get('file')])
            persist = ET.tostring(proot).decode('utf-8')
        return ET.tostring(root).decode('utf-8'), persist, disks

    # --- storage copy: the destination images ---------------------------------
    def _check_destination_images(self, dom, disks):
        """Before anything changes: the destination directory, a pool there, no image in the
        way (on a shared file system the "destination" could be the source itself), and space."""
        need = 0
        for d in disks:
            capacity, allocation, _physical = dom.blockInfo(d['source'], 0)
            d['capacity'] = capacity
            need += allocation
        dirs = sorted(set(os.path.dirname(d['destination']) for d in disks))
        if len(dirs) != 1:
            raise InvalidArgument("storage: copy keeps the disks' paths, and they are in several directories (%s)"
                                  % ', '.join(dirs), hint="give destination_dir: every disk goes there")
        self.pool = self._pool(dirs[0])
        if self.pool is None:
            return  # check mode, and no pool there yet: libvirt's own checks come at the migration
        self.pool.refresh(0)
        for d in disks:
            try:
                self.pool.storageVolLookupByName(os.path.basename(d['destination']))
            except libvirt.libvirtError:
                continue
            raise TargetProblem("the destination image %s exists already at %s" % (d['destination'], self.dest_uri),
                                hint="remove it, or give another destination_dir (the copy never overwrites an image)")
        available = self.pool.info()[3]
        if available < need:
            raise SpaceTooSmall("not enough space in %s at %s: the disks hold %d MiB, %d MiB are free there"
                                % (dirs[0], self.dest_uri, need // MIB, available // MIB),
                                hint="free space there or give another destination_dir")

    def _pool(self, directory):
        """An active storage pool of the destination's libvirt whose target is ``directory``; a
        transient one is made when none is (not in check mode)."""
        for pool in self.dst.listAllStoragePools(0):
            try:
                target = ET.fromstring(pool.XMLDesc(0)).findtext('./target/path')
            except libvirt.libvirtError:
                continue
            if target and os.path.normpath(target) == os.path.normpath(directory) and pool.isActive():
                return pool
        if self.module.check_mode:
            return None
        name = 'vmfleet-migrate-%s' % hashlib.sha1(directory.encode('utf-8')).hexdigest()[:12]
        xml = "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, escape(directory))
        try:
            pool = self.dst.storagePoolCreateXML(xml, 0)
        except libvirt.libvirtError as e:
            raise TargetProblem("cannot use %s at %s for the disks: %s" % (directory, self.dest_uri, e.get_error_message()),
                                hint="the directory must exist at the destination")
        self.pool_made = True
        return pool

    def _create_images(self, disks):
        """Empty images of the same format and size at the destination; QEMU's block
        mirror fills them (libvirt creates them itself only inside a storage pool)."""
        for d in disks:
            xml = ("<volume><name>%s</name><capacity unit='bytes'>%d</capacity><allocation>0</allocation>"
                   "<target><format type='%s'/></target></volume>"
                   % (escape(os.path.basename(d['destination'])), d['capacity'], escape(d['format'])))
            try:
                self.volumes_made.append(self.pool.createXML(xml, 0))
            except libvirt.libvirtError as e:
                raise TargetProblem("cannot create %s at %s: %s" % (d['destination'], self.dest_uri, e.get_error_message()))

    def _remove_images(self):
        for vol in self.volumes_made:
            try:
                vol.delete(0)
            except libvirt.libvirtError:
                pass
        self.volumes_made = []

    def _drop_pool(self):
        if self.pool is not None and self.pool_made:
            try:
                self.pool.destroy()  # a transient dir pool: the definition goes, the files stay
            except libvirt.libvirtError:
                pass
        self.pool = None

    def _on_job_completed(self, conn, dom, stats, opaque):
        if dom.name() == self.name:
            self.completed_stats = dict(stats)

    def _migrate(self, dom, plan):
        if self.p['max_downtime_ms']:
            dom.migrateSetMaxDowntime(int(self.p['max_downtime_ms']), 0)
        cb = self.src.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed, None)
        box = {}

        def target():
            try:
                box['dom'] = dom.migrateToURI3(self.dest_uri, plan['params'], plan['flags'])
            except libvirt.libvirtError as e:
                box['error'] = e

        t0 = time.monotonic()
        th = threading.Thread(target=target, name='migrate')
        th.daemon = True
        th.start()
        aborted = None
        last_sample = 0.0
        try:
            while th.is_alive():
                th.join(0.2)
                if not th.is_alive():
                    break
                stats = self._job_stats(dom)
                now = time.monotonic()
                if stats and (now - last_sample >= SAMPLE_EVERY or not self.samples):
                    self.samples.append(_sample(stats, t0))
                    last_sample = now
                if self.p['postcopy'] and self.postcopy_started is None and stats:
                    why = self._postcopy_due(stats, now - t0)
                    if why:
                        try:
                            dom.migrateStartPostCopy(0)
                            self.postcopy_started = why
                        except libvirt.libvirtError:
                            pass  # the migration may just have finished precopy
                if self.deadline.expired() and aborted is None and self.postcopy_started is None:
                    aborted = time.monotonic()
                    try:
                        dom.abortJob()
                    except libvirt.libvirtError:
                        pass
                if aborted is not None and time.monotonic() - aborted > 120:
                    break
        finally:
            th.join(5)
            elapsed = time.monotonic() - t0
            # the completed event may trail the call's return by a moment
            end = time.monotonic() + 2
            while self.completed_stats is None and time.monotonic() < end and 'error' not in box:
                time.sleep(0.05)
            try:
                self.src.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass
        progress = dict(samples=self.samples)
        if 'error' in box or aborted is not None:
            state = 'running' if _running(_lookup(self.src, self.name)) else 'unknown'
            partial = dict(progress=progress, duration_s=round(elapsed, 2), source_state=state, **plan['report'])
            if aborted is not None:
                raise OperationTimeout("migration of '%s' to %s did not finish within %gs; it was cancelled and the "
                                       "domain runs on at the source" % (self.name, self.dest_uri, self.deadline.timeout),
                                       hint="give a longer timeout, a higher bandwidth_mib_s, auto_converge or postcopy",
                                       **partial)
            raise self._failure(box['error'], partial)
        return self._done(elapsed, plan, progress)

    def _job_stats(self, dom):
        try:
            info = dom.jobStats(0)
        except libvirt.libvirtError:
            return None
        if info.get('type', libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        return info

    def _postcopy_due(self, stats, elapsed):
        """Switch to postcopy when precopy does not converge: after the second pass, when the
        guest dirties memory faster than the link carries it, or half the timeout is gone."""
        it = stats.get('memory_iteration') or 0
        dirty = (stats.get('memory_dirty_rate') or 0) * (stats.get('memory_page_size') or 4096)
        bps = stats.get('memory_bps') or 0
        if it >= 2 and bps and dirty >= bps:
            return "pass %d: the guest dirtied %.1f MiB/s, the link carried %.1f MiB/s" % (it, dirty / float(MIB), bps / float(MIB))
        if elapsed > self.deadline.timeout / 2.0:
            return "precopy had not converged after half the timeout (%.0f s, pass %d)" % (elapsed, it)
        return None

    def _failure(self, e, partial):
        code = e.get_error_code()
        msg = e.get_error_message()
        if code == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
            return DestinationProblem("the destination's CPU cannot run domain '%s': %s" % (self.name, msg),
                                      hint="give the domain a CPU model both hosts have", **partial)
        if code in (libvirt.VIR_ERR_OPERATION_ABORTED,):
            return JobFailed("migration of '%s' was cancelled: %s" % (self.name, msg), **partial)
        # VIR_FROM_RPC: the connection to the destination's libvirtd was lost ("client socket is closed")
        if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_SYSTEM_ERROR,
                    libvirt.VIR_ERR_AUTH_FAILED) or e.get_error_domain() == libvirt.VIR_FROM_RPC:
            return ConnectionFailed("migration of '%s' to %s failed: the destination: %s" % (self.name, self.dest_uri, msg),
                                    hint="the domain runs on at the source; check the destination's libvirtd and the "
                                         "network between the hosts (migration_address %s)" % self.migration_address,
                                    **partial)
        return JobFailed("migration of '%s' to %s failed: %s" % (self.name, self.dest_uri, msg),
                         hint="the domain runs on at the source when source_state says running", **partial)

    def _done(self, elapsed, plan, progress):
        stats = self.completed_stats
        if not stats:
            # no event: the source domain (if still defined) or the destination keep them
            for conn in (self.src, self.dst):
                d = _lookup(conn, self.name)
                if d is None:
                    continue
                try:
                    stats = d.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
                except libvirt.libvirtError:
                    continue
                if stats and stats.get('type') != libvirt.VIR_DOMAIN_JOB_NONE:
                    break
                stats = None
        stats = stats or {}
        if stats:
            self.samples.append(dict(_sample(stats, time.monotonic() - elapsed), percent=100.0))
        there = _lookup(self.dst, self.name)
        out = dict(plan['report'], progress=progress, duration_s=round(elapsed, 2),
                   downtime_ms=stats.get('downtime'),
                   bytes=stats.get('memory_processed', 0) + stats.get('disk_processed', 0),
                   memory_bytes=stats.get('memory_processed'), disk_bytes=stats.get('disk_processed'),
                   iterations=stats.get('memory_iteration'),
                   rate_mib_s=round((stats.get('memory_processed', 0) + stats.get('disk_processed', 0))
                                    / float(MIB) / max(elapsed, 0.001), 1),
                   destination_state='running' if _running(there) else 'not running',
                   destination_persistent=bool(there is not None and there.isPersistent()),
                   source_defined=_lookup(self.src, self.name) is not None)
        out['mode'], out['why'] = self._mode(stats)
        if out['destination_state'] != 'running':
            raise JobFailed("libvirt reported the migration of '%s' done, but it does not run at %s"
                            % (self.name, self.dest_uri), **out)
        out['msg'] = "migrated '%s' to %s in %.1f s (%s, downtime %s ms)" % (
            self.name, self.dest_uri, elapsed, out['mode'], out['downtime_ms'])
        return out

    def _mode(self, stats):
        if self.postcopy_started:
            return 'postcopy', 'switched to postcopy: ' + self.postcopy_started
        throttle = stats.get('auto_converge_throttle') or max([s.get('throttle_pct') or 0 for s in self.samples] or [0])
        if self.p['auto_converge'] and throttle:
            return 'auto-converge', ("precopy did not converge on its own: QEMU throttled the guest's CPUs up to %d%% "
                                     "(%s passes)" % (throttle, stats.get('memory_iteration')))
        return 'precopy', "precopy converged in %s pass(es) within the downtime limit%s" % (
            stats.get('memory_iteration'),
            ' (auto-converge allowed, not needed)' if self.p['auto_converge'] else
            (' (postcopy allowed, not needed)' if self.p['postcopy'] else ''))


# Run over SSH by the destination's Python (destination_python) with qemu.qmp: the destination
# QEMU's monitor is a UNIX socket there. argv: socket, JSON list of commands; prints the answers
# (up to the first error), or {"connect-error": ...} / {"import-error": ...}.
REMOTE_QMP = r"""
import json, sys
try:
    from qemu.qmp.legacy import QEMUMonitorProtocol
except ImportError as e:
    print(json.dumps({"import-error": str(e)}))
    sys.exit(0)
qmp = QEMUMonitorProtocol(sys.argv[1])
try:
    qmp.connect()
except Exception as e:
    print(json.dumps({"connect-error": str(e)}))
    sys.exit(0)
qmp.settimeout(60)
out = []
for cmd in json.loads(sys.argv[2]):
    try:
        out.append(qmp.cmd_obj(cmd))
    except Exception as e:
        out.append({"error": {"class": type(e).__name__, "desc": str(e) or "QEMU closed its monitor (%s)" % type(e).__name__}})
    if "error" in out[-1]:
        break
try:
    qmp.close()
except Exception:
    pass
print(json.dumps(out))
"""


def destination_argv(argv, qmp_socket, moves=None):
    """The source QEMU's command line as the destination starts it: its QMP socket at
    ``qmp_socket``, ``-incoming defer``, daemonized (it outlives the SSH session), and a
    ``-serial file:`` log appended to instead of truncated (a chardev with append=on). When the
    socket moves, the ``-pidfile`` moves beside it (the source QEMU holds its own locked)."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
    moved = proc.qmp_socket_of(argv) != qmp_socket
    moves = moves or {}
    out = []
    i = 0
    serial = 0
    qmp_done = False
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a in ('-qmp', '--qmp') and nxt and nxt.startswith('unix:') and not qmp_done:
            qmp_done = True
            rest = nxt[len('unix:'):].split(',', 1)
            out += [a, 'unix:' + qmp_socket + (',' + rest[1] if len(rest) > 1 else '')]
            i += 2
            continue
        if a in ('-pidfile', '--pidfile') and nxt and moved:
            pidfile = os.path.join(os.path.dirname(qmp_socket), os.path.basename(nxt))
            if pidfile == nxt:
                # the same directory (storage both hosts see): a name of its own, beside its socket
                pidfile = os.path.splitext(qmp_socket)[0] + '.pid'
            out += [a, pidfile]
            i += 2
            continue
        if a in ('-serial', '--serial') and nxt and nxt.startswith('file:'):
            cid = 'vmfleet-serial%d' % serial
            serial += 1
            out += ['-chardev', 'file,id=%s,path=%s,append=on' % (cid, nxt[len('file:'):].replace(',', ',,')),
                    '-serial', 'chardev:' + cid]
            i += 2
            continue
        for old, new in moves.items():
            # a disk's image as -blockdev filename=PATH or -drive file=PATH names it
            for key in ('filename=', 'file='):
                a = ','.join(key + new if part == key + old else part for part in a.split(','))
        out.append(a)
        i += 1
    out = proc.incoming_argv(out)
    if '-daemonize' not in out and '--daemonize' not in out:
        out.append('-daemonize')
    return out


class Remote(object):
    """The destination host as the source's root reaches it over SSH (its key, known_hosts)."""

    def __init__(self, uri, deadline, python=None):
        u = urlsplit(uri)
        self.python = python or sys.executable
        self.host = destination_host(uri)
        self.user = u.username
        self.port = u.port
        self.deadline = deadline
        self.sudo = ['sudo', '-n', '--'] if self.user and self.user != 'root' else []

    def ssh(self, argv, what, timeout=None, check=True):
        cmd = ['ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10']
        if self.port:
            cmd += ['-p', str(self.port)]
        cmd += [('%s@%s' % (self.user, self.host)) if self.user else self.host, '--']
        cmd.append(' '.join(shlex.quote(a) for a in argv))
        t = min(timeout or 120.0, self.deadline.remaining(5.0))
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=t, check=False)
        except subprocess.TimeoutExpired:
            raise ConnectionFailed("%s: %s gave no answer within %.0f s" % (what, self.host, t))
        out, err = r.stdout.decode('utf-8', 'replace'), r.stderr.decode('utf-8', 'replace').strip()
        if r.returncode == 255:
            raise ConnectionFailed("the destination %s is unreachable over SSH: %s" % (self.host, err),
                                   hint="the source host's root must reach it with its SSH key (and know its host key)")
        if check and r.returncode:
            raise DestinationProblem("%s at %s failed (%d): %s" % (what, self.host, r.returncode, err or out.strip()))
        return out

    def qmp(self, sock, commands, what):
        fix = ("give destination_python, a Python with qemu.qmp at %s, or prepare the host with the "
               "vmfleet.kvm.hypervisor role" % self.host)
        try:
            out = self.ssh(self.sudo + [self.python, '-c', REMOTE_QMP, sock, json.dumps(commands)], what)
        except DestinationProblem as e:
            if self.python not in e.msg:
                raise
            raise DestinationProblem("%s: the destination has no Python %s" % (e.msg, self.python), hint=fix)
        try:
            answers = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise DestinationProblem("%s at %s: no answer from its QMP helper: %s" % (what, self.host, out[-300:]))
        if isinstance(answers, dict) and 'import-error' in answers:
            raise DestinationProblem("%s at %s: the destination's %s lacks qemu.qmp (%s)"
                                     % (what, self.host, self.python, answers['import-error']), hint=fix)
        if isinstance(answers, dict):
            return answers  # connect-error
        for cmd, a in zip(commands, answers):
            if 'error' in a:
                raise DestinationProblem("%s at %s: QEMU refused %s: %s" % (what, self.host, cmd['execute'], a['error'].get('desc')))
        return [a.get('return') for a in answers]

    def available_memory(self):
        """Bytes of memory available there (MemAvailable), None when it does not say."""
        out = self.ssh(['cat', '/proc/meminfo'], 'reading the memory', check=False)
        for line in out.splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
        return None

    def alive(self, sock):
        """The state of the QEMU serving ``sock`` there, or None when none does."""
        a = self.qmp(sock, [{'execute': 'query-status'}], 'asking the QEMU on %s' % sock)
        if isinstance(a, dict):
            return None
        return a[0].get('status')


class QemuMigration(object):
    """A raw QEMU VM moving to another host: the destination QEMU is started there (over SSH,
    from the source's recorded command line with ``-incoming defer``), then QEMU migrates to it."""

    def __init__(self, module, params):
        self.module = module
        self.p = params
        self.deadline = Deadline(params['timeout'])
        self.sock = params['qmp_socket']
        self.dest_sock = params.get('destination_qmp_socket') or self.sock
        self.remote = Remote(params['destination_uri'], self.deadline, params.get('destination_python'))
        self.migration_address = params.get('migration_address') or self.remote.host
        self.samples = []
        self.postcopy_started = None

    def run(self):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import open_vm
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
        result = dict(changed=False, qmp_socket=self.sock, destination=self.p['destination_uri'],
                      destination_qmp_socket=self.dest_sock, backend='qemu', storage=self.p['storage'])
        if not proc.socket_alive(self.sock):
            state = self.remote.alive(self.dest_sock)
            if state in ('running', 'paused'):
                result.update(msg="the VM of %s already runs at %s (%s)" % (self.sock, self.remote.host, self.dest_sock),
                              state='running-at-destination')
                return result
            raise VmNotFound("no QEMU answers on %s, and none runs at %s on %s" % (self.sock, self.remote.host, self.dest_sock),
                             hint="start the VM, or name the host it runs on", **result)
        with open_vm(self.module, self.p) as vm:
            return self._with(vm, result)

    def _with(self, vm, result):
        record = vm.relaunch_record()
        self.copies = self._copy_plan(vm) if self.p['storage'] == 'copy' else []
        argv = destination_argv(record['argv'], self.dest_sock,
                                dict((c['source'], c['destination']) for c in self.copies))
        state = self.remote.alive(self.dest_sock)  # also: reachable over SSH
        if state is not None and state != 'inmigrate':
            raise DestinationProblem("a QEMU already answers on %s at %s (%s)" % (self.dest_sock, self.remote.host, state),
                                     hint="two copies of one VM: stop the one that should not run, then run again")
        mem = vm.qmp('query-memory-size-summary')['base-memory']
        avail = self.remote.available_memory()
        if avail is not None and avail < mem:
            raise DestinationProblem("not enough memory at %s: the VM needs %d MiB, %d MiB are available there"
                                     % (self.remote.host, mem // MIB, avail // MIB),
                                     hint="free memory at the destination or pick another one")
        if self.copies:
            self._check_destination_images()
            result['disks'] = [dict((k, c[k]) for k in ('target', 'source', 'destination', 'format')) for c in self.copies]
        result.update(route='qemu-incoming', vm=vm.name, memory_mib=mem // MIB,
                      parallel_connections=self.p['parallel_connections'], destination_argv=argv)
        if self.module.check_mode:
            result.update(changed=True, msg="would start %s at %s and migrate '%s' to it" % (argv[0], self.remote.host, vm.name))
            return result
        with changing(False, self.p, 'migrate', self.deadline.remaining(), vm.name):
            result.update(self._migrate(vm, argv))
        result['changed'] = True
        return result

    def _caps(self):
        n = self.p['parallel_connections']
        return {'multifd': n > 1, 'postcopy-ram': bool(self.p['postcopy'])}

    def _migrate(self, vm, argv):
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import qmp_migration as migration
        caps = self._caps()
        n = self.p['parallel_connections']
        t0 = time.monotonic()
        started = False
        self.images_made = []
        self.nbd_nodes = []
        try:
            self._stop_leftover()
            for c in self.copies:
                self.remote.ssh(self.remote.sudo + ['qemu-img', 'create', '-q', '-f', c['format'], c['destination'],
                                                    str(c['size'])], 'creating %s' % c['destination'])
                self.images_made.append(c['destination'])
            self.remote.ssh(self.remote.sudo + argv, 'starting the destination QEMU')
            started = True
            host = '[%s]' % self.migration_address if ':' in self.migration_address else self.migration_address
            setup = [{'execute': 'migrate-set-capabilities',
                      'arguments': {'capabilities': [{'capability': k, 'state': v} for k, v in sorted(caps.items())]}}]
            if n > 1:
                setup.append({'execute': 'migrate-set-parameters', 'arguments': {'multifd-channels': n}})
            setup += [{'execute': 'migrate-incoming', 'arguments': {'uri': 'tcp:%s:0' % host}},
                      {'execute': 'query-migrate'}]
            answers = self.remote.qmp(self.dest_sock, setup, 'preparing the destination QEMU')
            if isinstance(answers, dict):
                raise DestinationProblem("the destination QEMU does not answer on %s: %s" % (self.dest_sock, answers['connect-error']))
            addrs = answers[-1].get('socket-address') or []
            port = next((a.get('port') for a in addrs if a.get('port')), None)
            if not port:
                raise DestinationProblem("the destination QEMU reported no listening port: %s" % answers[-1])
            uri = 'tcp:%s:%s' % (host, port)
            if self.copies:
                self._start_mirrors(vm, host)
            params = {'downtime-limit': int(self.p['max_downtime_ms'] or 300),
                      'max-bandwidth': int(self.p['bandwidth_mib_s']) * MIB if self.p['bandwidth_mib_s'] else migration.NO_BANDWIDTH_LIMIT}
            if n > 1:
                params['multifd-channels'] = n
            migration.configure(vm, dict(caps, **{'auto-converge': bool(self.p['auto_converge']),
                                                  'pause-before-switchover': bool(self.copies)}), params)
            vm.qmp('migrate', uri=uri)
            info = self._watch(vm, t0)
        except BaseException as e:
            self._undo(vm, started)
            if isinstance(e, VmfleetError):
                src = self._source_state(vm)
                e.result.update(source_state=src, progress=dict(samples=self.samples),
                                duration_s=round(time.monotonic() - t0, 2))
            raise
        elapsed = time.monotonic() - t0
        # the destination runs (QEMU starts the guest once the state is in), the source may go
        end = time.monotonic() + 30
        state = None
        while time.monotonic() < end:
            state = self.remote.alive(self.dest_sock)
            if state in ('running', 'postmigrate') or state is None:
                break
            time.sleep(0.3)
        if self.copies:
            try:
                self.remote.qmp(self.dest_sock, [{'execute': 'nbd-server-stop'}], 'stopping the NBD server')
            except VmfleetError:
                pass
        if state != 'running':
            raise JobFailed("the migration completed but the destination QEMU is %s" % state,
                            hint="the source QEMU is kept (paused); look at the destination")
        vm.quit(min(30.0, self.deadline.remaining(5.0)))
        ram = info.get('ram', {})
        out = dict(migration_uri=uri, progress=dict(samples=self.samples), duration_s=round(elapsed, 2),
                   downtime_ms=info.get('downtime'), bytes=ram.get('transferred', 0), memory_bytes=ram.get('transferred'),
                   disk_bytes=sum(c.get('copied', 0) for c in self.copies), iterations=ram.get('dirty-sync-count'),
                   rate_mib_s=round(ram.get('transferred', 0) / float(MIB) / max(elapsed, 0.001), 1),
                   destination_state=state, source_state='gone')
        out['bytes'] += out['disk_bytes']
        out['mode'], out['why'] = self._mode(info)
        out['msg'] = "migrated '%s' to %s in %.1f s (%s, downtime %s ms)" % (
            vm.name, self.remote.host, elapsed, out['mode'], out['downtime_ms'])
        return out

    def _stop_leftover(self):
        """A QEMU still waiting for the guest on the destination socket (inmigrate: it never ran it) is
        what an earlier try left when it could not reach the destination to stop it (a cut link); the
        guest runs here, under this run's lock: stop it."""
        if self.remote.alive(self.dest_sock) != 'inmigrate':
            return
        self.remote.qmp(self.dest_sock, [{'execute': 'quit'}], 'stopping the destination QEMU an earlier try left')
        end = time.monotonic() + 30
        while self.remote.alive(self.dest_sock) is not None:
            if time.monotonic() > end:
                raise DestinationProblem("the QEMU an earlier try left waiting on %s at %s does not quit"
                                         % (self.dest_sock, self.remote.host), hint="stop it there, then run again")
            time.sleep(0.3)
        self.remote.ssh(self.remote.sudo + ['rm', '-f', self.dest_sock], 'removing the socket', check=False)

    def _watch(self, vm, t0):
        last = 0.0
        moved = (None, time.monotonic())  # bytes sent, and since when
        while True:
            info = vm.qmp('query-migrate')
            status = info.get('status')
            now = time.monotonic()
            stats = self._stats(info)
            sent = info.get('ram', {}).get('transferred')
            if sent != moved[0] or status not in ('active', 'postcopy-paused'):
                moved = (sent, now)
            elif status == 'postcopy-paused' and now - moved[1] > STALL_S:
                # past the switch the destination holds the guest's newest state: nothing may be
                # cancelled or stopped (see _undo); QEMU's postcopy recovery can resume it
                raise ConnectionFailed("the postcopy migration of '%s' to %s lost its stream (postcopy-paused for %d s): "
                                       "the guest's newest state is at the destination, paused; nothing was stopped"
                                       % (vm.name, self.remote.host, STALL_S),
                                       hint="once the network is back, resume it with QEMU's postcopy recovery "
                                            "(migrate-recover at the destination, then migrate with resume: true here)")
            elif now - moved[1] > STALL_S:
                # a cut link or a vanished host: TCP would wait many minutes before QEMU sees an error
                raise ConnectionFailed("the migration stream to %s stalled: nothing was sent for %d s (the network "
                                       "to the destination or the destination host is lost); it was cancelled and the "
                                       "VM runs on at the source" % (self.remote.host, STALL_S),
                                       hint="check the destination host and the network to it (migration_address %s)"
                                       % self.migration_address)
            if now - last >= SAMPLE_EVERY or not self.samples:
                self.samples.append(_sample(stats, t0))
                last = now
            if status == 'pre-switchover':
                # the guest is paused: the mirrors hold every write; end them (the copies consistent), go on
                self._end_mirrors(vm)
                vm.qmp('migrate-continue', state='pre-switchover')
            if status == 'completed':
                self.samples.append(dict(_sample(stats, t0), percent=100.0))
                return info
            if status in ('failed', 'cancelled'):
                raise JobFailed("migration to %s %s: %s" % (self.remote.host, status, info.get('error-desc', 'QEMU gave no reason')))
            if self.p['postcopy'] and self.postcopy_started is None and status == 'active':
                why = self._postcopy_due(stats, now - t0)
                if why:
                    vm.qmp('migrate-start-postcopy')
                    self.postcopy_started = why
            if self.deadline.expired() and self.postcopy_started is None:
                raise OperationTimeout("migration of '%s' to %s did not finish within %gs; it was cancelled and the VM "
                                       "runs on at the source" % (vm.name, self.remote.host, self.deadline.timeout),
                                       hint="give a longer timeout, a higher bandwidth_mib_s, auto_converge or postcopy")
            vm.wait_event(0.25)

    @staticmethod
    def _stats(info):
        ram = info.get('ram', {})
        return dict(memory_total=ram.get('total'), memory_remaining=ram.get('remaining'),
                    memory_bps=int(ram.get('mbps', 0) * 1000 * 1000 / 8), memory_iteration=ram.get('dirty-sync-count'),
                    memory_dirty_rate=ram.get('dirty-pages-rate'), memory_page_size=ram.get('page-size'),
                    auto_converge_throttle=info.get('cpu-throttle-percentage'))

    def _postcopy_due(self, stats, elapsed):
        return LibvirtMigration._postcopy_due(self, stats, elapsed)

    def _mode(self, info):
        if self.postcopy_started:
            return 'postcopy', 'switched to postcopy: ' + self.postcopy_started
        throttle = max([s.get('throttle_pct') or 0 for s in self.samples] or [0])
        passes = info.get('ram', {}).get('dirty-sync-count')
        if self.p['auto_converge'] and throttle:
            return 'auto-converge', ("precopy did not converge on its own: QEMU throttled the guest's CPUs up to %d%% "
                                     "(%s passes)" % (throttle, passes))
        return 'precopy', "precopy converged in %s pass(es) within the downtime limit" % passes

    def _undo(self, vm, started):
        """After a failure before the switch: the source's migration cancelled (its guest runs on),
        the destination QEMU stopped. Never after the switch to postcopy: the destination then
        holds the guest's newest state, and stopping it would lose the VM."""
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import qmp_migration as migration
        if self.postcopy_started:
            return
        try:
            status = vm.qmp('query-migrate').get('status')
            if status in migration.ACTIVE:
                migration.cancel(vm)
                end = time.monotonic() + 30
                while time.monotonic() < end and vm.qmp('query-migrate').get('status') in migration.ACTIVE:
                    time.sleep(0.2)
            migration.clear_stream_caps(vm)
            migration.set_capabilities(vm, {'pause-before-switchover': False})
        except VmfleetError:
            pass
        for job, node in getattr(self, 'nbd_nodes', []):
            for cmd, args in (('block-job-cancel', dict(device=job, force=True)), ('blockdev-del', dict(**{'node-name': node}))):
                end = time.monotonic() + 10
                while True:
                    try:
                        vm.qmp(cmd, **args)
                        break
                    except VmfleetError:
                        if cmd == 'block-job-cancel' or time.monotonic() > end:
                            break
                        time.sleep(0.2)  # the job lets go of its target as it ends
        if started:
            try:
                self.remote.qmp(self.dest_sock, [{'execute': 'quit'}], 'stopping the destination QEMU')
            except VmfleetError:
                pass
            try:
                self.remote.ssh(self.remote.sudo + ['rm', '-f', self.dest_sock], 'removing the socket', check=False)
            except VmfleetError:
                pass
        if getattr(self, 'images_made', None):
            try:
                self.remote.ssh(self.remote.sudo + ['rm', '-f', '--'] + self.images_made, 'removing the copies', check=False)
            except VmfleetError:
                pass

    # --- storage copy: QEMU's NBD server at the destination, block mirrors at the source ---
    def _copy_plan(self, vm):
        dest_dir = self.p.get('destination_dir')
        if not dest_dir:
            raise InvalidArgument("storage: copy of a raw QEMU VM needs destination_dir",
                                  hint="the destination QEMU opens the copies there")
        out = []
        # what each image holds on disk (a sparse or qcow2 image less than its virtual size)
        held = dict((b['inserted'].get('file'), b['inserted'].get('image', {}).get('actual-size'))
                    for b in vm.qmp('query-block') if b.get('inserted'))
        for d in vm.disks():
            if d.read_only or not d.file or not os.path.isabs(d.file):
                continue
            new = os.path.join(dest_dir, os.path.basename(d.file))
            if new == d.file:
                raise InvalidArgument("disk %s (%s) is already in destination_dir" % (d.name, d.file))
            node = d.node_name if d.node_name and not d.node_name.startswith('#') else d.name
            out.append(dict(target=d.name, node=node, source=d.file, destination=new, format=d.format,
                            size=d.virtual_size, held=held.get(d.file) or d.virtual_size))
        if not out:
            raise InvalidArgument("storage: copy, but VM '%s' has no writable file disk to copy" % vm.name)
        return out

    def _check_destination_images(self):
        paths = [c['destination'] for c in self.copies]
        out = self.remote.ssh(['sh', '-c', 'for f; do [ -e "$f" ] && echo "$f"; done; true', 'sh'] + paths,
                              'looking for the copies')
        if out.strip():
            raise TargetProblem("the destination image %s exists already at %s" % (out.split()[0], self.remote.host),
                                hint="remove it, or give another destination_dir (the copy never overwrites an image)")
        need = sum(c['held'] or 0 for c in self.copies)
        df = self.remote.ssh(['df', '-B1', '--output=avail', self.p['destination_dir']], 'reading the free space',
                             check=False).split()
        if len(df) >= 2 and df[-1].isdigit() and int(df[-1]) < need:
            raise SpaceTooSmall("not enough space in %s at %s: the disks hold %d KiB, %d KiB are free there"
                                % (self.p['destination_dir'], self.remote.host, need // 1024, int(df[-1]) // 1024),
                                hint="free space there or give another destination_dir")

    def _start_mirrors(self, vm, host):
        """The destination exports its (empty) copies over NBD; the source mirrors each disk into
        them while the guest runs, until every mirror is in sync."""
        port = None
        for attempt in range(8):
            port = 49152 + (os.getpid() * 7 + attempt * 997) % 16000
            try:
                self.remote.qmp(self.dest_sock, [{'execute': 'nbd-server-start', 'arguments': {
                    'addr': {'type': 'inet', 'data': {'host': self.migration_address, 'port': str(port)}}}}],
                    'starting the NBD server')
                break
            except DestinationProblem as e:
                if 'in use' not in str(e) and 'Address' not in str(e):
                    raise
        self.remote.qmp(self.dest_sock, [{'execute': 'nbd-server-add', 'arguments': {'device': c['node'], 'writable': True}}
                                         for c in self.copies], 'exporting the copies')
        for c in self.copies:
            node = 'vmfleet-migrate-%s' % c['target']
            job = 'vmfleet-migrate-%s' % c['target']
            vm.qmp('blockdev-add', **{'driver': 'nbd', 'node-name': node, 'export': c['node'],
                                      'server': {'type': 'inet', 'host': self.migration_address, 'port': str(port)}})
            self.nbd_nodes.append((job, node))
            vm.qmp('blockdev-mirror', **{'job-id': job, 'device': c['node'], 'target': node, 'sync': 'full',
                                         'auto-dismiss': True})
        while True:
            jobs = dict((j['device'], j) for j in vm.qmp('query-block-jobs'))
            mine = [jobs.get(job) for job, _node in self.nbd_nodes]
            if any(j is None for j in mine):
                raise JobFailed("a disk copy to %s ended before it was in sync" % self.remote.host)
            if all(j.get('ready') for j in mine):
                for c, j in zip(self.copies, mine):
                    c['copied'] = j.get('offset', 0)
                return
            if self.deadline.expired():
                raise OperationTimeout("the disk copies to %s were not in sync within %gs; cancelled, the VM runs on "
                                       "at the source" % (self.remote.host, self.deadline.timeout))
            vm.wait_event(0.25)

    def _end_mirrors(self, vm):
        for c, (job, _node) in zip(self.copies, self.nbd_nodes):
            for j in vm.qmp('query-block-jobs'):
                if j['device'] == job:
                    c['copied'] = j.get('offset', 0)
            vm.qmp('block-job-cancel', device=job)  # a ready mirror: completes, the copy in sync
        end = time.monotonic() + 60
        while any(j['device'] in [job for job, _n in self.nbd_nodes] for j in vm.qmp('query-block-jobs')):
            if time.monotonic() > end:
                raise JobFailed("the disk copies to %s did not end" % self.remote.host)
            time.sleep(0.05)
        for job, node in self.nbd_nodes:
            try:
                vm.qmp('blockdev-del', **{'node-name': node})
            except VmfleetError:
                pass
        self.nbd_nodes = []

    def _source_state(self, vm):
        try:
            return vm.qmp('query-status').get('status')
        except Exception:
            return 'unknown'


def migrate(module, p):
    """Move the VM ``p`` names (vm_migrate's options) to ``p['destination_uri']``; its result."""
    if p['storage'] == 'shared' and p.get('destination_dir'):
        raise InvalidArgument("destination_dir is for storage: copy; with shared storage the disks stay where they are")
    if p['parallel_connections'] < 1 or p['parallel_connections'] > 64:
        raise InvalidArgument("parallel_connections must be between 1 and 64, not %d" % p['parallel_connections'])
    if p.get('qmp_socket'):
        return QemuMigration(module, p).run()
    if p.get('destination_qmp_socket'):
        raise InvalidArgument("destination_qmp_socket is for a raw QEMU VM (qmp_socket)")
    return LibvirtMigration(module, p).run()


def ignore_hangup():
    """The controller may go away mid-run (killed, its SSH connection lost): the hangup must not kill
    the run halfway (a raw QEMU source left paused after the switch, copies half made); it ends
    as it would have, migrated or cancelled within its timeout."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def migrate_vm(module):
    ignore_hangup()
    return migrate(module, module.params)
