"""The socket-based multifd save helper (module_utils/backends/qemu/multifd_stream.py)
against a real QEMU: save a running guest's RAM through ChannelSink into one
file per channel, restore it into a fresh QEMU through ChannelSource, and
prove the guest went on where it stopped with its filled RAM intact."""

import os
import re
import socket
import stat
import struct
import subprocess
import tempfile
import time

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.multifd_stream import (
    MULTIFD_MAGIC, QEMU_VM_FILE_MAGIC, ChannelSink, ChannelSource, MultifdStreamError)
from rig import guest
from rig.qemu_guest import QemuGuest
from rig.qmp import connect

FILL_MIB = 64


def _setup_multifd(q, channels, compression):
    q.cmd('migrate-set-capabilities', capabilities=[{'capability': 'multifd', 'state': True}])
    q.cmd('migrate-set-parameters', **{'multifd-channels': channels,
                                       'multifd-compression': compression})


def _wait_migration(q, timeout, what):
    end = time.monotonic() + timeout
    while True:
        info = q.cmd('query-migrate')
        status = info.get('status')
        if status == 'completed':
            return info
        if status in ('failed', 'cancelled'):
            raise AssertionError('%s migration %s: %s' % (what, status, info.get('error-desc')))
        if time.monotonic() > end:
            raise AssertionError('%s migration not done within %ss: %s' % (what, timeout, info))
        time.sleep(0.05)


def _migrate(q, what, end, command=None, **args):
    """Send migration ``command`` (if any), wait until the migration completes, then until
    ``end`` (the ChannelSink or ChannelSource on the other side) is done; abort ``end`` on any
    failure. What ``end.finish`` returns."""
    try:
        if command:
            q.cmd(command, **args)
        _wait_migration(q, 90, what)
        return end.finish(30)
    except BaseException:
        end.abort()
        raise


def _log_size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


# zstd over 4 channels is vm_save's own route for a compressed raw QEMU save (path_used
# multifd-stream): test_save_restore.py's [qemu-4ch-zstd] case takes it through these same
# ChannelSink/ChannelSource end to end (the counter runs on, the filled RAM's checksum).
@pytest.mark.parametrize('compression,channels,main_first', [
    ('none', 1, False),   # multifd channel connected before the main one: QEMU sorts them by magic
    ('none', 4, True),    # the throughput case
], ids=['none-1ch-reversed', 'none-4ch'])
def test_save_restore_through_channel_files(vms, compression, channels, main_first):
    vm = vms.boot('qemu', cmdline_extra='vmfleet.fill=%d' % FILL_MIB).vm
    fill = guest.wait_serial(vm.serial_log, r'VMFLEET-FILL %d ([0-9a-f]{64})' % FILL_MIB, 60)
    fill_sha = fill.group(1)
    save_dir = os.path.join(vm.workdir, 'save')
    os.mkdir(save_dir, 0o700)
    sock = os.path.join(vm.workdir, 'save.sock')

    with connect(vm.qmp_socket, timeout=30) as q:
        _setup_multifd(q, channels, compression)
        # stop right after a counter line, so no line is cut in half by the save
        guest.wait_serial(vm.serial_log, guest.COUNTER, 10, after_offset=_log_size(vm.serial_log))
        q.cmd('stop')
        stopped_at = time.monotonic()
        saved = guest.last_serial_counter(vm.serial_log)
        sink = ChannelSink(sock, save_dir, 'vm', 1 + channels)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        t0 = time.monotonic()
        files = _migrate(q, 'save', sink, 'migrate', uri='unix:' + sock)
        save_s = time.monotonic() - t0
    vm.stop()

    assert not os.path.exists(sock), 'the sink leaves no socket behind'
    kinds = sorted(f['kind'] for f in files)
    assert kinds == ['main'] + ['multifd'] * channels
    total = 0
    for f in files:
        st = os.stat(f['file'])
        assert st.st_size == f['bytes'] > 0
        assert stat.S_IMODE(st.st_mode) == 0o600
        with open(f['file'], 'rb') as fh:
            magic = struct.unpack('>I', fh.read(4))[0]
        assert magic == (QEMU_VM_FILE_MAGIC if f['kind'] == 'main' else MULTIFD_MAGIC)
        total += f['bytes']
    assert total > FILL_MIB << 20, 'random RAM does not compress: at least the fill is in the files'
    if channels > 1:
        assert all(f['bytes'] > 4 << 20 for f in files if f['kind'] == 'multifd'), \
            'RAM pages went over every multifd channel: %s' % files

    # restore into a fresh QEMU with the same machine and disks
    vm2 = QemuGuest(vm.workdir, name=vm.name + '-in', memory_mib=vm.memory_mib,
                    cmdline_extra=vm.cmdline_extra, accel=vm.accel, incoming='defer')
    sock2 = os.path.join(vm.workdir, 'load.sock')
    try:
        vm2.start()
        with connect(vm2.qmp_socket, timeout=30) as q2:
            _setup_multifd(q2, channels, compression)
            q2.cmd('migrate-incoming', uri='unix:' + sock2)
            t0 = time.monotonic()
            source = ChannelSource(files, sock2, main_first=main_first)
            sent = _migrate(q2, 'restore', source)
            load_s = time.monotonic() - t0
            assert sum(s['bytes'] for s in sent) == total == source.bytes_sent()
            assert q2.cmd('query-status')['status'] == 'paused'
            log_at = _log_size(vm2.serial_log)
            # the guest hashes its fill again once it sees it was stopped for 3 s or more (tests/guest/init)
            time.sleep(max(0.0, stopped_at + 3.5 - time.monotonic()))
            q2.cmd('cont')

        first = guest.wait_serial(vm2.serial_log, guest.COUNTER, 20, after_offset=log_at)
        assert int(first.group(1)) == saved + 1, 'the counter runs on from the saved value'
        # the first checksum the guest began after the restore (one begun before may end after it)
        pos = log_at
        while True:
            fillsum = guest.wait_serial(vm2.serial_log, r'VMFLEET-FILLSUM (\d+) ([0-9a-f]{64})', 60,
                                        after_offset=pos)
            pos = fillsum.end()
            if int(fillsum.group(1)) > saved:
                break
        assert fillsum.group(2) == fill_sha, 'the filled RAM came back unchanged'
        with open(vm2.serial_log, 'rb') as fh:
            assert b'VMFLEET-BOOT' not in fh.read(), 'restored, not rebooted'
    finally:
        vm2.stop()

    print('\n%s/%dch: %d bytes in %d files; save %.1f MB/s (%.2fs), load %.1f MB/s (%.2fs)'
          % (compression, channels, total, len(files), total / save_s / 1e6, save_s,
             total / load_s / 1e6, load_s))


