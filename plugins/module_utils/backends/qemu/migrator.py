# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_migrate's migrator for raw QEMU VMs: the destination QEMU is started there over SSH (remote.py),
from the source's recorded command line with ``-incoming defer``, then QEMU migrates to it; with
``storage: copy`` the destination exports its empty copies over NBD and the source mirrors each
disk into them first. The engine is migrate/vm_migration.py."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import socket
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import qmp_migration as migration
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.migration_tls_files import TLS_DIR, check_client_files
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.migrator import Migrator
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.remote import Remote
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.disk import Disk
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.addresses import bracketed
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    CapabilityMissing, ConnectionFailed, DestinationProblem, InvalidArgument, JobFailed, OperationTimeout, SpaceTooSmall, TargetProblem,
    VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline
from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.snapshot_files import SnapshotFiles

MIB = 1024 * 1024
# the tls-creds-x509 object this run adds to both QEMUs
TLS_ID = 'vmfleet-migrate-tls'
# a raw QEMU's precopy that sends nothing for this long has lost its destination (libvirt's own
# keepalive, 5 s x 5, finds a lost peer in about as long)
STALL_S = 30


def _tls_error(desc):
    """Whether QEMU's reason is about the TLS credentials or handshake."""
    low = (desc or '').lower()
    return any(w in low for w in ('tls', 'certificate', 'x509', 'handshake', 'issuer'))


def _stats(info):
    """query-migrate's answer in the keys of libvirt's job stats (what the engine's Progress reads)."""
    ram = info.get('ram', {})
    return dict(memory_total=ram.get('total'), memory_remaining=ram.get('remaining'),
                memory_bps=int(ram.get('mbps', 0) * 1000 * 1000 / 8), memory_iteration=ram.get('dirty-sync-count'),
                memory_dirty_rate=ram.get('dirty-pages-rate'), memory_page_size=ram.get('page-size'),
                auto_converge_throttle=info.get('cpu-throttle-percentage'))


