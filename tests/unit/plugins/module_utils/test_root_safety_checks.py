"""Issue #34's pure logic: which command lines a relaunch runs, how VM names become
paths, which files an overwrite may remove, which manifests are trusted, and the
postcopy helper's bounds on what a memory image says."""

import json
import os
import shutil
import socket
import struct

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import postcopy_source as pc
from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import process
from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument, Untrusted
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.policy import fleet_plan, vm_path
from ansible_collections.vmfleet.kvm.plugins.module_utils.save import manifest_store

from test_postcopy_source import _image  # pylint: disable=import-error

QEMU = shutil.which('qemu-system-x86_64')


# -- command lines --

@pytest.mark.parametrize('argv, found', [
    (['-netdev', 'tap,id=n0,script=no,downscript=no'], []),
    (['-netdev', 'tap,id=n0,fd=3'], []),
    (['-netdev', 'user,id=n0'], []),
    (['-netdev', 'tap,id=n0,script=/x,downscript=no'], ['-netdev tap,script=/x']),
    (['-netdev', 'tap,id=n0'], ['-netdev tap,script=(default /etc/qemu-ifup)',
                                '-netdev tap,downscript=(default /etc/qemu-ifdown)']),
    (['-nic', 'tap,script=no,downscript=no,helper=/usr/lib/qemu/qemu-bridge-helper'],
     ['-nic tap,helper=/usr/lib/qemu/qemu-bridge-helper']),
    (['-netdev', 'bridge,id=n0,br=br0'], ['-netdev bridge']),
    (['-netdev', '{"type": "bridge", "id": "n0"}'], ['-netdev bridge']),
    (['-run-with', 'user=nobody'], ['-run-with']),
    (['--plugin', 'file=/tmp/x.so'], ['-plugin']),
    (['-readconfig', '/tmp/vm.cfg'], ['-readconfig']),
])
def test_options_that_run_a_program_are_found(argv, found):
    assert process.exec_options(['qemu-system-x86_64'] + argv) == found


@pytest.mark.skipif(not QEMU, reason='needs qemu-system-x86_64')
def test_a_command_line_runs_only_its_own_qemu_binary():
    exe = os.path.realpath(QEMU)
    process.check_argv(['qemu-system-x86_64', '-m', '256'], exe, 0)
    process.check_argv([QEMU, '-m', '256'], exe, 0)
    with pytest.raises(Untrusted, match='not the QEMU binary'):
        process.check_argv(['/bin/sh', '-c', 'id'], exe, 0)
    with pytest.raises(Untrusted, match='not a QEMU system emulator'):
        process.check_argv(['/bin/sh'], '/bin/sh', 0)
    with pytest.raises(Untrusted, match='-netdev bridge') as e:
        process.check_argv(['qemu-system-x86_64', '-netdev', 'bridge,id=n'], exe, 0)
    assert 'allow_exec_options: true' in e.value.message
    process.check_argv(['qemu-system-x86_64', '-netdev', 'bridge,id=n'], exe, 0, allow_exec_options=True)


def test_a_qemu_binary_others_can_write_is_refused(tmp_path):
    fake = tmp_path / 'qemu-system-x86_64'
    fake.write_bytes(b'#!/bin/sh\n')
    fake.chmod(0o777)
    with pytest.raises(Untrusted, match='mode 0777'):
        process.check_binary(str(fake), 0)


def test_this_process_is_no_qemu():
    with pytest.raises(Untrusted, match='not a QEMU system emulator'):
        process.relaunch_record(os.getpid())


# -- names in paths --

@pytest.mark.parametrize('name, path', [
    ('web01', '/save/web01.vmstate'),
    ('../../x', '/save/..%2F..%2Fx.vmstate'),
    ('a b/c', '/save/a%20b%2Fc.vmstate'),
])
def test_vm_names_are_quoted_into_their_directory(name, path):
    assert vm_path('/save', name, '.vmstate') == path


