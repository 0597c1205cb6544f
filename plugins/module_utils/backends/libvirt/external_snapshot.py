# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""External (overlay) snapshots of a libvirt domain, done by libvirt itself
(snapshotCreateXML with external disks, revertToSnapshot, snapshot delete), with
what libvirt leaves out: the UEFI varstore (NVRAM) of a pflash domain, copied
aside at create and written back on revert.

What libvirt 11.3 does, checked on running domains:
- create: each chosen disk goes on the qcow2 overlay named in the XML (the
  others are listed with snapshot='no'); with memory the RAM goes to an external
  memory file while the guest runs (LIVE: paused for QEMU's final downtime only).
- revert: QEMU is restarted on fresh overlays libvirt creates beside the
  snapshot's (``<overlay stem>.<epoch seconds>``) over the same bases, loaded from
  the memory file; a disk-only snapshot leaves the domain shut off (it has no RAM
  state), and this backend starts it again: the guest boots from the disks' moment.
  The overlay the snapshot had is removed by libvirt.
- delete: the overlays are block-committed into the images under them (the
  active layer pivots back live), and libvirt removes the overlay and memory
  files: the domain ends on its original paths. A snapshot in the middle of a
  chain can be deleted; the snapshot the domain was last reverted to cannot
  while it has children (libvirt: "not a leaf").
- libvirt refuses to revert a snapshot whose disk's base is a block device ("source
  disk is not a regular file"); this backend does that revert as libvirt does it for
  files (_revert_over_block) and records the fresh overlays in libvirt's metadata, so
  libvirt's delete commits them as it does its own.

QEMU keeps a pflash device's contents in RAM and migrates them with it: a revert
from a memory file brings the varstore back by itself (QEMU writes the loaded
contents to the file when the guest resumes). The copy is what a disk-only
snapshot has, and it keeps the file right while the reverted domain is paused."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import json
import os
import stat
import time
import xml.etree.ElementTree as ET

from urllib.parse import quote

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends import quirks
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.connection import run_blocking
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    CapabilityMissing, InvalidArgument, OperationTimeout, VmfleetError,
)

try:
    import libvirt
except ImportError:  # connection.py keeps the error for missing_required_lib
    pass

KIND = 'external'
# how long undoing a snapshot that outran the task's timeout may take
UNDO_GRACE_S = 60.0
# what this collection records of its own in a libvirt snapshot's <description>
_MARK = 'vmfleet.kvm external snapshot '
MEMORY_SUFFIX = '.external.mem'
NVRAM_SUFFIX = '.nvram'


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat()


def _file_of(memory_dir, vm_name, name, suffix):
    return os.path.join(memory_dir, '%s.%s%s' % (quote(vm_name, safe=''), quote(name, safe=''), suffix))


def _source(disk_el):
    src = disk_el.find('source')
    if src is None:
        return None
    return src.get('file') or src.get('dev') or src.get('name')


def _chain_files(domain_el):
    """Every image file a domain definition reaches: each disk's source and backing chain."""
    out = set()
    for d in domain_el.findall('./devices/disk'):
        el = d
        while el is not None:
            src = _source(el)
            if src:
                out.add(src)
            el = el.find('backingStore')
    return out


def _meta(root):
    text = root.findtext('description') or ''
    if not text.startswith(_MARK):
        return {}
    try:
        return json.loads(text[len(_MARK):])
    except ValueError:
        return {}


def _dac_label(domain_el):
    """(uid, gid) libvirt's DAC driver runs the domain's QEMU as, or None."""
    for sl in domain_el.findall('seclabel'):
        label = sl.findtext('label') or ''
        if sl.get('model') == 'dac' and ':' in label:
            uid, gid = label.split(':', 1)
            try:
                return int(uid.lstrip('+')), int(gid.lstrip('+'))
            except ValueError:
                return None
    return None