class QemuMigrator(Migrator):
    """A raw QEMU VM moving to the host of ``destination_uri`` (``ssh://[USER@]HOST``)."""

    route = 'qemu-incoming'

    def __init__(self, module, params, deadline, vm=None):
        super(QemuMigrator, self).__init__(module, params, deadline, vm)
        self.sock = params['qmp_socket']
        self.dest_sock = params.get('destination_qmp_socket') or self.sock
        self.remote = Remote(params['destination_uri'], deadline, params.get('destination_python'))
        self.migration_address = params.get('migration_address') or self.remote.host
        self.what = "VM '%s'" % vm.name if vm is not None else "the VM of %s" % self.sock
        self.copies = []
        self.moved = []
        self.argv = None
        self.secrets = []
        self.images_made = []
        self.nbd_nodes = []
        self.driver = vm.mirror_driver() if vm is not None else None
        self.tls = bool(params.get('tls'))
        self.tls_dir = params.get('tls_dir') or TLS_DIR
        self.source_creds = False
        # the journal is known by the socket: a re-run may find no VM here to name it
        self.files = SnapshotFiles(params.get('memory_dir'), params.get('journal_dir'), self.sock, self.remote)

    @property
    def where(self):
        return self.remote.host

    def close(self):
        self.remote.close()

    def identity(self):
        return dict(qmp_socket=self.sock, destination_qmp_socket=self.dest_sock, backend='qemu')

    def runs_at_destination(self):
        # a QEMU waiting there for a guest (inmigrate) never ran it: an earlier try left it (see _stop_leftover)
        return self.remote.alive(self.dest_sock) not in (None, 'inmigrate')

    def destination_memory(self):
        return self.remote.available_memory()

    def plan(self):
        vm = self.vm
        record = vm.relaunch_record()
        if record.get('uid', 0) != 0:
            # the destination's QEMU is started through sudo: it would run as root, more than the one it replaces
            raise CapabilityMissing(
                "VM '%s' runs as uid %s, and vm_migrate would start its QEMU at the destination as root"
                % (vm.name, record['uid']),
                hint="nothing was changed; save it with vm_save to storage the destination sees and restore it there "
                     "with vm_restore, which relaunches QEMU as its own user, or run its QEMU as root")
        snapshots = self.files.plan(self.p['storage'], vm.name)
        self.copies = self._copy_plan(vm) if self.p['storage'] == 'copy' else []
        self.moved = [Disk(c['target'], c['node'], c['destination'], c['format'], c['size'], False) for c in self.copies]
        self.argv = proc.destination_argv(record['argv'], self.dest_sock, self.moved)
        self.secrets = proc.secret_values(self.argv)
        out = dict(route=self.route, vm=vm.name, destination_argv=proc.redact_argv(self.argv), tls=self.tls,
                   snapshots=snapshots)
        if self.tls:
            check_client_files(self.tls_dir, 'give tls_dir')
        if self.copies:
            self._check_destination_images()
            out['disks'] = [dict((k, c[k]) for k in ('target', 'source', 'destination', 'format')) for c in self.copies]
        return out

    def _caps(self):
        n = self.p['parallel_connections']
        return {'multifd': n > 1, 'postcopy-ram': bool(self.p['postcopy'])}

    def migrate(self, progress):
        vm, argv = self.vm, self.argv
        caps = self._caps()
        n = self.p['parallel_connections']
        progress.start()
        started = False
        try:
            self._stop_leftover()
            self.files.send(self._rewrite)
            if self.tls:
                self._add_source_creds(vm)
            for c in self.copies:
                self.remote.ssh(self.remote.sudo + ['qemu-img', 'create', '-q', '-f', c['format'], c['destination'],
                                                    str(c['size'])], 'creating %s' % c['destination'])
                self.images_made.append(c['destination'])
            self.remote.launch(argv, 'starting the destination QEMU', self.secrets)
            started = True
            host = bracketed(self.migration_address)
            setup = [{'execute': 'migrate-set-capabilities',
                      'arguments': {'capabilities': [{'capability': k, 'state': v} for k, v in sorted(caps.items())]}}]
            dest_params = {}
            if n > 1:
                dest_params['multifd-channels'] = n
            if self.tls:
                # the server: only a source with a client certificate of the fleet's CA gets in
                setup.insert(0, {'execute': 'object-add', 'arguments': {
                    'qom-type': 'tls-creds-x509', 'id': TLS_ID, 'dir': self.tls_dir, 'endpoint': 'server',
                    'verify-peer': True}})
                dest_params['tls-creds'] = TLS_ID
            if dest_params:
                setup.append({'execute': 'migrate-set-parameters', 'arguments': dest_params})
            setup += [{'execute': 'migrate-incoming', 'arguments': {'uri': 'tcp:%s:0' % host}},
                      {'execute': 'query-migrate'}]
            answers = self._prepare_destination(setup)
            if isinstance(answers, dict):
                raise DestinationProblem("the destination QEMU does not answer on %s: %s" % (self.dest_sock, answers['connect-error']))
            addrs = answers[-1].get('socket-address') or []
            port = next((a.get('port') for a in addrs if a.get('port')), None)
            if not port:
                raise DestinationProblem("the destination QEMU reported no listening port: %s" % answers[-1])
            uri = 'tcp:%s:%s' % (host, port)
            if self.copies:
                self._start_mirrors(vm)
            params = {'downtime-limit': int(self.p['max_downtime_ms'] or 300),
                      'max-bandwidth': int(self.p['bandwidth_mib_s']) * MIB if self.p['bandwidth_mib_s'] else migration.NO_BANDWIDTH_LIMIT}
            if n > 1:
                params['multifd-channels'] = n
            if self.tls:
                params.update({'tls-creds': TLS_ID, 'tls-hostname': self.migration_address})
            migration.configure(vm, dict(caps, **{'auto-converge': bool(self.p['auto_converge']),
                                                  'pause-before-switchover': bool(self.copies)}), params)
            vm.qmp('migrate', uri=uri)
            info = self._watch(vm, progress)
        except BaseException as e:
            self._undo(vm, started, progress)
            if isinstance(e, VmfleetError):
                e.result.update(source_state=self._source_state(vm), progress=progress.report(),
                                duration_s=round(progress.elapsed(), 2))
            raise
        elapsed = progress.elapsed()
        # the destination runs (QEMU starts the guest once the state is in), the source may go
        end = time.monotonic() + 30
        state = None
        while time.monotonic() < end:
            state = self.remote.alive(self.dest_sock)
            if state in ('running', 'postmigrate'):
                break
            # None: its monitor did not answer yet, busy taking in the last of the state (an answer
            # asked for at once after the source's end came too soon on a loaded host)
            time.sleep(0.3)
        if self.copies:
            try:
                self.remote.qmp(self.dest_sock, [{'execute': 'nbd-server-stop'}], 'stopping the NBD server')
            except VmfleetError:
                pass
        if self.tls and state == 'running':
            # the moved VM's QEMU keeps no TLS parameters: QEMU refuses mapped-ram (an instant snapshot,
            # a save) while tls-creds is set ("Mapped-ram only available for ... non-TLS")
            try:
                self.remote.qmp(self.dest_sock, [
                    {'execute': 'migrate-set-parameters', 'arguments': {'tls-creds': '', 'tls-hostname': ''}},
                    {'execute': 'object-del', 'arguments': {'id': TLS_ID}}], 'dropping the TLS credentials')
            except VmfleetError:
                pass  # a later save or migration clears the parameters itself (qmp_migration.configure)
        if state != 'running':
            raise JobFailed("the migration completed but the destination QEMU is %s" % state,
                            hint="the source QEMU is kept (paused); look at the destination")
        vm.quit(min(30.0, self.deadline.remaining(5.0)))
        carried = self.files.finish_moved(self.what, self.remote.host, destination_state='running', source_state='gone')
        ram = info.get('ram', {})
        out = dict(migration_uri=uri, progress=progress.report(), duration_s=round(elapsed, 2),
                   downtime_ms=info.get('downtime'), bytes=ram.get('transferred', 0), memory_bytes=ram.get('transferred'),
                   disk_bytes=sum(c.get('copied', 0) for c in self.copies), iterations=ram.get('dirty-sync-count'),
                   rate_mib_s=round(ram.get('transferred', 0) / float(MIB) / max(elapsed, 0.001), 1),
                   destination_state=state, source_state='gone', snapshots_carried=carried)
        out['bytes'] += out['disk_bytes']
        out['mode'], out['why'] = progress.mode(_stats(info))
        out['msg'] = "migrated '%s' to %s in %.1f s (%s, downtime %s ms)" % (
            vm.name, self.remote.host, elapsed, out['mode'], out['downtime_ms'])
        return out

    def _rewrite(self, kind, content):
        """A snapshot's manifest (instant) or record (external) as the destination needs it: the
        command line its revert relaunches names the QMP socket (and pidfile) the VM has there."""
        key = 'qemu' if kind == 'instant' else 'relaunch'
        record = dict(content[key])
        record['argv'] = proc.incoming_argv(proc.destination_argv(record['argv'], self.dest_sock))[:-2]
        vm_id = dict(content.get('vm') or {})
        if 'qmp_socket' in vm_id:
            vm_id['qmp_socket'] = self.dest_sock
        return dict(content, **{key: record, 'vm': vm_id})

    def recover(self):
        """A run killed while the snapshot files were on their way: finished where the VM runs."""
        if self.files.pending() is None:
            return None
        if self.vm is not None and self._source_state(self.vm) in ('running', 'paused'):
            return dict(snapshots_kept=self.files.undo())
        if self.remote.alive(self.dest_sock) in ('running', 'paused'):
            return dict(snapshots_carried=self.files.finish())
        raise self.files.stranded(self.what, self.remote.host)

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

    def _watch(self, vm, progress):
        moved = (None, time.monotonic())  # bytes sent, and since when
        while True:
            info = vm.qmp('query-migrate')
            status = info.get('status')
            now = time.monotonic()
            stats = _stats(info)
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
            progress.sample(stats)
            if status == 'pre-switchover':
                # the guest is paused: the mirrors hold every write; end them (the copies consistent), go on
                self._end_mirrors(vm)
                vm.qmp('migrate-continue', state='pre-switchover')
            if status == 'completed':
                progress.last(stats)
                return info
            if status in ('failed', 'cancelled'):
                desc = info.get('error-desc', 'QEMU gave no reason')
                early = not info.get('ram', {}).get('transferred')
                if self.tls and (_tls_error(desc) or early):
                    raise DestinationProblem(
                        "the TLS migration to %s (%s) failed %s: %s" % (
                            self.remote.host, self.migration_address,
                            'before any memory was sent, before the guest paused' if early else 'on its TLS channel', desc),
                        hint="the VM runs on at the source. This host's %s/client-cert.pem and %s's %s/server-cert.pem "
                             "(naming %s) must be signed by the one CA whose ca-cert.pem both hosts have in %s"
                             % (self.tls_dir, self.remote.host, self.tls_dir, self.migration_address, self.tls_dir))
                raise JobFailed("migration to %s %s: %s" % (self.remote.host, status, desc))
            why = progress.postcopy_due(stats) if status == 'active' else None
            if why:
                vm.qmp('migrate-start-postcopy')
                progress.switched(why)
            if progress.out_of_time():
                raise OperationTimeout("migration of '%s' to %s did not finish within %gs; it was cancelled and the VM "
                                       "runs on at the source" % (vm.name, self.remote.host, self.deadline.timeout),
                                       hint="give a longer timeout, a higher bandwidth_mib_s, auto_converge or postcopy")
            vm.wait_event(0.25)

    def _undo(self, vm, started, progress):
        """After a failure before the switch: the source's migration cancelled (its guest runs on),
        the destination QEMU stopped. Never after the switch to postcopy: the destination then
        holds the guest's newest state, and stopping it would lose the VM."""
        if progress.postcopy_started:
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
        self._drop_source_creds(vm)
        for job, node in self.nbd_nodes:
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
        try:
            self.files.undo()
        except VmfleetError:
            pass  # the journal stays: a re-run removes the copies
        if self.images_made:
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

    def _start_mirrors(self, vm):
        """The destination exports its (empty) copies over NBD; the source mirrors each disk into
        them while the guest runs, until every mirror is in sync."""
        port = None
        for attempt in range(8):
            port = 49152 + (os.getpid() * 7 + attempt * 997) % 16000
            try:
                args = {'addr': {'type': 'inet', 'data': {'host': self.migration_address, 'port': str(port)}}}
                if self.tls:
                    args['tls-creds'] = TLS_ID
                self.remote.qmp(self.dest_sock, [{'execute': 'nbd-server-start', 'arguments': args}],
                                'starting the NBD server')
                break
            except DestinationProblem as e:
                if 'in use' not in str(e) and 'Address' not in str(e):
                    raise
        self.remote.qmp(self.dest_sock, [{'execute': 'nbd-server-add', 'arguments': {'device': c['node'], 'writable': True}}
                                         for c in self.copies], 'exporting the copies')
        for c in self.copies:
            job = 'vmfleet-migrate-%s' % c['target']
            self.nbd_nodes.append((job, self.driver.mirror_to_nbd(c['node'], job, c['node'], self.migration_address, port,
                                                                  tls_creds=TLS_ID if self.tls else None)))
        while True:
            mine = [self.driver.job(None, job) for job, _node in self.nbd_nodes]
            if any(j is None or j['status'] == 'concluded' for j in mine):
                raise JobFailed("a disk copy to %s ended before it was in sync" % self.remote.host)
            if all(j['ready'] for j in mine):
                for c, j in zip(self.copies, mine):
                    c['copied'] = j['offset']
                return
            if self.deadline.expired():
                raise OperationTimeout("the disk copies to %s were not in sync within %gs; cancelled, the VM runs on "
                                       "at the source" % (self.remote.host, self.deadline.timeout))
            vm.wait_event(0.25)

    def _end_mirrors(self, vm):
        """The guest is paused: each ready mirror is cancelled, which leaves its copy in sync."""
        for c, disk, (job, _node) in zip(self.copies, self.moved, self.nbd_nodes):
            j = self.driver.job(None, job)
            if j is None:
                continue
            c['copied'] = j['offset']
            if self.driver.cancel(disk, j, Deadline(60)):
                raise JobFailed("the disk copy of %s to %s ended with an error" % (c['target'], self.remote.host))
        for job, node in self.nbd_nodes:
            try:
                vm.qmp('blockdev-del', **{'node-name': node})
            except VmfleetError:
                pass
        self.nbd_nodes = []

    # --- TLS: a tls-creds-x509 object on each QEMU, the source the client ---
    def _add_source_creds(self, vm):
        """The source QEMU's client credentials; QEMU reads and checks the files now (an expired
        certificate, a client certificate its CA did not sign fail here, nothing else changed yet)."""
        self._drop_source_creds(vm)  # what an earlier try left
        try:
            vm.qmp('object-add', **{'qom-type': 'tls-creds-x509', 'id': TLS_ID, 'dir': self.tls_dir,
                                    'endpoint': 'client', 'verify-peer': True})
        except VmfleetError as e:
            raise CapabilityMissing("tls: the certificates in %s at the source (%s) are not usable: %s"
                                    % (self.tls_dir, socket.gethostname(), e.msg),
                                    hint="nothing was changed; install valid certificates of the fleet's CA there")
        self.source_creds = True

    def _drop_source_creds(self, vm):
        if not self.source_creds and not self.tls:
            return
        for cmd, args in (('migrate-set-parameters', {'tls-creds': '', 'tls-hostname': ''}), ('object-del', {'id': TLS_ID})):
            try:
                vm.qmp(cmd, **args)
            except VmfleetError:
                pass
        self.source_creds = False

    def _prepare_destination(self, setup):
        try:
            return self.remote.qmp(self.dest_sock, setup, 'preparing the destination QEMU')
        except DestinationProblem as e:
            if not self.tls or 'object-add' not in e.msg:
                raise
            raise DestinationProblem("tls: the certificates in %s at the destination %s are not usable, before the guest paused: %s"
                                     % (self.tls_dir, self.remote.host, e.msg),
                                     hint="the VM runs on at the source; install ca-cert.pem, server-cert.pem and "
                                          "server-key.pem of the fleet's CA in %s there" % self.tls_dir)

    def _source_state(self, vm):
        try:
            return vm.qmp('query-status').get('status')
        except Exception:
            return 'unknown'