@pytest.mark.parametrize('name', ['..', '.', ''])
def test_a_name_that_would_leave_its_directory_is_refused(name):
    with pytest.raises(InvalidArgument, match='outside /target'):
        vm_path('/target', name)


def test_a_per_vm_directory_stays_in_target_dir():
    vm = dict(name='../../etc', disks_all=[dict(name='vda', file='/src/d.qcow2', format='qcow2')])
    [p] = fleet_plan([vm], '/target', per_vm_dir=True)
    assert p['moves'][0]['target'] == '/target/..%2F..%2Fetc/d.qcow2'
    [p] = fleet_plan([dict(vm, name='..')], '/target', per_vm_dir=True)
    assert p['moves'] == [] and 'outside /target' in p['error']


# -- which files a save owns --

def test_only_listed_files_are_the_images_and_others_of_its_name_are_foreign(tmp_path):
    d = str(tmp_path)
    for n in ('web01.qcow2', 'web01.ch0', 'web01.manifest.json', 'web01.partial', 'web01.ch1.partial',
              'web01.partial.ch2', 'web01.restore.log', 'web01x', 'other'):
        open(os.path.join(d, n), 'w').close()
    path = os.path.join(d, 'web01')
    manifest = dict(files=[dict(file='web01.ch0'), dict(file='web01.ch1')])
    assert manifest_store.foreign_files(path, manifest) == [os.path.join(d, 'web01.qcow2')]
    assert manifest_store.foreign_files(path, None) == [os.path.join(d, n) for n in ('web01.ch0', 'web01.qcow2')]
    assert manifest_store.stale_partials(path) == [os.path.join(d, n) for n in
                                                   ('web01.ch1.partial', 'web01.partial', 'web01.partial.ch2')]
    assert manifest_store.listed_files(path, manifest) == [os.path.join(d, 'web01.ch0')]


@pytest.mark.parametrize('name', ['../web01.qcow2', '/etc/shadow', '..'])
def test_a_manifest_listing_a_file_elsewhere_is_refused(tmp_path, name):
    with pytest.raises(Untrusted, match='not a file of its directory'):
        manifest_store.listed_files(str(tmp_path / 'img'), dict(files=[dict(file=name)]))


def test_a_listed_symlink_is_not_removed(tmp_path):
    (tmp_path / 'img.ch0').symlink_to('/etc/hostname')
    with pytest.raises(Untrusted, match='not a regular file'):
        manifest_store.listed_files(str(tmp_path / 'img'), dict(files=[dict(file='img.ch0')]))


# -- trust --

def _write_manifest(d):
    path = os.path.join(d, 'img')
    fd = durable.create_exclusive(path + manifest_store.MANIFEST_SUFFIX)
    with os.fdopen(fd, 'w') as f:
        json.dump(dict(version=manifest_store.MANIFEST_VERSION, files=[]), f)
    return path


def test_a_private_manifest_in_a_private_directory_is_read(tmp_path):
    os.chmod(str(tmp_path), 0o755)
    assert manifest_store.read_manifest(_write_manifest(str(tmp_path)))['files'] == []


@pytest.mark.parametrize('file_mode, dir_mode, words', [
    (0o620, 0o755, 'mode 0620'),
    (0o602, 0o755, 'mode 0602'),
    (0o600, 0o775, 'the directory of manifest'),
    (0o600, 0o1777, 'the directory of manifest'),
])
def test_a_manifest_others_could_write_is_refused(tmp_path, file_mode, dir_mode, words):
    path = _write_manifest(str(tmp_path))
    os.chmod(path + manifest_store.MANIFEST_SUFFIX, file_mode)
    os.chmod(str(tmp_path), dir_mode)
    try:
        with pytest.raises(Untrusted, match=words):
            manifest_store.read_manifest(path)
    finally:
        os.chmod(str(tmp_path), 0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason='chown needs root')