@pytest.fixture
def tiny_fs():
    if os.geteuid() != 0:
        pytest.skip('mounting a tmpfs needs root')
    d = tempfile.mkdtemp(prefix='vmfleet-enospc-', dir='/var/tmp')
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'vmfleet-enospc', d],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip('cannot mount a tmpfs here: %s' % r.stderr.strip())
    try:
        yield d
    finally:
        subprocess.run(['umount', d], check=False)
        os.rmdir(d)


def test_sink_out_of_space_names_the_file(tiny_fs):
    sock = os.path.join(tempfile.gettempdir(), 'vmfleet-enospc-%d.sock' % os.getpid())
    sink = ChannelSink(sock, tiny_fs, 'img', 2)
    senders = []
    try:
        for magic, size in ((QEMU_VM_FILE_MAGIC, 64 << 10), (MULTIFD_MAGIC, 4 << 20)):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            senders.append(s)
            s.sendall(struct.pack('>I', magic))
            try:
                s.sendall(b'\xa5' * size)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the sink gave up on this channel: that is the point
            if magic == QEMU_VM_FILE_MAGIC:
                # let the small main channel land before the big one fills the fs: else either may hit ENOSPC
                first = os.path.join(tiny_fs, 'img.ch0')
                deadline = time.monotonic() + 10
                while _log_size(first) < 4 + size and time.monotonic() < deadline:
                    time.sleep(0.01)
        with pytest.raises(MultifdStreamError) as err:
            sink.finish(10)
    finally:
        for s in senders:
            s.close()
        sink.abort()
    assert err.value.path == os.path.join(tiny_fs, 'img.ch1')
    assert 'img.ch1' in str(err.value) and 'ENOSPC' in str(err.value)
    assert os.listdir(tiny_fs) == [], 'partial files are removed'
    assert not os.path.exists(sock)


def test_source_refuses_a_file_that_is_no_migration_stream(tmp_path):
    bogus = tmp_path / 'x.ch0'
    bogus.write_bytes(b'not a stream')
    with pytest.raises(MultifdStreamError, match=re.escape(str(bogus))):
        ChannelSource([str(bogus)], str(tmp_path / 'none.sock'))
