"""Boot and tear down a set of test guests that outlive this process, for
molecule scenarios, the demo and the fleet benchmark.

  python -m rig.detached_guests up DIR [--libvirt NAME]... [--qemu NAME]... [--memory MIB]
  python -m rig.detached_guests down DIR
  python -m rig.detached_guests counters DIR
  python -m rig.detached_guests disk IMAGE FORMAT

``up`` writes DIR/vms.json (each VM's connection, serial log and disks);
``down`` stops every VM listed there (relaunched QEMUs included) and removes DIR;
``counters`` prints each guest's last serial counter and its disks' counters;
``disk`` prints the counter the guest last wrote to one image."""

import argparse
import json
import os
import shutil
import sys

from .accel import detect_accel
from .guest import disk_counter, serial_counters
from .libvirt_guest import URI, LibvirtGuest
from .qemu_guest import QemuGuest


def _state(root):
    return os.path.join(root, 'vms.json')


def _load(root):
    try:
        with open(_state(root)) as f:
            return json.load(f)
    except FileNotFoundError:
        return []


def _vm(entry):
    if entry['backend'] == 'libvirt':
        return LibvirtGuest(entry['workdir'], entry['name'], uri=URI)
    return QemuGuest(entry['workdir'], entry['name'], detach=True)


def up(root, libvirt_names, qemu_names, memory_mib, cmdline_extra='', disks=None):
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)  # libvirt's QEMU must reach the disks
    accel = detect_accel()
    entries = _load(root)
    started = []
    try:
        for backend, names in (('libvirt', libvirt_names), ('qemu', qemu_names)):
            for name in names:
                if any(e['name'] == name for e in entries):
                    continue
                workdir = os.path.join(root, name)
                if backend == 'libvirt':
                    vm = LibvirtGuest(workdir, name, memory_mib=memory_mib, accel=accel, uri=URI,
                                      cmdline_extra=cmdline_extra, disks=disks)
                else:
                    vm = QemuGuest(workdir, name, memory_mib=memory_mib, accel=accel, detach=True,
                                   cmdline_extra=cmdline_extra, disks=disks)
                vm.start()
                started.append(vm)
                entry = dict(name=name, backend=backend, workdir=workdir, serial_log=vm.serial_log,
                             disks=dict((n, list(v)) for n, v in vm.disks.items()))
                entry['connection'] = dict(domain=name, uri=URI) if backend == 'libvirt' \
                    else dict(qmp_socket=vm.qmp_socket)
                entries.append(entry)
        for vm in started:
            vm.wait_booted(180)
    except BaseException:
        for vm in started:
            vm.stop()
        raise
    with open(_state(root), 'w') as f:
        json.dump(entries, f, indent=1)
    return entries


def down(root):
    errors = []
    for entry in _load(root):
        try:
            _vm(entry).stop()
        except Exception as e:  # keep tearing the others down
            errors.append('%s: %s' % (entry['name'], e))
    shutil.rmtree(root, ignore_errors=True)
    if errors:
        raise SystemExit('teardown failed: ' + '; '.join(errors))


def counters(root):
    out = {}
    for entry in _load(root):
        found = serial_counters(entry['serial_log'])
        disks = {}
        for name, (path, fmt) in entry['disks'].items():
            try:
                disks[name] = disk_counter(path, fmt)
            except Exception as e:  # a disk moved away: say so
                disks[name] = 'unreadable: %s' % e
        drops = [[a, b] for a, b in zip(found, found[1:]) if b < a]
        out[entry['name']] = dict(last=found[-1] if found else None, count=len(found), drops=drops,
                                  seen=found[-400:],
                                  log_size=os.path.getsize(entry['serial_log'])
                                  if os.path.exists(entry['serial_log']) else 0, disks=disks)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('action', choices=['up', 'down', 'counters', 'disk'])
    ap.add_argument('dir', help='the fleet directory (for disk: the image)')
    ap.add_argument('format', nargs='?', default='qcow2', help='for disk: the image format')
    ap.add_argument('--libvirt', action='append', default=[])
    ap.add_argument('--qemu', action='append', default=[])
    ap.add_argument('--memory', type=int, default=256)
    args = ap.parse_args(argv)
    root = os.path.abspath(args.dir)
    if args.action == 'up':
        json.dump(up(root, args.libvirt, args.qemu, args.memory), sys.stdout, indent=1)
    elif args.action == 'down':
        down(root)
    elif args.action == 'disk':
        json.dump(disk_counter(root, args.format), sys.stdout)
    else:
        json.dump(counters(root), sys.stdout, indent=1)
    print()


if __name__ == '__main__':
    main()