def test_a_manifest_of_another_user_is_refused(tmp_path):
    path = _write_manifest(str(tmp_path))
    os.chown(path + manifest_store.MANIFEST_SUFFIX, 65534, 65534)
    with pytest.raises(Untrusted, match='owned by uid 65534'):
        manifest_store.read_manifest(path)


def test_a_symlinked_manifest_is_refused(tmp_path):
    real = _write_manifest(str(tmp_path))
    os.symlink(real + manifest_store.MANIFEST_SUFFIX, str(tmp_path / 'link.manifest.json'))
    with pytest.raises(Untrusted, match='symbolic link'):
        manifest_store.read_manifest(str(tmp_path / 'link'))


def test_created_files_are_private_and_never_follow_a_link(tmp_path):
    old = os.umask(0)
    try:
        os.close(durable.create_exclusive(str(tmp_path / 'f')))
    finally:
        os.umask(old)
    assert os.stat(str(tmp_path / 'f')).st_mode & 0o777 == 0o600
    os.symlink('/etc/hostname', str(tmp_path / 'l'))
    with pytest.raises(OSError):
        durable.create_exclusive(str(tmp_path / 'l'))


def test_qemu_log_through_a_link_or_with_other_names_is_refused(tmp_path):
    os.symlink('/etc/hostname', str(tmp_path / 'sym.log'))
    with pytest.raises(Untrusted, match='symbolic links'):
        process.open_log(str(tmp_path / 'sym.log'), 0)
    (tmp_path / 'a').write_bytes(b'')
    os.link(str(tmp_path / 'a'), str(tmp_path / 'hard.log'))
    with pytest.raises(Untrusted, match='2 links'):
        process.open_log(str(tmp_path / 'hard.log'), 0)


# -- the postcopy helper reads what a QEMU of another user may have written --

def _crafted(tmp_path, edit):
    path = _image(str(tmp_path / 'm'), [b'a' * PAGE, None, b'b' * PAGE])
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    at = data.index(b'\x06pc.ram') + 7  # the block's length, then its mapped-ram header
    edit(data, at)
    with open(path, 'wb') as f:
        f.write(data)
    return path


PAGE = pc.PAGE


@pytest.mark.parametrize('edit, words', [
    (lambda d, at: d.__setitem__(slice(at, at + 8), struct.pack('>Q', 0)), 'does not fit'),
    # a block shorter than the RAM: the next block's header is read from page data
    (lambda d, at: d.__setitem__(slice(at, at + 8), struct.pack('>Q', 2 * PAGE)), 'does not fit|not mapped-ram'),
    (lambda d, at: d.__setitem__(slice(at, at + 8), struct.pack('>Q', 3 * PAGE + 1)), 'does not fit'),
    (lambda d, at: d.__setitem__(slice(at + 28, at + 36), struct.pack('>Q', 1 << 40)), 'does not fit'),
    (lambda d, at: d.__setitem__(slice(at + 28, at + 36), struct.pack('>Q', 0)), 'does not fit'),
    (lambda d, at: d.__setitem__(slice(at - 15, at - 7), struct.pack('>Q', (1 << 44) | pc.FLAG_MEM_SIZE)),
     'RAM size'),
])
def test_a_crafted_image_fails_cleanly(tmp_path, edit, words):
    with pytest.raises(pc.ImageError, match=words):
        pc.MappedRamImage(_crafted(tmp_path, edit))


def test_a_page_request_beyond_its_block_stops_the_load(tmp_path):
    img = pc.MappedRamImage(_image(str(tmp_path / 'm'), [b'a' * PAGE]))
    src = pc.PostcopySource(img, None)
    a, b = socket.socketpair()
    src.sock = a
    name = b'pc.ram'
    req = struct.pack('>QI', 64 * PAGE, PAGE) + struct.pack('>B', len(name)) + name
    b.sendall(struct.pack('>HH', pc.RP_REQ_PAGES_ID, len(req)) + req)
    b.close()
    src._return_path()
    assert 'not in it' in src.rp_error and src.requested == 0
    img.close()
    a.close()
