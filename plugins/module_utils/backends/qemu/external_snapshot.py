# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""External snapshots of a raw QEMU VM, over QMP alone.

- **Create**: a qcow2 overlay per disk (``qemu-img create -b <image> -F <format> -u``: the
  running QEMU holds the image's lock, so its size is given, not read), ``blockdev-add``
  (``backing: null``), then one ``transaction`` of ``blockdev-snapshot`` actions: every
  disk switches at one instant. With memory, the instant way (snapshot/instant.py): the
  guest paused only around that transaction, its RAM written by a background-snapshot
  migration while it runs on. The record (external_record.py) is written last.
- **Revert**: QEMU quits, each overlay of the snapshot is made anew (empty: the writes
  since are dropped), the recorded command line is started again, the chain is built
  again on it over QMP (older snapshots' overlays, then the fresh one) and the memory
  file is loaded; without memory the guest boots again from its disks (cold: started
  with ``-S``, the chain built, then ``cont``). Only the newest snapshot of a chain
  can be reverted: reverting an older one would drop the newer ones' overlays.
- **Delete**: ``block-commit`` of each overlay into the image under it. The newest
  snapshot's overlay is the active layer: the job becomes ready and ``job-complete``
  pivots the disk live onto that image. An older snapshot's overlay sits in the middle
  of the chain: an intermediate commit (``top-node`` it, ``base-node`` the image under
  it), after which the overlay above it reads from that image and its snapshot's record
  says so. A journal written before the first job makes it crash-safe: the job runs on
  in QEMU when the module dies; a re-run finds it by its id (or the disk already off the
  overlay, in that same QEMU) and carries on, and an overlay is removed only once no
  disk reads it any more.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os
import re
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import external_record as store
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process as proc
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import qemu_img
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    CapabilityMissing, InvalidArgument, JobFailed, OperationTimeout, QmpCommandError, SnapshotInconsistent,
    VmfleetError,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store
from ansible_collections.vmfleet.kvm.plugins.module_utils.snapshot.instant import DEFAULT_MEMORY_DIR, InstantSnapshots

KIND = 'external'
# what create, revert and delete run on QEMU
COMMANDS = ('blockdev-add', 'blockdev-del', 'transaction', 'block-commit', 'job-complete', 'query-jobs',
            'query-named-block-nodes')
# A test-only brake on the commit jobs (bytes/s), so that a test can kill the module while one runs.
SPEED_ENV = 'VMFLEET_TEST_COMMIT_SPEED'


def overlay_node(name, disk):
    """The block node of snapshot ``name``'s overlay on ``disk``: QEMU allows 31 characters,
    and every run (a revert's relaunch, a re-run of a delete) must find the same one."""
    return 'vmfx-' + hashlib.sha1(('%s\0%s' % (name, disk)).encode('utf-8')).hexdigest()[:20]


def commit_job_id(disk):
    """The same on every run, so a re-run finds the job a killed one left running."""
    return 'vmfleet-commit-%s' % re.sub(r'[^A-Za-z0-9_-]', '_', disk)


def chain_files(image):
    """The files of a disk's backing chain, top first (from query-block's ``image``)."""
    out = []
    while image:
        out.append(image.get('filename'))
        image = image.get('backing-image')
    return out


class QemuExternal(object):
    """The external snapshots of one raw QEMU VM (a QemuVm)."""

    def __init__(self, vm, memory_dir=None):
        self.vm = vm
        self.memory_dir = memory_dir or vm.module.params.get('memory_dir') or DEFAULT_MEMORY_DIR

    # -- what QEMU runs on now --
    def _chains(self):
        """{disk name: its backing chain's files, top first}."""
        from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.vm import qdev_disk_name
        out = {}
        for dev in self.vm.qmp('query-block'):
            ins = dev.get('inserted')
            if ins:
                out[qdev_disk_name(dev)] = chain_files(ins.get('image'))
        return out

    def _node_names(self):
        return set(n.get('node-name') for n in self.vm.qmp('query-named-block-nodes', flat=True))

    def _job(self, job_id):
        return next((j for j in self.vm.qmp('query-jobs') if j['id'] == job_id), None)

    # -- listing --
    def records(self):
        return store.records(self.memory_dir, self.vm.name)

    def describe(self, r, chains):
        problems = []
        if store.read_journal(self.memory_dir, self.vm.name, r['name']) is not None:
            problems.append("a delete of it was interrupted; run state: absent again to finish it")
        for d in r['disks']:
            ov = r['overlays'][d]
            if not os.path.exists(ov):
                problems.append("overlay %s of disk %s is gone" % (ov, d))
            elif ov not in chains.get(d, []):
                problems.append("disk %s does not run on overlay %s (it runs on %s)"
                                % (d, ov, (chains.get(d) or ['nothing'])[0]))
        mem = r.get('memory_file')
        size = None
        if mem:
            try:
                size = os.path.getsize(mem)
            except OSError:
                problems.append("memory file %s is gone" % mem)
            else:
                if size != r.get('memory_bytes'):
                    problems.append("memory file %s has %d bytes, %s were written" % (mem, size, r.get('memory_bytes')))
        out = dict(name=r['name'], mode=KIND, disks=list(r['disks']), overlays=dict(r['overlays']),
                   bases=dict((d, b['file']) for d, b in r['bases'].items()),
                   memory_file=mem, vm_state_size=size or 0, nvram_copy=None, date=r['date'],
                   parent=r.get('parent'), paused_ms=r.get('paused_ms'), consistent=not problems)
        if problems:
            out['problem'] = "; ".join(problems)
        return out

    def snapshots(self):
        recs = self.records()
        if not recs:
            return []
        chains = self._chains()
        return [self.describe(r, chains) for r in recs]

    # -- checks, before anything changes --
    def check(self, disks, memory, quiesce):
        vm = self.vm
        have = set(c['name'] for c in vm.qmp('query-commands'))
        missing = [c for c in COMMANDS if c not in have]
        if missing:
            raise CapabilityMissing("QEMU %s of VM '%s' lacks %s, which external snapshots need"
                                    % (vm.qemu_version(), vm.name, ", ".join(missing)),
                                    hint="nothing was changed; QEMU >= 6.0 has them all")
        d = self.memory_dir
        if not os.path.isabs(d) or not os.path.isdir(d) or not os.access(d, os.W_OK | os.X_OK):
            raise InvalidArgument("memory_dir %s is not an existing, writable, absolute directory" % d,
                                  hint="nothing was changed; the external snapshot's record (and memory) goes there")
        for r in self.records():
            if store.read_journal(d, vm.name, r['name']) is not None:
                raise SnapshotInconsistent("a delete of external snapshot '%s' of VM '%s' was interrupted"
                                           % (r['name'], vm.name),
                                           hint="nothing was changed; run it again (state: absent) first")
        busy = vm.qmp('query-block-jobs')
        if busy:
            raise InvalidArgument("VM '%s' runs block job %s" % (vm.name, busy[0].get('device')),
                                  hint="nothing was changed; wait for it to end")
        if not self.records():
            vm.relaunch_record()  # a revert relaunches it: the command line must be readable now
        if memory:
            InstantSnapshots(vm, 60, d).check_can_snapshot()

    # -- create --
    def _make_overlay(self, path, disk, uid):
        qemu_img.create(self.vm.module, path, 'qcow2', disk.virtual_size, backing=disk.file,
                        backing_fmt=disk.format, unsafe=True)
        os.chmod(path, 0o600)
        proc.give_to(path, uid)  # QEMU opens it as its own user

    def create(self, name, disks, overlays, memory, deadline):
        vm = self.vm
        chain = self.records()
        parent = chain[-1] if chain else None
        # a disk already on an overlay: the command line names its first image still, as the chain's first record
        relaunch = dict(parent['relaunch']) if parent else vm.relaunch_record()
        uid = vm.owner_uid()
        nodes = dict((d.name, overlay_node(name, d.name)) for d in disks)
        bases = dict((d.name, dict(file=d.file, format=d.format, node=d.node_name)) for d in disks)
        mem = store.memory_path(self.memory_dir, vm.name, name) if memory else None
        created, added = [], []
        switched = False
        out = dict(route='qmp')
        try:
            for d in disks:
                self._make_overlay(overlays[d.name], d, uid)
                created.append(overlays[d.name])
            for d in disks:
                vm.qmp('blockdev-add', **{'driver': 'qcow2', 'node-name': nodes[d.name], 'backing': None,
                                          'file': {'driver': 'file', 'filename': overlays[d.name]}})
                added.append(nodes[d.name])
            actions = [{'type': 'blockdev-snapshot', 'data': {'node': d.node_name, 'overlay': nodes[d.name]}}
                       for d in disks]
            state = vm.state()
            if memory:
                measured, mem_info, memory_format = self._switch_with_memory(actions, mem, deadline)
                switched = True
                info = dict(memory_bytes=os.path.getsize(mem), memory_format=memory_format,
                            ram_bytes=mem_info.get('ram', {}).get('total'))
            else:
                # a disk-only transaction drains the disks' I/O, the guest runs on
                vm.qmp('transaction', actions=actions)
                switched = True
                measured, info = 0, {}
            record = dict(kind=KIND, name=name, vm=vm.identity(), seq=time.time(),
                          date=time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime()),
                          parent=parent['name'] if parent else None,
                          disks=[d.name for d in disks], overlays=dict((d.name, overlays[d.name]) for d in disks),
                          nodes=nodes, bases=bases, memory_file=mem, state_at_snapshot=state,
                          paused_ms=measured, relaunch=relaunch, **info)
            store.write_record(self.memory_dir, record)
        except BaseException as e:
            self._undo_create(name, disks, overlays, nodes, bases, switched, added, created, mem)
            if isinstance(e, VmfleetError):
                e.msg += "; the external snapshot was undone, nothing changed"
            raise
        out['paused_ms'] = measured
        if memory:
            out['ram_bytes'] = info.get('ram_bytes')
        return out

    def _switch_with_memory(self, actions, mem, deadline):
        """The instant way (InstantSnapshots.moment): paused, the disks switched, the RAM's
        background write started, resumed; then the memory file completed."""
        inst = InstantSnapshots(self.vm, deadline.remaining(1.0), self.memory_dir)
        inst.deadline = deadline
        caps = inst.check_can_snapshot()
        tmp = mem + manifest_store.PARTIAL
        manifest_store.remove_unlocked([tmp])
        fd = manifest_store.create_locked(tmp)
        try:
            measured, info, _was_running = inst.moment(actions, tmp, fd, caps)
            os.chown(tmp, os.geteuid(), os.getegid())
            os.chmod(tmp, 0o600)
            os.rename(tmp, mem)
            durable.fsync_dir(self.memory_dir)
        except BaseException:
            manifest_store.remove([tmp, mem])
            raise
        finally:
            os.close(fd)
        return measured, info, inst.memory_format()

    def _undo_create(self, name, disks, overlays, nodes, bases, switched, added, created, mem):
        """A create that failed half-way leaves the VM as it found it: on its images, every guest write kept."""
        try:
            if switched:
                rec = dict(name=name, disks=[d.name for d in disks], overlays=overlays, nodes=nodes, bases=bases,
                           memory_file=None)
                self.delete(rec, Deadline(300), chain=[rec])
                return
            for n in added:
                self.vm.qmp('blockdev-del', **{'node-name': n})
            manifest_store.remove(created + ([mem] if mem else []))
        except Exception:  # the first error is the one to report
            pass

    # -- revert --
    def revert(self, snap, deadline):
        vm = self.vm
        chain = self.records()
        names = [r['name'] for r in chain]
        rec = chain[names.index(snap['name'])]
        newer = names[names.index(rec['name']) + 1:]
        if newer:
            raise InvalidArgument("external snapshot '%s' of VM '%s' has newer snapshots over it (%s): reverting it "
                                  "would drop their overlays" % (rec['name'], vm.name, ", ".join(newer)),
                                  hint="nothing was changed; delete the newer ones first (state: absent), or revert "
                                       "the newest")
        record = dict(rec['relaunch'])
        vm.check_relaunch(record, "external snapshot '%s'" % rec['name'])
        for d, b in rec['bases'].items():
            if not os.path.exists(b['file']):
                raise SnapshotInconsistent("image %s under the overlay of disk %s is gone" % (b['file'], d),
                                           hint="nothing was changed; the snapshot cannot be reverted")
        memory = rec.get('memory_file')
        state = vm.state()
        if state not in ('running', 'paused') or vm.holds_no_guest():
            state = rec.get('state_at_snapshot', 'running')
        uid = vm.owner_uid()
        disks = dict((d.name, d) for d in vm.disks())
        sizes = dict((d, disks[d].virtual_size) for d in rec['disks'])
        # the memory file read and readied for its loader while the VM still runs
        pages = type(vm).prepare_memory(memory, rec.get('memory_format', 'stream')) if memory else None
        # each overlay made anew, empty, over the same image (the writes since the snapshot are dropped): beside
        # the old one while the VM still runs, so that a failure here leaves it running as it was
        fresh = dict((d, rec['overlays'][d] + '.fresh') for d in rec['disks'])
        try:
            for d in rec['disks']:
                manifest_store.remove([fresh[d]])
                qemu_img.create(vm.module, fresh[d], 'qcow2', sizes[d], backing=rec['bases'][d]['file'],
                                backing_fmt=rec['bases'][d]['format'], unsafe=True)
                os.chmod(fresh[d], 0o600)
                proc.give_to(fresh[d], uid)
        except BaseException:
            manifest_store.remove(list(fresh.values()))
            raise
        t0 = time.monotonic()
        vm.quit(min(30.0, deadline.remaining(5.0)))
        exited_at = time.monotonic()
        for d in rec['disks']:
            os.rename(fresh[d], rec['overlays'][d])
        durable.fsync_dir(os.path.dirname(rec['overlays'][rec['disks'][0]]))
        loaded = {}

        def load(new):
            for r in chain:
                cur = dict((d.name, d) for d in new.disks())
                for d in r['disks']:
                    new.qmp('blockdev-add', **{'driver': 'qcow2', 'node-name': r['nodes'][d], 'backing': None,
                                               'file': {'driver': 'file', 'filename': r['overlays'][d]}})
                new.qmp('transaction', actions=[
                    {'type': 'blockdev-snapshot', 'data': {'node': cur[d].node_name, 'overlay': r['nodes'][d]}}
                    for d in r['disks']])
            if memory:
                loaded.update(type(vm).load_memory(new, memory, rec.get('memory_format', 'stream'), deadline,
                                                   exited_at=exited_at, pages=pages))
        sock = proc.qmp_socket_of(record['argv'])
        out = type(vm).relaunch(vm.module, record, sock, sock + '.log', deadline, load,
                                state if memory else 'running', cold=not memory)
        # the handle follows the relaunched QEMU: the module reads the VM's state from it
        vm.client = type(vm).connect(vm.module, sock, deadline.remaining(5.0)).client
        return dict(out, route='qemu-relaunch', booted=not memory, paused_ms=round((time.monotonic() - t0) * 1000.0, 1),
                    **loaded)

    # -- delete --
    def delete(self, snap, deadline, chain=None):
        """Commit ``snap``'s overlays into the images under them (``chain``: the records, when
        ``snap`` has none yet: a create undoing itself)."""
        vm = self.vm
        chain = chain or self.records()
        names = [r['name'] for r in chain]
        rec = chain[names.index(snap['name'])]
        above = chain[names.index(rec['name']) + 1:]
        journal = store.read_journal(self.memory_dir, vm.name, rec['name'])
        pid = vm.pid()
        if journal is None:
            journal = dict(name=rec['name'], pid=pid, disks={})
            for d in rec['disks']:
                upper = next((r for r in above if d in r['disks']), None)
                journal['disks'][d] = dict(overlay=rec['overlays'][d], node=rec['nodes'][d],
                                           base=rec['bases'][d], upper=upper['name'] if upper else None,
                                           phase='committing')
            # durable before the first job starts: a re-run after a kill carries on from here
            store.write_journal(self.memory_dir, vm.name, journal)
        speed = int(os.environ.get(SPEED_ENV) or 0)
        t0 = time.monotonic()
        for d, j in sorted(journal['disks'].items()):
            self._commit_disk(d, j, journal, pid, speed, deadline)
        committed_s = round(time.monotonic() - t0, 3)
        nodes = self._node_names()
        for d, j in journal['disks'].items():
            if j['node'] in nodes:
                vm.qmp('blockdev-del', **{'node-name': j['node']})
        # the snapshot above an overlay committed in the middle now reads the image under it
        for r in above:
            moved = [d for d, j in journal['disks'].items() if j['upper'] == r['name']]
            if moved:
                r = dict(r, bases=dict(r['bases'], **dict((d, journal['disks'][d]['base']) for d in moved)))
                if r.get('parent') == rec['name']:
                    r['parent'] = rec.get('parent')
                store.write_record(self.memory_dir, r)
        files = [j['overlay'] for j in journal['disks'].values()] + ([rec['memory_file']] if rec.get('memory_file') else [])
        store.remove(self.memory_dir, files)
        store.remove(self.memory_dir, [store.record_path(self.memory_dir, vm.name, rec['name'])])
        store.remove(self.memory_dir, [store.journal_path(self.memory_dir, vm.name, rec['name'])])
        return dict(route='qmp', commit_s=committed_s)

    def _commit_disk(self, d, j, journal, pid, speed, deadline):
        vm = self.vm
        job_id = commit_job_id(d)
        if j['phase'] == 'done':
            return
        chain = self._chains().get(d)
        if chain is None:
            raise SnapshotInconsistent("VM '%s' has no disk %s any more" % (vm.name, d),
                                       hint="its overlay %s is kept; merge it by hand" % j['overlay'])
        job = self._job(job_id)
        if j['overlay'] not in chain and job is None:
            if journal['pid'] != pid:
                raise SnapshotInconsistent(
                    "disk %s of VM '%s' no longer reads overlay %s, but its QEMU is not the one the delete started "
                    "on (pid %s, now %s): whether every write reached %s is unknown"
                    % (d, vm.name, j['overlay'], journal['pid'], pid, j['base']['file']),
                    hint="nothing was removed; check the image, then remove the overlay and %s by hand"
                         % store.journal_path(self.memory_dir, vm.name, journal['name']))
            self._phase(journal, d, 'done')  # committed and switched in this QEMU: by this delete's job
            return
        active = chain[0] == j['overlay']
        what = "committing overlay %s of disk %s into %s" % (j['overlay'], d, j['base']['file'])
        if job is not None:
            # a killed run's job, adopted: at this run's pace (a test brake on it is lifted)
            vm.qmp('block-job-set-speed', device=job_id, speed=speed)
        else:
            top = next(dv for dv in vm.disks() if dv.name == d).node_name
            args = {'job-id': job_id, 'device': top, 'base-node': j['base']['node'], 'auto-dismiss': False}
            if not active:
                args['top-node'] = j['node']
            if speed:
                args['speed'] = speed
            vm.qmp('block-commit', **args)
        asked = []

        def probe():
            job = self._job(job_id)
            if job is None:
                raise JobFailed("%s: QEMU job %s vanished" % (what, job_id))
            if job['status'] == 'ready' and not asked:
                # in sync: the pivot onto the image under the overlay, live
                self._phase(journal, d, 'completing')
                vm.qmp('job-complete', id=job_id)
                asked.append(True)
                return None
            if job['status'] == 'concluded':
                try:
                    vm.qmp('job-dismiss', id=job_id)
                except QmpCommandError:
                    pass
                if job.get('error'):
                    raise JobFailed("%s failed: %s" % (what, job['error']), job_id=job_id,
                                    hint="the VM runs on; the overlay keeps every write; run state: absent again")
                return True
            return None
        poll_until(probe, deadline, interval=0.1, wait=vm.wait_event, on_timeout=lambda: OperationTimeout(
            "%s did not finish within %gs; QEMU job %s runs on" % (what, deadline.timeout, job_id),
            hint="run state: absent again (it carries on), with a larger timeout"))
        if j['overlay'] in (self._chains().get(d) or []):
            raise JobFailed("%s: the job ended but the disk still reads the overlay" % what,
                            hint="nothing was removed; run state: absent again")
        self._phase(journal, d, 'done')

    def _phase(self, journal, d, phase):
        journal['disks'][d]['phase'] = phase
        store.write_journal(self.memory_dir, self.vm.name, journal)

    # -- a storage move of the top overlay (drive_mirror) --
    def moved(self, disk, old, new):
        """drive_mirror switched ``disk`` (as it runs now) off overlay ``old`` onto its copy ``new``,
        over the same image: the record whose overlay ``old`` was names ``new`` and its node now. The
        old overlay's node is let go first (QEMU holds the file open until then), the record last."""
        from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.journal import same_file
        done = []
        for r in self.records():
            if disk.name not in r['disks'] or not same_file(r['overlays'][disk.name], old):
                continue
            was = r['nodes'][disk.name]
            if was != disk.node_name and was in self._node_names():
                try:
                    self.vm.qmp('blockdev-del', **{'node-name': was})
                except QmpCommandError:
                    pass  # still referenced: QEMU keeps the old file open, nothing reads it
            r = dict(r, overlays=dict(r['overlays'], **{disk.name: new}),
                     nodes=dict(r['nodes'], **{disk.name: disk.node_name}))
            store.write_record(self.memory_dir, r)
            done.append(r['name'])
        return done
