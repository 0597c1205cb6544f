# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_migrate's migrator for libvirt domains: peer to peer, the source libvirtd connects to the
destination's libvirtd itself (``destination_uri``, ``qemu+ssh://`` or ``qemu+tcp://``), QEMU
sends memory (and with ``storage: copy`` the disks, over NBD + block mirror) straight to the
destination QEMU at ``migration_address``. The engine is migrate/vm_migration.py.

With ``storage: copy`` the destination images must not exist yet; libvirt creates them only
inside a storage pool, so this run makes them in one (a transient pool when none is there)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os
import threading
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from ansible.module_utils.six.moves.urllib.parse import urlparse

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.connection import (
    close_quietly, connect, domain_running, event_loop, find_domain, release, remote_connection,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.snapshot_carry import (
    SnapshotCarry, snapshot_names,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.migration_tls_files import check_client_files, libvirt_tls_dir
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.migrator import Migrator
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.remote import Remote
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.addresses import (
    bracketed, destination_host, is_ip, parse, user_at,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    ConnectionFailed, DestinationProblem, InvalidArgument, JobFailed, OperationTimeout, SpaceTooSmall, TargetProblem,
    VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.snapshot_files import SnapshotFiles

try:
    import libvirt
except ImportError:  # open_vm reported it already (missing_required_lib)
    pass

MIB = 1024 * 1024


def _tls_error(msg):
    """Whether libvirt's or QEMU's message is about the TLS credentials or handshake."""
    low = (msg or '').lower()
    return any(w in low for w in ('tls', 'certificate', 'x509', 'handshake', 'ca-cert', '-cert.pem', '-key.pem'))


def _ssh_of(uri, deadline):
    """The destination host's SSH (as the source's root reaches it), for the snapshot files: a
    ``+ssh`` URI's user and port are SSH's, another transport's port is libvirt's."""
    try:
        u = parse(uri)
    except InvalidArgument:
        return None  # no host to reach: refused only if there are snapshot files to carry (SnapshotFiles.plan)
    ssh = 'ssh://%s' % user_at(u.hostname, u.username)
    if u.scheme.endswith('+ssh') and u.port:
        ssh += ':%d' % u.port
    return Remote(ssh, deadline, reuse=True)


def destination_uri(host, user=None):
    """The libvirt of ``host`` (inventory values, checked), as the source's root reaches it over SSH."""
    return 'qemu+ssh://%s/system' % user_at(host, user)


class LibvirtMigrator(Migrator):
    """One libvirt domain moving to ``destination_uri``."""

    route = 'libvirt-p2p'

    def __init__(self, module, params, deadline, vm=None):
        super(LibvirtMigrator, self).__init__(module, params, deadline, vm)
        if params.get('destination_qmp_socket'):
            raise InvalidArgument("destination_qmp_socket is for a raw QEMU VM (qmp_socket)")
        if params.get('tls_dir'):
            raise InvalidArgument("tls_dir is for a raw QEMU VM (qmp_socket); libvirt reads the certificates from "
                                  "migrate_tls_x509_cert_dir in each host's qemu.conf (default /etc/pki/qemu)",
                                  hint="leave tls_dir out, or set migrate_tls_x509_cert_dir at both hosts")
        self.name = vm.name if vm is not None else params['domain']
        self.what = "libvirt domain '%s'" % self.name
        self.dest_uri = params['destination_uri']
        self.migration_address = params.get('migration_address') or destination_host(self.dest_uri)
        self.completed_stats = None
        self.src = self.dom = self.dst = None
        self.pool = None          # the destination's storage pool for copied disks
        self.pool_made = False    # a transient pool this run made (destroyed at the end; files stay)
        self.volumes_made = []    # images this run created at the destination (removed on failure)
        self.plan_ = None
        self.carry = SnapshotCarry(params.get('journal_dir'), self.name)
        # instant snapshots' memory files and manifests (snapshot/instant.py), which libvirt does not know
        self.files = SnapshotFiles(params.get('memory_dir'), params.get('journal_dir'), self.name,
                                   _ssh_of(self.dest_uri, deadline))
        if vm is not None:
            # a connection of its own, opened after the event loop: the job-completed event comes on it
            event_loop()
            self.src = connect(params['uri'])
            self.dom = find_domain(self.src, self.name)
        try:
            self.dst = remote_connection(self.dest_uri, deadline, 'the destination libvirt')
        except BaseException:
            self.close()
            raise

    def close(self):
        self._drop_pool()
        if self.files.remote is not None:
            self.files.remote.close()  # its SSH connection, if the snapshot files needed one
        if self.src is not None:
            close_quietly(self.src)
        if self.dst is not None:
            release(self.dst)

    def identity(self):
        return dict(domain=self.name, source_uri=self.p['uri'], backend='libvirt')

    def runs_at_destination(self):
        return domain_running(find_domain(self.dst, self.name))

    def destination_memory(self):
        """Free memory, buffers and page cache, as the destination's libvirt reads /proc/meminfo.
        MemFree alone (getFreeMemory) would turn away a host whose idle RAM sits in page cache, as
        it does on any hypervisor that has run a while."""
        stats = self.dst.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        return sum(stats.get(k, 0) for k in ('free', 'buffers', 'cached')) * 1024

    def plan(self):
        """The flags and parameters of the migration; with storage copy, its checks."""
        dom = self.dom
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
        if self.p['persistent']:
            flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
        if self.p['undefine_source']:
            flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        params = {libvirt.VIR_MIGRATE_PARAM_URI: 'tcp://%s' % bracketed(self.migration_address)}
        if self.p['bandwidth_mib_s']:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(self.p['bandwidth_mib_s'])
        if self.p['parallel_connections'] > 1:
            flags |= libvirt.VIR_MIGRATE_PARALLEL
            params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = int(self.p['parallel_connections'])
        if self.p['auto_converge']:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if self.p['postcopy']:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        if self.p.get('tls'):
            flags |= libvirt.VIR_MIGRATE_TLS
            if not urlparse(self.p['uri']).hostname:
                # the source libvirt is this host's: its files checked before anything changes (libvirt
                # finds a missing one only as the migration starts, and reports it like the destination's)
                check_client_files(libvirt_tls_dir(), "set migrate_tls_x509_cert_dir in this host's qemu.conf")
        if is_ip(self.migration_address):
            # the destination QEMU's incoming port (and NBD server) on that address only, not libvirt's default (all)
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = self.migration_address
        report = dict(route=self.route, migration_uri=params[libvirt.VIR_MIGRATE_PARAM_URI], tls=bool(self.p.get('tls')))
        disks = []
        snaps = snapshot_names(dom)
        report['snapshots'] = snaps
        report['snapshot_files'] = self.files.plan(self.p['storage'], self.name)
        if self.p['storage'] == 'copy':
            self._refuse_snapshots_copy(snaps)
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
        self.plan_ = dict(flags=flags, params=params, report=report, disks=disks)
        return report

    def migrate(self, progress):
        carried = None
        try:
            # the memory files there before the domain goes (libvirt's identity: the manifest needs no rewrite)
            self.files.send(lambda kind, content: content)
            if self.plan_['disks']:
                self._create_images(self.plan_['disks'])
            if self.plan_['report']['snapshots']:
                # libvirt migrates no domain with snapshot metadata: it moves around the migration
                carried = self.carry.take(self.dom, self.dest_uri)
            out = self._migrate(self.dom, self.plan_, progress)
        except BaseException as e:
            self._remove_images()
            if carried:
                self._put_back_after_failure(e)
            try:
                if not self.runs_at_destination():
                    self.files.undo()
            except Exception:
                pass  # the journal stays: a re-run, which finds where the domain runs, finishes or removes the copies
            raise
        if carried:
            there = find_domain(self.dst, self.name)
            out['snapshots_defined'] = self.carry.put_back(there, self.dest_uri)
        out['snapshots_carried'] = self.files.finish_moved(self.what, self.dest_uri, **out)
        return out

    def _put_back_after_failure(self, e):
        """The migration failed: the metadata goes back to the source (where the domain runs on)."""
        try:
            done = self._put_back_where_it_runs(source_first=True)
        except VmfleetError as e2:
            if isinstance(e, VmfleetError):
                e.msg += '; %s' % e2.msg
                e.hint = e2.hint
            return
        if isinstance(e, VmfleetError):
            e.result.update(done)

    def recover(self):
        """A run killed after it removed the snapshot metadata, or while the instant snapshots' files
        were on their way: finished where the domain runs."""
        done = {}
        if self.files.pending() is not None:
            if self.runs_at_destination():
                done['snapshots_carried'] = self.files.finish()
            elif self.dom is not None and domain_running(self.dom):
                done['snapshots_kept'] = self.files.undo()
            else:
                raise self.files.stranded("domain '%s'" % self.name, self.dest_uri)
        if self.carry.pending() is not None:
            done.update(self._put_back_where_it_runs())
        return done or None

    def _put_back_where_it_runs(self, source_first=False):
        places = [(self.dst, self.dest_uri), (self.src, self.p['uri'])]
        for conn, where in (reversed(places) if source_first else places):
            try:
                dom = find_domain(conn, self.name) if conn is not None else None
            except libvirt.libvirtError:
                continue  # that libvirtd is gone
            if domain_running(dom):
                return dict(snapshots_defined=self.carry.put_back(dom, where), snapshots_defined_at=where)
        raise JobFailed("domain '%s' runs neither here nor at %s: its snapshots' metadata is kept in %s"
                        % (self.name, self.dest_uri, self.carry.path),
                        hint="start it where it should run, then run the task again to define its snapshots there")

    def _refuse_snapshots_copy(self, snaps):
        """A copy of the disks carries their active data only: internal snapshots would stay behind."""
        held = set(snaps)
        if self.vm is not None:
            held.update(s['name'] for s in self.vm.snapshots())
        if held:
            raise InvalidArgument(
                "storage: copy cannot carry the snapshots of domain '%s' (%s): the copy takes the disks' active data "
                "only" % (self.name, ', '.join(sorted(held))),
                hint="nothing was changed; migrate it with shared storage (its snapshots then go with it), or delete "
                     "them first")

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

    def _migrate(self, dom, plan, progress):
        if self.p['max_downtime_ms']:
            dom.migrateSetMaxDowntime(int(self.p['max_downtime_ms']), 0)
        cb = self.src.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed, None)
        box = {}

        def target():
            try:
                box['dom'] = dom.migrateToURI3(self.dest_uri, plan['params'], plan['flags'])
            except libvirt.libvirtError as e:
                box['error'] = e

        progress.start()
        th = threading.Thread(target=target, name='migrate')
        th.daemon = True
        th.start()
        aborted = None
        try:
            while th.is_alive():
                th.join(0.2)
                if not th.is_alive():
                    break
                stats = self._job_stats(dom)
                if stats:
                    progress.sample(stats)
                why = progress.postcopy_due(stats)
                if why:
                    try:
                        dom.migrateStartPostCopy(0)
                        progress.switched(why)
                    except libvirt.libvirtError:
                        pass  # the migration may just have finished precopy
                if aborted is None and progress.out_of_time():
                    aborted = time.monotonic()
                    try:
                        dom.abortJob()
                    except libvirt.libvirtError:
                        pass
                if aborted is not None and time.monotonic() - aborted > 120:
                    break
        finally:
            th.join(5)
            elapsed = progress.elapsed()
            # the completed event may trail the call's return by a moment
            end = time.monotonic() + 2
            while self.completed_stats is None and time.monotonic() < end and 'error' not in box:
                time.sleep(0.05)
            try:
                self.src.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass
        if 'error' in box or aborted is not None:
            state = 'running' if domain_running(find_domain(self.src, self.name)) else 'unknown'
            partial = dict(progress=progress.report(), duration_s=round(elapsed, 2), source_state=state, **plan['report'])
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

    def _failed_job(self):
        """The stats of the migration job that just failed ({} when libvirt keeps none)."""
        try:
            d = find_domain(self.src, self.name)
            return d.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED) if d is not None else {}
        except libvirt.libvirtError:
            return {}

    def _failure(self, e, partial):
        code = e.get_error_code()
        msg = e.get_error_message()
        if code == libvirt.VIR_ERR_OPERATION_INVALID and 'VIR_MIGRATE_TLS' in msg and not self.p.get('tls'):
            # qemu.conf's migrate_tls_force: the SOURCE libvirtd checks it as the migration begins, before
            # anything of the domain moves (libvirt's qemuMigrationSrcBegin); a destination's does not
            return InvalidArgument(
                "the libvirtd of this host (the source) migrates domains only over TLS (migrate_tls_force in its "
                "qemu.conf): the migration of '%s' to %s without tls was refused before it began: %s"
                % (self.name, self.dest_uri, msg),
                hint="give tls: true (vmfleet_migration_tls for host_evacuate and host_maintenance), with the fleet's "
                     "migration certificates on both hosts; the domain runs on at the source", **partial)
        if self.p.get('tls'):
            # the source QEMU's reason (a handshake refused) is in the failed job's stats; libvirt's own
            # message may only say that the destination QEMU went away (it quits on a refused handshake)
            failed = self._failed_job()
            qemu_msg = failed.get('errmsg') or ''
            if qemu_msg and qemu_msg not in msg:
                msg = '%s; QEMU: %s' % (msg, qemu_msg)
            early = not failed.get('memory_processed') and partial.get('source_state') == 'running'
            if _tls_error(msg) or early:
                return DestinationProblem(
                    "the TLS migration of '%s' to %s failed %s: %s"
                    % (self.name, self.dest_uri, 'before any memory was sent, before the guest paused' if early
                       else 'on its TLS channel', msg),
                    hint="the domain runs on at the source when source_state says running. Each host needs, in "
                         "libvirt's migrate_tls_x509_cert_dir (default /etc/pki/qemu), ca-cert.pem (the fleet's one "
                         "CA), server-cert.pem/server-key.pem naming the host's migration address (%s at the "
                         "destination) and client-cert.pem/client-key.pem, all signed by that CA and readable by "
                         "libvirt's QEMU user; a destination that refuses this host's certificate shows as the "
                         "destination QEMU closing the connection" % self.migration_address, **partial)
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
                d = find_domain(conn, self.name)
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
            progress.last(stats)
        there = find_domain(self.dst, self.name)
        out = dict(plan['report'], progress=progress.report(), duration_s=round(elapsed, 2),
                   downtime_ms=stats.get('downtime'),
                   bytes=stats.get('memory_processed', 0) + stats.get('disk_processed', 0),
                   memory_bytes=stats.get('memory_processed'), disk_bytes=stats.get('disk_processed'),
                   iterations=stats.get('memory_iteration'),
                   rate_mib_s=round((stats.get('memory_processed', 0) + stats.get('disk_processed', 0))
                                    / float(MIB) / max(elapsed, 0.001), 1),
                   destination_state='running' if domain_running(there) else 'not running',
                   destination_persistent=bool(there is not None and there.isPersistent()),
                   source_defined=find_domain(self.src, self.name) is not None)
        out['mode'], out['why'] = progress.mode(stats)
        if out['destination_state'] != 'running':
            raise JobFailed("libvirt reported the migration of '%s' done, but it does not run at %s"
                            % (self.name, self.dest_uri), **out)
        out['msg'] = "migrated '%s' to %s in %.1f s (%s, downtime %s ms)" % (
            self.name, self.dest_uri, elapsed, out['mode'], out['downtime_ms'])
        return out
