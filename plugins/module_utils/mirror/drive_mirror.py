# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""drive_mirror, live storage migration (seed 003): copy a running VM's disk
to new storage, wait until source and target are in sync, then switch the VM
to the target.

The VM's backend gives the driver that does the block-level work
(``vm.mirror_driver()``: libvirt's block copy, or QEMU's blockdev-mirror).
This engine around it keeps the durable journal (drive_mirror_journal.py)
so that a re-run after any crash knows which image is live and carries on."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import qemu_img
from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror import journal as mj
from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.journal import same_file
from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.snapshot_carry import SnapshotCarry
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    InvalidArgument, JobFailed, OperationTimeout, SpaceTooSmall, TargetProblem, VmfleetError, VmGone,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until

POLL_S = 0.25
MIB = 1024.0 * 1024.0
# Besides the data, a qcow2 target needs its metadata (an L2 entry of 8 bytes
# per 64 KiB cluster, refcounts, header): a generous fixed and relative margin.
SPACE_MARGIN_BYTES = 4 << 20
SPACE_MARGIN_RATIO = 0.02


class DriveMirror(SnapshotCarry):
    def __init__(self, module, vm, params, check_mode=False):
        self.module = module
        self.vm = vm
        self.p = params
        self.check = check_mode
        self.deadline = Deadline(params['timeout'])
        self.driver = vm.mirror_driver()
        self.actions = []
        self.warnings = []
        self.progress = []
        self.t0 = time.monotonic()
        self.bytes_total = None
        self.bytes_copied = None
        self.copy_started = None
        self.copy_ready = None
        self.paused_ms = None
        self.verified = None
        self.changed = False
        self.dropped = []
        self.carried = []
        self.sync = params['sync']
        self.carrying = None

    # -- helpers --
    def _act(self, action, **kw):
        kw['action'] = action
        self.actions.append(kw)
        self.changed = True

    def _log(self, msg):
        if getattr(self.module, '_verbosity', 0) >= 3:
            self.module.log('vmfleet.kvm.drive_mirror: %s' % msg)

    def _img_info(self, path, fmt, chain=False):
        return qemu_img.image_info(self.module, path, fmt, chain=chain)

    def _result(self, disk_now, journal, target_live):
        dur = time.monotonic() - self.t0
        copy_s = None
        if self.copy_started is not None and self.copy_ready is not None:
            copy_s = self.copy_ready - self.copy_started
        rate = None
        if self.bytes_copied and copy_s and copy_s > 0:
            rate = round(self.bytes_copied / MIB / copy_s, 2)
        r = dict(changed=self.changed, actions=self.actions, disk=self.disk.name,
                 source=journal.get('source') if journal.exists else self.disk.file,
                 target=self.target, live_file=disk_now.file if disk_now else None,
                 on_target=target_live, route=self.driver.route,
                 bytes_total=self.bytes_total, bytes_copied=self.bytes_copied,
                 duration_s=round(dur, 3), copy_s=round(copy_s, 3) if copy_s is not None else None,
                 rate_mib_s=rate, paused_ms=self.paused_ms, verified=self.verified,
                 journal=journal.to_dict() if journal.exists else None,
                 snapshots_dropped=self.dropped, snapshots_carried=self.carried)
        if self.progress:
            r['progress'] = self.progress
        return r

    # -- checks before anything is touched --
    def _check_target(self, journal):
        target = self.target
        tdir = os.path.dirname(target)
        if not os.path.isdir(tdir):
            raise TargetProblem("the directory %s of mirror target %s does not exist" % (tdir, target),
                                hint="create it (with room for the disk) or choose another target path")
        if not os.access(tdir, os.W_OK | os.X_OK):
            raise TargetProblem("the directory %s of mirror target %s is not writable" % (tdir, target),
                                hint="fix its permissions or choose another target path")
        ours = journal.exists and same_file(journal.get('target'), target) and journal.get('created_target')
        exists = os.path.lexists(target)
        if exists and not os.path.isfile(target):
            raise TargetProblem("mirror target %s exists and is not a regular file" % target,
                                hint="choose a file path")
        if same_file(target, self.disk.file):
            raise InvalidArgument("target %s is the disk's own source image" % target,
                                  hint="choose a path on the new storage")
        for d in self.all_disks:
            if same_file(target, d.file):
                raise InvalidArgument("target %s is the image of disk '%s' of VM '%s'" % (target, d.name, self.vm.name),
                                      hint="choose a path no VM disk uses")
        if self.p['create_target']:
            if exists and not ours and not self.p['overwrite']:
                raise TargetProblem("mirror target %s already exists and was not created by this mirror" % target,
                                    hint="remove it, choose another path, or set overwrite: true to replace it")
        elif not exists:
            raise TargetProblem("mirror target %s does not exist and create_target is false" % target,
                                hint="create the image first, or set create_target: true")
        return exists, ours

    def _space(self, exists):
        """Bytes the copy needs on the target filesystem vs what is free there."""
        chain = self._img_info(self.disk.file, self.disk.format, chain=True)
        vsize = chain[0].get('virtual-size') or self.disk.virtual_size or 0
        layers = chain[:1] if self.sync == 'top' else chain
        data = min(sum(int(i.get('actual-size') or 0) for i in layers), vsize)
        need = int(data * (1 + SPACE_MARGIN_RATIO)) + SPACE_MARGIN_BYTES
        st = os.statvfs(os.path.dirname(self.target))
        free = st.f_bavail * st.f_frsize
        if exists and self.p['create_target']:
            free += os.stat(self.target).st_blocks * 512  # recreated: its space comes back
        return chain, vsize, need, free

    # -- main entry --
    def run(self):
        p = self.p
        self.target = os.path.abspath(p['target'])
        if not self.vm.is_running():
            raise InvalidArgument("VM '%s' is %s; a live mirror needs it running or paused" % (self.vm.name, self.vm.state()),
                                  hint="start it, or copy its images offline with qemu-img convert")
        self.all_disks = self.vm.disks()
        self.disk = self.vm.disk(p['disk'], self.all_disks)
        if self.disk.read_only:
            raise InvalidArgument("disk '%s' of VM '%s' is read-only" % (self.disk.name, self.vm.name),
                                  hint="a read-only disk needs no live mirror; copy its image with qemu-img")
        if not self.disk.file:
            raise InvalidArgument("disk '%s' of VM '%s' has no image file" % (self.disk.name, self.vm.name))
        journal = mj.Journal.open(p['journal_dir'], self.vm.name, self.disk.name, create_dir=not self.check)
        self.journal = journal
        if journal.exists and journal.phase in mj.ACTIVE and journal.get('target') \
                and not same_file(journal.get('target'), self.target):
            job = self.driver.job(self.disk, journal.get('job_id'))
            if job is not None:
                raise InvalidArgument(
                    "disk '%s' of VM '%s' is being mirrored to %s (journal %s, phase %s), not to %s"
                    % (self.disk.name, self.vm.name, journal.get('target'), journal.path, journal.phase, self.target),
                    hint="finish or cancel that mirror first (state: cancelled, target: %s)" % journal.get('target'))
        state = p['state']
        if same_file(self.disk.file, self.target):
            return self._on_target(journal)
        if state == 'cancelled':
            return self._cancel(journal)
        return self._mirror(journal)

    # -- the VM already runs on the target --
    def _on_target(self, journal):
        p = self.p
        if p['state'] == 'cancelled':
            raise InvalidArgument("disk '%s' of VM '%s' already runs on %s; there is no mirror to cancel"
                                  % (self.disk.name, self.vm.name, self.target),
                                  hint="to go back, mirror it to its old image with state: pivoted")
        if journal.exists and same_file(journal.get('target'), self.target) and journal.phase not in mj.TARGET_LIVE:
            # killed between the switch and its record: the VM proves it now
            if not self.check:
                journal.record(mj.SWITCHED, note='found the VM running on the target on a re-run')
            self._act('record_switch', note='the VM ran on the target; the journal said %s' % journal.phase)
        fmt = self.disk.format
        cfg = self.driver.config_source(self.disk)
        if cfg is not None and not same_file(cfg, self.target):
            self._act('update_config', before=cfg, after=self.target)
            if not self.check:
                try:
                    self.driver.update_config(self.disk, self.target, fmt)
                except VmfleetError as e:
                    raise VmfleetError(
                        "disk '%s' of VM '%s' runs on %s but its persistent definition still names %s: %s"
                        % (self.disk.name, self.vm.name, self.target, cfg, e.msg),
                        hint="re-run to retry; until then a restart of the domain would use the old image",
                        **self._result(self.disk, journal, True))
                if journal.exists:
                    journal.record(mj.CONFIG_UPDATED, note='the module rewrote the persistent definition')
        elif cfg is not None and journal.exists and journal.phase == mj.SWITCHED and not self.check:
            journal.record(mj.CONFIG_UPDATED, note='checked: the persistent definition names the target '
                                                   '(libvirt updated it at the pivot)')
        self._carry(journal)
        if journal.exists and same_file(journal.get('target'), self.target) and journal.phase != mj.DONE \
                and not self.check:
            journal.record(mj.DONE)
        self._config_warning()
        return self._result(self.disk, journal, True)

    def _config_warning(self):
        warning = self.driver.stale_definition(self.disk, self.target, self.journal.get('source'))
        if warning:
            self.warnings.append(warning)

    # -- cancel --
    def _cancel(self, journal):
        job = self.driver.job(self.disk, journal.get('job_id'))
        if job is not None and job.get('foreign'):
            raise InvalidArgument("disk '%s' of VM '%s' runs a block job that is not a copy (%s)"
                                  % (self.disk.name, self.vm.name, job['id']), hint="leave it alone")
        if job is not None:
            self._act('cancel', job=job['id'])
            if not self.check:
                self.driver.cancel(self.disk, job, self.deadline)
                self.driver.cleanup_after_cancel(self.target)
                if journal.exists:
                    journal.record(mj.CANCELLED, note='cancelled on request; the VM stays on its source')
        elif journal.exists and journal.phase in mj.ACTIVE and not self.check:
            journal.record(mj.CANCELLED, note='no job was running')
            self.changed = True
        if self.p['remove_target'] and os.path.lexists(self.target):
            ours = journal.exists and same_file(journal.get('target'), self.target) and journal.get('created_target')
            if not ours:
                raise TargetProblem("mirror target %s was not created by this mirror; it is left in place"
                                    % self.target, hint="remove it yourself if it is not needed",
                                    **self._result(self.disk, journal, False))
            self._act('remove_target', path=self.target)
            if not self.check:
                os.unlink(self.target)
                durable.fsync_dir(os.path.dirname(self.target))
                journal.update(target_removed=True)
        return self._result(self.disk, journal, False)

    # -- ready / pivoted --
    def _mirror(self, journal):
        p = self.p
        job = self.driver.job(self.disk, journal.get('job_id') if journal.exists else None)
        if job is not None and job.get('foreign'):
            raise InvalidArgument("disk '%s' of VM '%s' already runs a block job (%s)" % (self.disk.name, self.vm.name, job['id']),
                                  hint="wait for it to finish or abort it, then re-run")
        if job is not None:
            jt = self.driver.job_target(self.disk) or (journal.get('target') if journal.exists else None)
            if jt and not same_file(jt, self.target):
                raise InvalidArgument("disk '%s' of VM '%s' is already being copied to %s, not %s"
                                      % (self.disk.name, self.vm.name, jt, self.target),
                                      hint="cancel that copy first (state: cancelled, target: %s)" % jt)
            if job['status'] == 'concluded':
                # it ended while nobody watched (a failure; a completion would have switched the disk)
                if not self.check:
                    self.driver.dismiss(job)
                    self.driver.cleanup_after_cancel(self.target)
                    if journal.exists:
                        journal.record(mj.FAILED, note='found the job ended: %s' % (job.get('error') or 'no error given'))
                job = None
        if journal.exists and journal.phase == mj.SWITCHING and job is None:
            if not self.check:
                journal.record(mj.FAILED, note=('re-run: the VM still runs on the source and the job is gone; '
                                                'the switch did not happen'))
        fmt = p['target_format'] or self.disk.format
        if job is None:
            self._snapshots_guard()
            job = self._start(journal, fmt)
            if job is None:  # check mode
                return self._predict(journal)
        else:
            if not job['ready']:
                self._act('adopt', job=job['id'])
            if not job['ready'] and not self.check:
                journal.record(mj.COPYING, note='re-run: adopted the running job %s' % job['id'])
                self.driver.set_speed(job, p['speed'])
            self.copy_started = time.monotonic()
        if self.check:
            return self._predict(journal, job)
        job = self._wait_ready(job, journal)
        if p['state'] == 'ready':
            return self._result(self.disk, journal, False)
        # one taken while the copy ran would be left behind too
        self._snapshots_guard(job)
        return self._switch(job, journal, fmt)

    def _predict(self, journal, job=None):
        if self.p['state'] == 'pivoted':
            self._act('switch', to=self.target)
            if self.driver.keeps_config:
                self._act('update_config', after=self.target)
            if self.carrying:
                self._act('carry_snapshot', name=self.carrying, overlay=self.target)
                self.carried.append(self.carrying)
        elif job is None or not job['ready']:
            self._act('wait_ready')
        return self._result(self.disk, journal, False)

    def _start(self, journal, fmt):
        p = self.p
        exists, ours = self._check_target(journal)
        chain, vsize, need, free = self._space(exists)
        self.bytes_total = vsize
        if p['create_target'] and need > free:
            raise SpaceTooSmall(
                "the filesystem of mirror target %s has %.1f MiB free; copying disk '%s' (%s, %.1f MiB of data) "
                "needs about %.1f MiB" % (self.target, free / MIB, self.disk.name, self.disk.file,
                                          (need - SPACE_MARGIN_BYTES) / MIB, need / MIB),
                hint="free space there or choose a target on a larger filesystem; nothing was started",
                space_needed=need, space_free=free)
        if not p['create_target']:
            try:
                info = self._img_info(self.target, fmt)
            except VmfleetError as e:
                raise TargetProblem("mirror target %s is not a %s image (%s)" % (self.target, fmt, e.msg),
                                    hint="set target_format to its format, or create the image in that format")
            if (info.get('virtual-size') or 0) < vsize:
                raise TargetProblem("mirror target %s holds %d bytes, less than disk '%s' (%d)"
                                    % (self.target, info.get('virtual-size') or 0, self.disk.name, vsize),
                                    hint="grow it with qemu-img resize or let the module create it")
        backing = chain[0].get('full-backing-filename') if self.sync == 'top' else None
        backing_fmt = chain[0].get('backing-filename-format') if backing else None
        if backing and fmt != 'qcow2':
            raise InvalidArgument("sync: top keeps the backing file %s, which a %s target cannot reference"
                                  % (backing, fmt), hint="use target_format: qcow2 or sync: full")
        if p['create_target']:
            self._act('create_target', path=self.target, format=fmt, size=vsize, backing=backing)
        if backing and not p['create_target']:
            have = info.get('full-backing-filename')
            if not same_file(have, backing):
                raise TargetProblem("mirror target %s has backing file %s, not %s (the image under disk '%s')"
                                    % (self.target, have or 'none', backing, self.disk.name),
                                    hint="create it with qemu-img create -f qcow2 -b %s -F %s, or let the module "
                                         "create it" % (backing, backing_fmt or 'raw'))
        self._act('start_copy', source=self.disk.file, target=self.target, sync=self.sync, copy_mode=p['copy_mode'])
        if self.check:
            return None
        journal.start(vm=self.vm.name, backend=self.vm.backend, disk=self.disk.name, source=self.disk.file,
                      source_format=self.disk.format, target=self.target, target_format=fmt, sync=self.sync,
                      copy_mode=p['copy_mode'], created_target=bool(ours), job_id=None,
                      config_before=self.driver.config_source(self.disk))
        journal.record(mj.PLANNED, space_needed=need, space_free=free)
        if p['create_target']:
            self._create_target(fmt, vsize, backing, backing_fmt)
            journal.record(mj.TARGET_CREATED, created_target=True)
        backing_node = self.driver.backing_node(self.disk) if backing else None
        try:
            job_id = self.driver.start(self.disk, self.target, fmt, self.sync, p['copy_mode'], p['speed'],
                                       p['granularity'], p['buf_size'], backing_node)
        except VmfleetError as e:
            journal.record(mj.FAILED, note='the job did not start: %s' % e.msg)
            raise JobFailed("the mirror of disk '%s' to %s did not start: %s" % (self.disk.name, self.target, e.msg),
                            hint="the VM runs on its source, unchanged", **self._result(self.disk, journal, False))
        journal.record(mj.COPYING, job_id=job_id)
        self.copy_started = time.monotonic()
        job = self.driver.job(self.disk, job_id)
        if job is None:
            raise JobFailed("the mirror job of disk '%s' vanished right after it started" % self.disk.name,
                            hint="the VM runs on its source; check the QEMU/libvirt log",
                            **self._result(self.disk, journal, False))
        return job

    def _create_target(self, fmt, vsize, backing, backing_fmt):
        if os.path.lexists(self.target):
            os.unlink(self.target)  # ours, or overwrite: true
        try:
            # private from its first byte: qemu-img then formats the file that is there, keeping its mode
            os.close(durable.create_exclusive(self.target))
            qemu_img.create(self.module, self.target, fmt, vsize, backing, backing_fmt)
        except (OSError, VmfleetError) as e:
            raise TargetProblem("cannot create mirror target %s: %s" % (self.target, getattr(e, 'msg', None) or e),
                                hint="check the target filesystem; nothing was started")
        durable.fsync_dir(os.path.dirname(self.target))

    def _wait_ready(self, job, journal):
        seen = {'logged': 0}

        def ready():
            j = seen['job'] = self.driver.job(self.disk, job['id'])
            if j is None or j['status'] == 'concluded':
                self._ended_early(j, journal)
            self.bytes_total = j['len']
            self.bytes_copied = j['offset']
            now = time.monotonic()
            if now - seen['logged'] >= 1.0:
                seen['logged'] = now
                self._report_progress(now, j)
            if not j['ready']:
                return None
            self.copy_ready = now
            if journal.phase != mj.READY:
                journal.record(mj.READY)
                self.changed = True
            return j

        return poll_until(ready, self.deadline, interval=POLL_S, wait=self.vm.wait_event,
                          on_timeout=lambda: self._timed_out(seen['job'], journal))

    def _ended_early(self, j, journal):
        err = (j or {}).get('error')
        if j is not None:
            self.driver.dismiss(j)
        self.driver.cleanup_after_cancel(self.target)
        live = self.vm.disk(self.disk.name).file
        journal.record(mj.FAILED, note='the job ended before it was ready: %s' % (err or 'no error given'))
        raise JobFailed(
            "the mirror of disk '%s' of VM '%s' to %s failed: %s" % (
                self.disk.name, self.vm.name, self.target, err or self.driver.silent_failure),
            hint="the VM keeps running on %s; check space and health of the target storage, then re-run"
                 % live, **self._result(self.disk, journal, False))

    def _report_progress(self, now, j):
        pct = 100.0 * j['offset'] / j['len'] if j['len'] else 0.0
        if getattr(self.module, '_verbosity', 0) >= 3:
            self.progress.append(dict(t=round(now - self.t0, 2), bytes_copied=j['offset'], bytes_total=j['len'],
                                      percent=round(pct, 1), ready=j['ready']))
        self._log('disk %s: %.1f%% (%d of %d bytes)' % (self.disk.name, pct, j['offset'], j['len']))

    def _timed_out(self, job, journal):
        """The timeout's error, once the job was cancelled if so asked."""
        pct = 100.0 * job['offset'] / job['len'] if job['len'] else 0.0
        if self.p['cancel_on_timeout']:
            self.driver.cancel(self.disk, job, Deadline(60))
            self.driver.cleanup_after_cancel(self.target)
            journal.record(mj.CANCELLED, note='timeout after %gs at %.1f%%' % (self.p['timeout'], pct))
            msg = "the job was cancelled (cancel_on_timeout); the VM runs on its source"
        else:
            msg = ("job %s is left running; re-run to wait for it and switch, or cancel it with state: cancelled"
                   % job['id'])
        return OperationTimeout(
            "the mirror of disk '%s' of VM '%s' to %s was not in sync within %gs (%.1f%% copied)"
            % (self.disk.name, self.vm.name, self.target, self.p['timeout'], pct),
            hint=msg, **self._result(self.disk, journal, False))

    def _switch(self, job, journal, fmt):
        p = self.p
        paused = False
        t_pause = None
        try:
            if p['verify']:
                self.driver.pause()
                paused = True
                t_pause = time.monotonic()
                job = self._converged(job)
                self._verify(job)
            # Durable before the switch: from here on, until proven, either image may be live.
            journal.record(mj.SWITCHING)
            err = self.driver.complete(self.disk, job, self.deadline)
        finally:
            if paused:
                try:
                    self.driver.resume()
                finally:
                    self.paused_ms = round((time.monotonic() - t_pause) * 1000.0, 1)
        now = self.vm.disk(self.disk.name)
        if not same_file(now.file, self.target):
            journal.record(mj.FAILED, note='the switch did not happen: %s' % (err or 'the VM still runs on the source'))
            raise JobFailed("disk '%s' of VM '%s' did not switch to %s: %s"
                            % (self.disk.name, self.vm.name, self.target, err or 'it still runs on %s' % now.file),
                            hint="the VM keeps running on its source; the target is left as it is",
                            **self._result(now, journal, False))
        self._act('switch', to=self.target)
        journal.record(mj.SWITCHED, live_file=now.file)
        self.disk = now
        return self._on_target(journal)

    def _converged(self, job):
        """With the guest paused, wait until the job has nothing left to copy."""
        def converged():
            j = self.driver.job(self.disk, job['id'])
            if j is None:
                raise JobFailed("the mirror job of disk '%s' ended while the guest was paused for verify"
                                % self.disk.name, hint="the VM resumes on its source; re-run")
            return j if j['ready'] and j['offset'] == j['len'] else None

        return poll_until(converged, self.deadline, interval=0.05, on_timeout=lambda: OperationTimeout(
            "disk '%s' did not converge within the timeout while paused for verify" % self.disk.name,
            hint="the job is left running; the VM resumes on its source"))

    def _verify(self, job):
        """Compare source and target images while the guest is paused and the
        job has nothing left to copy. The mirror target refuses a second
        reader inside QEMU, so both images are flushed (the qcow2 metadata QEMU
        caches must reach the files) and compared from the host."""
        src_node, tgt_node = self.driver.nodes_for_verify(self.disk, self.target)
        for node in (src_node, tgt_node):
            # HMP qemu-io on a node takes no permissions: a plain flush
            self.vm.qmp('human-monitor-command', **{'command-line': 'qemu-io -d %s "flush"' % node})
        fmt = self.p['target_format'] or self.disk.format

        # QEMU holds the target's lock against readers until the switch; the
        # guest is paused, the job idle and both images flushed, so the files
        # are what the guest would read: read them without the lock.
        rc, said = qemu_img.compare_unlocked(self.module, self.disk.file, self.disk.format, self.target, fmt)
        if rc not in (0, 1):
            raise JobFailed("verify: cannot compare source and target of disk '%s': %s"
                            % (self.disk.name, said or 'qemu-img compare rc %d' % rc),
                            hint="nothing was switched; the VM resumes on its source and job %s is left running "
                                 "(re-run without verify, or cancel it with state: cancelled)" % job['id'])
        if rc == 0:
            self.verified = True
            self._act('verify', result='identical')
            return
        self.verified = False
        raise JobFailed("verify: source and target of disk '%s' differ (%s)"
                        % (self.disk.name, said or 'qemu-img compare rc %d' % rc),
                        hint="nothing was switched; the VM resumes on its source and job %s is left running "
                             "(cancel it with state: cancelled)" % job['id'])


def drive_mirror(module, vm, params, check_mode=False):
    engine = DriveMirror(module, vm, params, check_mode)
    try:
        result = engine.run()
    except VmGone as e:
        j = getattr(engine, 'journal', None)
        e.hint = ("the journal %s records phase '%s': it says which image holds the newest data; "
                  "start the VM on that image and re-run" % (j.path, j.phase)) if j is not None and j.exists else e.hint
        raise
    for w in engine.warnings:
        module.warn(w)
    return result
