# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a raw QEMU's external snapshots are, on disk: QEMU keeps no record of
them (libvirt would), so each is a JSON record under memory_dir, and a delete
in progress is a journal beside it.

- ``<memory_dir>/<vm>.<name>.external.json``: the snapshot (disks, the overlays
  made for them, the images under them, its memory file, the command line a
  revert relaunches). Written last, when the VM runs on the overlays: no
  record, no snapshot.
- ``<memory_dir>/<vm>.<name>.external.vmstate``: its RAM and device state, when taken with memory.
- ``<memory_dir>/<vm>.<name>.external.commit.json``: the delete's journal, written
  before the first commit job starts and removed after the record: a re-run
  after any kill finds it and carries on (backends/qemu/external_snapshot.py).

Every file is root's, 0600, written atomically and fsynced (common/durable.py);
only records root alone could have written are read (a revert runs the command
line one holds)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import glob
import json
import os

from urllib.parse import quote

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import ImageCorrupt
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store

VERSION = 1
_TAG = '.external'
RECORD = _TAG + '.json'
MEMORY = _TAG + '.vmstate'
JOURNAL = _TAG + '.commit.json'


def stem(memory_dir, vm_name, name):
    return os.path.join(memory_dir, '%s.%s' % (quote(vm_name, safe=''), quote(name, safe='')))


def record_path(memory_dir, vm_name, name):
    return stem(memory_dir, vm_name, name) + RECORD


def memory_path(memory_dir, vm_name, name):
    return stem(memory_dir, vm_name, name) + MEMORY


def journal_path(memory_dir, vm_name, name):
    return stem(memory_dir, vm_name, name) + JOURNAL


def _read(path, what):
    try:
        with durable.open_trusted(path, what) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ImageCorrupt("%s %s is not valid JSON (%s)" % (what, path, e),
                           hint="it is written atomically, so something else changed it; inspect it by hand")


def _write(path, data):
    durable.atomic_write(path, json.dumps(dict(data, version=VERSION), indent=1, sort_keys=True).encode('utf-8'))


def read_record(memory_dir, vm_name, name):
    return _read(record_path(memory_dir, vm_name, name), 'external snapshot record')


def write_record(memory_dir, record):
    _write(record_path(memory_dir, record['vm']['name'], record['name']), record)


def records(memory_dir, vm_name):
    """The records of ``vm_name``'s external snapshots, oldest first (the order of the chain)."""
    if not memory_dir or not os.path.isdir(memory_dir):
        return []
    out = []
    prefix = os.path.join(memory_dir, glob.escape(quote(vm_name, safe='')) + '.')
    for p in glob.glob(prefix + '*' + RECORD):
        r = _read(p, 'external snapshot record')
        if r and r.get('kind') == 'external' and r.get('vm', {}).get('name') == vm_name \
                and os.path.basename(p) == os.path.basename(record_path(memory_dir, vm_name, r['name'])):
            out.append(r)
    return sorted(out, key=lambda r: r['seq'])


def read_journal(memory_dir, vm_name, name):
    return _read(journal_path(memory_dir, vm_name, name), 'external snapshot delete journal')


def write_journal(memory_dir, vm_name, journal):
    _write(journal_path(memory_dir, vm_name, journal['name']), journal)


def remove(memory_dir, paths):
    manifest_store.remove(paths)
    durable.fsync_dir(memory_dir)