def _reachable(directory, uid, gid):
    """The first directory on the way to ``directory`` that user ``uid``/``gid`` cannot enter, or None."""
    d = os.path.abspath(directory)
    while True:
        st = os.stat(d)
        if not (st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR)
                or (st.st_gid == gid and st.st_mode & stat.S_IXGRP)):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _is_block(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class LibvirtExternalSnapshots(object):
    """The external-snapshot steps of one libvirt domain (a backends.libvirt.vm.LibvirtVm)."""

    def __init__(self, vm):
        self.vm = vm
        self.dom = vm.dom

    # -- what the domain has --
    def _snapshot_roots(self):
        out = []
        for s in self.vm._call('listing snapshots', self.dom.listAllSnapshots, 0):
            try:
                root = ET.fromstring(s.getXMLDesc(0))
            except libvirt.libvirtError:
                continue  # deleted meanwhile
            if any(d.get('snapshot') == 'external' for d in root.findall('./disks/disk')):
                out.append((s, root))
        return out

    def nvram(self):
        """(path, format) of the domain's pflash varstore, or (None, None)."""
        os_el = self.vm.xml().find('os')
        if os_el is None:
            return None, None
        loader, nvram = os_el.find('loader'), os_el.find('nvram')
        if loader is None or loader.get('type') != 'pflash' or nvram is None or not (nvram.text or '').strip():
            return None, None
        return nvram.text.strip(), nvram.get('format') or 'raw'

    def list(self):
        out = []
        for s, root in self._snapshot_roots():
            meta = _meta(root)
            dom_el = root.find('domain')
            bases = {}
            if dom_el is not None:
                for d in dom_el.findall('./devices/disk'):
                    t = d.find('target')
                    if t is not None:
                        bases[t.get('dev')] = _source(d)
            disks = [d.get('name') for d in root.findall('./disks/disk') if d.get('snapshot') == 'external']
            overlays = dict((d.get('name'), _source(d)) for d in root.findall('./disks/disk')
                            if d.get('snapshot') == 'external')
            mem = root.find('memory')
            memory_file = mem.get('file') if mem is not None and mem.get('snapshot') == 'external' else None
            problems = []
            for d in disks:
                if not bases.get(d) or not os.path.exists(bases[d]):
                    problems.append("the image %s under disk %s's overlay is gone" % (bases.get(d), d))
                elif overlays.get(d) and not os.path.exists(overlays[d]):
                    # a storage move that did not tell libvirt, say: its revert and delete would look for it
                    problems.append("overlay %s of disk %s is gone" % (overlays[d], d))
            if memory_file and not os.path.exists(memory_file):
                problems.append("its memory file %s is gone" % memory_file)
            if meta.get('nvram_copy') and not os.path.exists(meta['nvram_copy']):
                problems.append("its NVRAM copy %s is gone" % meta['nvram_copy'])
            entry = dict(name=root.findtext('name'), mode=KIND, disks=disks, overlays=overlays,
                         bases=dict((d, bases.get(d)) for d in disks), memory_file=memory_file,
                         nvram_copy=meta.get('nvram_copy'), date=_iso(int(root.findtext('creationTime') or 0)),
                         parent=root.findtext('./parent/name'), current=bool(s.isCurrent(0)),
                         consistent=not problems)
            if problems:
                entry['problem'] = "; ".join(problems)
            out.append(entry)
        out.sort(key=lambda e: (e['date'], e['name']))
        return out

    def internal_refusal(self):
        path, fmt = self.nvram()
        if path and fmt != 'qcow2':
            return ("its firmware is pflash (UEFI) with a %s NVRAM (%s): libvirt refuses internal snapshots of it "
                    "(they need a qcow2 NVRAM)" % (fmt, path))
        return None

    # -- before anything changes --
    def check(self, disks, memory, quiesce):
        why = quirks.libvirt_external_missing(self.vm._call('reading the libvirt version', self.vm.conn.getLibVersion))
        if why:
            raise CapabilityMissing("libvirt domain '%s' cannot take external snapshots: %s" % (self.vm.name, why),
                                    hint="nothing was changed; upgrade libvirt, or use mode: internal on qcow2 disks")
        if quiesce and memory:
            raise InvalidArgument("quiesce applies to a disk-only snapshot: libvirt freezes the guest's filesystems "
                                  "around the disk switch, a snapshot with memory needs no freeze",
                                  hint="nothing was changed; set memory: false with quiesce: true")

    def _check_overlay_dirs(self, overlays):
        label = _dac_label(self.vm.xml())
        if not label or label[0] == 0:
            return
        for disk, path in sorted(overlays.items()):
            blocked = _reachable(os.path.dirname(path), *label)
            if blocked:
                raise InvalidArgument(
                    "libvirt runs domain '%s' as uid %d, gid %d, which cannot enter %s to open the overlay %s of "
                    "disk %s" % (self.vm.name, label[0], label[1], blocked, path, disk),
                    hint="nothing was changed; let it in (chmod o+x %s) or pick another overlay_dir" % blocked)

    # -- create --
    def create(self, name, disks, overlays, memory, quiesce, memory_dir, deadline):
        self._check_overlay_dirs(overlays)
        nvram, _fmt = self.nvram()
        needs_dir = memory or nvram
        if needs_dir and not os.path.isdir(memory_dir):
            os.makedirs(memory_dir, 0o700)
        memory_file = _file_of(memory_dir, self.vm.name, name, MEMORY_SUFFIX) if memory else None
        nvram_copy = _file_of(memory_dir, self.vm.name, name, NVRAM_SUFFIX) if nvram else None
        known = set(s.getName() for s in self.vm._call('listing snapshots', self.dom.listAllSnapshots, 0))
        for f in (memory_file, nvram_copy):
            if f and os.path.lexists(f):
                if name in known:
                    raise InvalidArgument("%s exists already, and libvirt has a snapshot '%s' of domain '%s'"
                                          % (f, name, self.vm.name),
                                          hint="nothing was changed; delete that snapshot first (state: absent)")
                # a run killed before libvirt made the snapshot left it: no snapshot has it
                durable.remove(f)
        chosen = set(d.name for d in disks)
        root = ET.Element('domainsnapshot')
        ET.SubElement(root, 'name').text = name
        ET.SubElement(root, 'description').text = _MARK + json.dumps(dict(
            overlays=overlays, memory_file=memory_file, nvram_copy=nvram_copy, nvram=nvram), sort_keys=True)
        if memory:
            ET.SubElement(root, 'memory', snapshot='external', file=memory_file)
        else:
            ET.SubElement(root, 'memory', snapshot='no')
        el = ET.SubElement(root, 'disks')
        for d in self.vm.disks():
            if d.name in chosen:
                # type='file' also for a block device's overlay: a qcow2 file in overlay_dir
                de = ET.SubElement(el, 'disk', name=d.name, snapshot='external', type='file')
                ET.SubElement(de, 'driver', type='qcow2')
                ET.SubElement(de, 'source', file=overlays[d.name])
            else:
                ET.SubElement(el, 'disk', name=d.name, snapshot='no')
        running = self.vm.state() == 'running'
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if memory:
            # LIVE: the RAM is written while the guest runs, paused for QEMU's last pass only
            # (measured: 20 ms against 400 ms for a 256 MiB guest paused throughout)
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE if running else 0
        else:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        if nvram_copy:
            # the varstore of this moment (the guest seldom writes it: only when it sets a UEFI variable)
            durable.copy_private(nvram, nvram_copy)
        t0 = time.monotonic()
        try:
            run_blocking(lambda: self.dom.snapshotCreateXML(ET.tostring(root, encoding='unicode'), flags), deadline,
                         "creating external snapshot '%s' of libvirt domain '%s'" % (name, self.vm.name),
                         on_timeout=self.dom.abortJob if memory else None)
        except VmfleetError as e:
            try:
                made = self.dom.snapshotLookupByName(name, 0) is not None
            except libvirt.libvirtError:
                made = False
            if made:
                # the timeout came too late to stop libvirt: the snapshot is undone as a delete does it
                # (its overlays committed: no guest write is lost), so a timed-out task leaves none
                try:
                    snap = self.dom.snapshotLookupByName(name, 0)
                    run_blocking(lambda: snap.delete(0), Deadline(UNDO_GRACE_S),
                                 "undoing external snapshot '%s' of libvirt domain '%s'" % (name, self.vm.name))
                except (VmfleetError, libvirt.libvirtError):
                    e.hint = ("libvirt finished the snapshot all the same and it could not be undone: it is "
                              "there, whole; delete it (state: absent) or keep it")
                    raise e
                e.msg += "; libvirt finished it all the same, and it has been removed again: nothing changed"
            # an aborted memory write can leave libvirt's partial memory file behind
            for f in (nvram_copy, memory_file):
                if f:
                    durable.remove(f)
            e.hint = None if made else "nothing changed: the snapshot is atomic (libvirt undid what it had done)"
            raise
        out = dict(route='libvirt', paused_ms=round((time.monotonic() - t0) * 1000.0, 1))
        if memory and running:
            try:
                stats = self.dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except libvirt.libvirtError:
                stats = {}
            if 'downtime' in stats:
                # QEMU's measured downtime of the memory write; the disk switch after it adds a few ms
                out['paused_ms'] = float(stats['downtime'])
        # disk-only: libvirt does not stop the vCPUs (QEMU drains I/O for the switch); the call's
        # length bounds it
        return out

    # -- revert --
    def revert(self, snap, memory_dir, deadline):
        s = self.vm._call("looking up snapshot '%s'" % snap['name'], self.dom.snapshotLookupByName, snap['name'], 0)
        was = self.vm.state()
        nvram, _fmt = self.nvram()
        copy = snap.get('nvram_copy')
        if copy and not nvram:
            raise InvalidArgument("external snapshot '%s' of domain '%s' has an NVRAM copy (%s) but the domain "
                                  "has no NVRAM now" % (snap['name'], self.vm.name, copy), hint="nothing was changed")
        hint = ("libvirt domain '%s' may be shut off or paused; the snapshot is intact: revert again"
                % self.vm.name)
        if any(base and _is_block(base) for base in (snap.get('bases') or {}).values()):
            self._revert_over_block(s, snap, was, deadline, hint)
            return self._after_revert(snap, was, nvram, copy, resumed_by_caller=True)
        # with memory: QEMU comes back paused from the memory file, its NVRAM is written back before the guest
        # runs; without: the domain is shut off (a disk-only snapshot has no RAM state) and booted afterwards
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED if snap.get('memory_file') else 0
        try:
            run_blocking(lambda: self.dom.revertToSnapshot(s, flags), deadline,
                         "reverting libvirt domain '%s' to external snapshot '%s'" % (self.vm.name, snap['name']))
        except VmfleetError as e:
            e.hint = hint
            raise
        return self._after_revert(snap, was, nvram, copy)

    def _after_revert(self, snap, was, nvram, copy, resumed_by_caller=False):
        restored = False
        if copy:
            durable.write_in_place(copy, nvram)
            restored = True
        state = self.vm.state()
        if snap.get('memory_file') or resumed_by_caller:
            if was != 'paused' and state == 'paused':
                self.vm.resume()
        elif was in ('running', 'paused') and state == 'shutoff':
            start = libvirt.VIR_DOMAIN_START_PAUSED if was == 'paused' else 0
            self.vm._call('starting the domain again', self.dom.createWithFlags, start)
        return dict(route='libvirt', nvram_restored=restored)

    def _revert_over_block(self, s, snap, was, deadline, hint):
        """The revert libvirt (11.3) refuses for a disk over a block device ("source disk is not a regular
        file"), done as libvirt does it for files: a fresh overlay over each disk's base, QEMU started
        again from the memory file on them (paused: the caller writes the NVRAM back and resumes), the
        persistent definition and the snapshot's metadata pointed at the new overlays, so that libvirt's
        own delete commits them later. A disk-only snapshot: the domain is booted again on them."""
        from ansible_collections.vmfleet.kvm.plugins.module_utils.common import qemu_img
        root = ET.fromstring(self.vm._call('reading the snapshot', s.getXMLDesc,
                                           libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE))
        meta = _meta(root)
        fmts = {}
        for d in root.findall('./domain/devices/disk'):
            t, drv = d.find('target'), d.find('driver')
            if t is not None:
                fmts[t.get('dev')] = drv.get('type') if drv is not None else 'raw'
        stamp = int(time.time())
        sizes = dict((d.name, d.virtual_size) for d in self.vm.disks())
        fresh = {}
        try:
            for disk in snap['disks']:
                first = (meta.get('overlays') or {}).get(disk) or snap['overlays'][disk]
                stem = first[:-len('.qcow2')] if first.endswith('.qcow2') else first
                fresh[disk] = '%s.%d.qcow2' % (stem, stamp)
                if os.path.lexists(fresh[disk]):
                    raise InvalidArgument("%s exists already" % fresh[disk], hint="nothing was changed; revert again")
                qemu_img.create(self.vm.module, fresh[disk], 'qcow2', sizes[disk], backing=snap['bases'][disk],
                                backing_fmt=fmts.get(disk, 'raw'))
                os.chmod(fresh[disk], 0o600)
        except BaseException:
            for path in fresh.values():
                durable.remove(path)
            raise
        old_overlays = dict((d, f) for d, f in snap['overlays'].items())

        def point(domain_el):
            for d in domain_el.findall('./devices/disk'):
                t = d.find('target')
                if t is None or t.get('dev') not in fresh:
                    continue
                for el in d.findall('backingStore') + d.findall('source'):
                    d.remove(el)
                d.set('type', 'file')
                drv = d.find('driver')
                if drv is None:
                    drv = ET.SubElement(d, 'driver', name='qemu')
                drv.set('type', 'qcow2')
                src = ET.Element('source', file=fresh[t.get('dev')])
                d.insert(list(d).index(drv) + 1, src)
            return ET.tostring(domain_el, encoding='unicode')

        try:
            if self.vm.is_running():
                self.vm._call('stopping the domain', self.dom.destroy)
            persistent = ET.fromstring(self.vm._call('reading the definition', self.dom.XMLDesc,
                                                     libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
            self.vm._call('defining the domain on the fresh overlays', self.vm.conn.defineXML, point(persistent))
            if snap.get('memory_file'):
                saved = ET.fromstring(self.vm._call('reading the memory file', self.vm.conn.saveImageGetXMLDesc,
                                                    snap['memory_file'], libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE))
                dxml = point(saved)
                run_blocking(lambda: self.vm.conn.restoreFlags(snap['memory_file'], dxml,
                                                               libvirt.VIR_DOMAIN_SAVE_PAUSED), deadline,
                             "restoring libvirt domain '%s' from %s" % (self.vm.name, snap['memory_file']))
            elif was in ('running', 'paused'):
                self.vm._call('starting the domain again', self.dom.createWithFlags, libvirt.VIR_DOMAIN_START_PAUSED)
        except VmfleetError as e:
            e.hint = hint
            raise
        # libvirt's record of the snapshot names the fresh overlays now: its delete commits them
        desc = root.find('description')
        meta['overlays'] = meta.get('overlays') or old_overlays
        meta['reverted_overlays'] = sorted(set(meta.get('reverted_overlays', [])) | set(fresh.values()))
        desc.text = _MARK + json.dumps(meta, sort_keys=True)
        for d in root.findall('./disks/disk'):
            if d.get('name') in fresh:
                d.find('source').set('file', fresh[d.get('name')])
        self.vm._call('recording the fresh overlays in the snapshot', self.dom.snapshotCreateXML,
                      ET.tostring(root, encoding='unicode'),
                      libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)
        # the writes made since the snapshot go, as libvirt's own revert drops them: the overlays the domain
        # ran on, when this collection made them, no later snapshot builds on them and nothing uses them
        if not s.listAllChildren(0):
            owned = set((meta.get('overlays') or {}).values()) | set(meta.get('reverted_overlays', []))
            in_use = _chain_files(self.vm.xml()) | _chain_files(self.vm.xml(inactive=True))
            for path in old_overlays.values():
                if path in owned and path not in in_use and path not in fresh.values():
                    durable.remove(path)

    # -- a storage move of the top overlay (drive_mirror) --
    def moved(self, disk, old, new):
        """drive_mirror switched ``disk`` off overlay ``old`` onto its copy ``new`` (a shallow block
        copy: the same image under it). libvirt's record of the snapshot whose overlay ``old`` was
        still names it, and its revert and delete work from that record (the delete looks the
        overlay up in the disk's chain, the revert removes it): the snapshot is defined again
        (REDEFINE, current again if it was) naming ``new``, as vm_migrate's SnapshotCarry does."""
        from ansible_collections.vmfleet.kvm.plugins.module_utils.mirror.journal import same_file
        done = []
        for s, _root in self._snapshot_roots():
            root = ET.fromstring(self.vm._call('reading the snapshot', s.getXMLDesc,
                                               libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE))
            hit = False
            for d in root.findall('./disks/disk'):
                src = d.find('source')
                if d.get('name') == disk.name and d.get('snapshot') == 'external' and src is not None \
                        and same_file(src.get('file'), old):
                    src.set('file', new)
                    hit = True
            if not hit:
                continue
            desc = root.find('description')
            meta = _meta(root)
            if desc is not None and meta:
                # the overlays this collection owns: its delete removes what libvirt leaves of them
                meta['overlays'] = dict((k, new if same_file(v, old) else v)
                                        for k, v in (meta.get('overlays') or {}).items())
                if meta.get('reverted_overlays'):
                    meta['reverted_overlays'] = sorted(new if same_file(v, old) else v
                                                       for v in meta['reverted_overlays'])
                desc.text = _MARK + json.dumps(meta, sort_keys=True)
            flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
            if s.isCurrent(0):
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
            self.vm._call("recording the moved overlay in snapshot '%s'" % s.getName(), self.dom.snapshotCreateXML,
                          ET.tostring(root, encoding='unicode'), flags)
            done.append(s.getName())
        return done

    # -- delete --
    def _wait_jobs(self, disks, deadline):
        """Until no block job runs on ``disks`` (a commit a killed run left libvirt doing)."""
        while True:
            busy = [d for d in disks if self.vm._call('reading block jobs', self.dom.blockJobInfo, d, 0)]
            if not busy:
                return
            if deadline.remaining() <= 0:
                raise OperationTimeout("disks %s of libvirt domain '%s' still run a block job"
                                       % (", ".join(busy), self.vm.name),
                                       hint="a commit of an earlier run goes on in libvirt; run the task again later")
            time.sleep(0.2)

    def delete(self, snap, memory_dir, deadline):
        if self.vm.is_running():
            self._wait_jobs(snap['disks'], deadline)
        try:
            s = self.dom.snapshotLookupByName(snap['name'], 0)
        except libvirt.libvirtError:
            s = None  # a run killed after libvirt's delete: only the leftovers are to clean
        owned = set()
        if s is not None:
            # the overlays this collection named (recorded in the snapshot's description at create)
            meta = _meta(ET.fromstring(s.getXMLDesc(0)))
            owned = set((meta.get('overlays') or {}).values()) | set(meta.get('reverted_overlays', []))
            children = s.listAllChildren(0)
            if s.isCurrent(0) and children:
                raise CapabilityMissing(
                    "external snapshot '%s' of libvirt domain '%s' is the one the domain was reverted to and has "
                    "later snapshots (%s): libvirt cannot delete it" % (
                        snap['name'], self.vm.name, ", ".join(sorted(c.getName() for c in children))),
                    hint="nothing was changed; delete the later snapshots first")
            try:
                run_blocking(lambda: s.delete(0), deadline,
                             "deleting external snapshot '%s' of libvirt domain '%s'" % (snap['name'], self.vm.name))
            except VmfleetError as e:
                e.hint = ("every guest write is kept (the overlays are committed before they are dropped); run the "
                          "task again to carry on")
                raise
        removed = []
        if snap.get('nvram_copy') and durable.remove(snap['nvram_copy']):
            removed.append(snap['nvram_copy'])
        # libvirt removes the overlays it committed; one it left (an older libvirt) goes when nothing uses it
        in_use = _chain_files(self.vm.xml()) | _chain_files(self.vm.xml(inactive=True))
        for other in self.list():
            in_use |= set(other['overlays'].values()) | set(other['bases'].values())
        for path in sorted(owned):
            if path and path not in in_use and os.path.isfile(path) and durable.remove(path):
                removed.append(path)
        return dict(route='libvirt', removed=removed)
