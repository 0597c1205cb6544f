# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""drive_mirror's driver for raw QEMU: blockdev-add the target,
blockdev-mirror, block-job-complete. The engine is drive_mirror.py."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.mirror_driver import MirrorDriver
from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.journal import same_file
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import OperationTimeout, QmpCommandError
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qmp_jobs import mirror_job_id
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import poll_until

POLL_S = 0.25


class QemuMirrorDriver(MirrorDriver):
    """Raw QEMU: blockdev-add the target, blockdev-mirror, block-job-complete.
    It has no persistent definition: its command line is the operator's."""

    route = 'qemu'

    @staticmethod
    def job_id(disk):
        return mirror_job_id(disk.name)

    @staticmethod
    def target_node(target):
        return 'vmfleet-t%s' % hashlib.sha1(os.path.realpath(target).encode('utf-8')).hexdigest()[:12]

    def job(self, disk, job_id=None):
        """Our job for ``disk``: dict(len, offset, ready, status, error, speed) or None."""
        jid = job_id or self.job_id(disk)
        out = None
        for j in self.vm.qmp('query-block-jobs'):
            if j.get('device') == jid:
                out = dict(id=jid, len=j.get('len', 0), offset=j.get('offset', 0), ready=bool(j.get('ready')),
                           status=j.get('status'), error=j.get('error'), speed=j.get('speed'))
        if out is None:
            # a concluded job (auto-dismiss off) is only in query-jobs
            for j in self.vm.qmp('query-jobs'):
                if j.get('id') == jid:
                    out = dict(id=jid, len=j.get('total-progress', 0), offset=j.get('current-progress', 0),
                               ready=False, status=j.get('status'), error=j.get('error'), speed=None)
        return out

    def _nodes(self):
        return dict((n.get('node-name'), n) for n in self.vm.qmp('query-named-block-nodes'))

    def _drop_nodes(self, target):
        base = self.target_node(target)
        nodes = self._nodes()
        for name in (base, base + '-file'):
            if name in nodes:
                try:
                    self.vm.qmp('blockdev-del', **{'node-name': name})
                except QmpCommandError:
                    pass

    def start(self, disk, target, fmt, sync, copy_mode, speed, granularity, buf_size, backing_node=None):
        base = self.target_node(target)
        self._drop_nodes(target)  # a run killed between blockdev-add and the mirror left them
        self.vm.qmp('blockdev-add', **{'driver': 'file', 'filename': target, 'node-name': base + '-file'})
        fmt_node = {'driver': fmt, 'file': base + '-file', 'node-name': base}
        if fmt == 'qcow2' and sync == 'top':
            if backing_node:
                fmt_node['backing'] = backing_node
        elif fmt == 'qcow2':
            fmt_node['backing'] = None
        try:
            self.vm.qmp('blockdev-add', **fmt_node)
            args = {'job-id': self.job_id(disk), 'device': disk.node_name, 'target': base,
                    'sync': sync, 'copy-mode': copy_mode, 'auto-dismiss': False}
            if speed:
                args['speed'] = speed
            if granularity:
                args['granularity'] = granularity
            if buf_size:
                args['buf-size'] = buf_size
            self.vm.qmp('blockdev-mirror', **args)
        except QmpCommandError:
            self._drop_nodes(target)
            raise
        return self.job_id(disk)

    def mirror_to_nbd(self, device, job_id, export, host, port, tls_creds=None):
        """Mirror node ``device`` into NBD ``export`` at ``host``:``port`` (a migration's copy at its
        destination), as job ``job_id`` that dismisses itself once ended; the target node's name.
        ``tls_creds``: the id of a client tls-creds-x509 object (the server's certificate names ``host``)."""
        node = {'driver': 'nbd', 'node-name': job_id, 'export': export,
                'server': {'type': 'inet', 'host': host, 'port': str(port)}}
        if tls_creds:
            node.update({'tls-creds': tls_creds, 'tls-hostname': host})
        self.vm.qmp('blockdev-add', **node)
        self.vm.qmp('blockdev-mirror', **{'job-id': job_id, 'device': device, 'target': job_id, 'sync': 'full',
                                          'auto-dismiss': True})
        return job_id

    def set_speed(self, job, speed):
        self.vm.qmp('block-job-set-speed', device=job['id'], speed=int(speed or 0))

    def dismiss(self, job):
        try:
            self.vm.qmp('job-dismiss', id=job['id'])
        except QmpCommandError:
            pass

    def _finish(self, job, deadline, what):
        """Wait for our job to conclude after complete/cancel; dismiss it."""
        seen = {}

        def ended():
            j = seen['job'] = self.job(None, job['id'])
            if j is None:
                return (None,)
            if j['status'] in ('concluded', 'null'):
                self.dismiss(j)
                return (j.get('error'),)
            return None

        return poll_until(ended, deadline, interval=POLL_S, wait=self.vm.wait_event, on_timeout=lambda: OperationTimeout(
            "%s: QEMU job %s did not end within %gs (status %s)"
            % (what, job['id'], deadline.timeout, seen['job']['status']), job=job['id']))[0]

    def complete(self, disk, job, deadline):
        self.vm.qmp('block-job-complete', device=job['id'])
        return self._finish(job, deadline, 'switching disk %s' % disk.name)

    def cancel(self, disk, job, deadline):
        if job['status'] not in ('concluded', 'null'):
            self.vm.qmp('block-job-cancel', device=job['id'])
        return self._finish(job, deadline, 'cancelling the mirror of disk %s' % disk.name)

    def stale_definition(self, disk, target, source):
        return ("QEMU '%s' now runs disk '%s' on %s, but its command line still names %s: change it before "
                "you next start QEMU yourself, or the VM would boot from the old image (vmfleet's own save, "
                "restore and revert relaunch it on the new one)"
                % (self.vm.name, disk.name, target, source or 'the old image'))

    def pause(self):
        self.vm.qmp('stop')

    def resume(self):
        self.vm.qmp('cont')

    def backing_node(self, disk):
        """The node of ``disk``'s backing file, which a ``sync: top`` target is opened on."""
        nodes = self.vm.qmp('query-named-block-nodes')
        for n in nodes:
            if n.get('node-name') == disk.node_name:
                bf = n.get('backing_file')
                for m in nodes:
                    if bf and same_file(m.get('file'), bf) and m.get('drv') not in ('file', 'host_device'):
                        return m.get('node-name')
        return None

    def nodes_for_verify(self, disk, target):
        return disk.node_name, self.target_node(target)

    def cleanup_after_cancel(self, target):
        self._drop_nodes(target)
