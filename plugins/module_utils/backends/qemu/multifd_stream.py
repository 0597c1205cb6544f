# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Socket-based multifd save and restore: the path used when compression is
asked for (QEMU's ``file:`` + mapped-ram path allows none).

Save: ``ChannelSink`` listens on a UNIX socket that QEMU's ``migrate`` with
``unix:<path>`` connects to, once for the main migration stream and once per
multifd channel, and writes each connection into its own file. Restore:
``ChannelSource`` connects to the socket of ``migrate-incoming unix:<path>``
once per file and streams the files back.

What QEMU (checked against 10.0) does with the channels: the source opens the
main channel first and then the multifd channels, but they may be accepted in
any order. The destination tells them apart by peeking at each connection's
first four bytes (the main stream starts with the QEVM file magic, a multifd
channel with the multifd magic), and multifd channels carry their own channel
id, so no connection order is required on restore as long as there is no TLS
and no postcopy. We still connect the main channel first.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import os
import socket
import stat
import struct
import threading

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import durable
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import MultifdStreamError
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until

# migration/savevm.c QEMU_VM_FILE_MAGIC ("QEVM") and migration/multifd.h
# MULTIFD_MAGIC; both are written big-endian as the first 4 bytes of a stream.
QEMU_VM_FILE_MAGIC = 0x5145564d
MULTIFD_MAGIC = 0x11223344
_MAGIC_LEN = 4

BUF_SIZE = 4 * 1024 * 1024
SENDFILE_CHUNK = 16 * 1024 * 1024
_F_SETPIPE_SZ = 1031


def stream_kind(head):
    """'main', 'multifd' or 'unknown' from a stream's first bytes."""
    if len(head) < _MAGIC_LEN:
        return 'unknown'
    magic = struct.unpack('>I', head[:_MAGIC_LEN])[0]
    if magic == QEMU_VM_FILE_MAGIC:
        return 'main'
    if magic == MULTIFD_MAGIC:
        return 'multifd'
    return 'unknown'


def file_kind(path):
    with open(path, 'rb') as f:
        return stream_kind(f.read(_MAGIC_LEN))


def _describe(exc):
    if isinstance(exc, OSError) and exc.errno:
        return '%s (%s)' % (os.strerror(exc.errno), errno.errorcode.get(exc.errno, exc.errno))
    return str(exc) or exc.__class__.__name__


def _splice_available():
    return hasattr(os, 'splice') and hasattr(os, 'pipe2')


class _Channel(object):
    """One accepted connection and the file it is written to."""

    def __init__(self, index, conn, path):
        self.index = index
        self.conn = conn
        self.path = path
        self.fd = None
        self.bytes = 0
        self.head = b''
        self.error = None
        self.done = threading.Event()
        self.thread = None

    @property
    def kind(self):
        return stream_kind(self.head)


class ChannelSink(object):
    """Receives QEMU's outgoing migration connections on ``sock_path`` and
    writes each into ``out_dir/<prefix>.ch<N>`` (N = accept order, from 0).

    Start it before issuing ``migrate`` with ``unix:<sock_path>``; call
    ``finish()`` once QEMU's ``query-migrate`` says ``completed``, and
    ``abort()`` if it says ``failed``/``cancelled`` or the caller gives up:
    a stream QEMU cut short also ends in a clean EOF, so only QEMU can say
    that the files are complete. ``expected_channels`` is 1 +
    multifd-channels. ``zero_copy`` (default: when os.splice exists) moves
    the data socket -> pipe -> file with splice(2) instead of recv + write.
    """

    def __init__(self, sock_path, out_dir, prefix, expected_channels, buf_size=BUF_SIZE,
                 zero_copy=None):
        if expected_channels < 1:
            raise ValueError('expected_channels must be at least 1')
        if not os.path.isdir(out_dir):
            raise MultifdStreamError('directory %s does not exist' % out_dir, path=out_dir)
        self.sock_path = sock_path
        self.out_dir = out_dir
        self.prefix = prefix
        self.expected_channels = expected_channels
        self.buf_size = buf_size
        self.zero_copy = _splice_available() if zero_copy is None else bool(zero_copy and _splice_available())
        self._channels = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._accept_error = None
        self._listener = self._listen()
        self._acceptor = threading.Thread(target=self._accept_loop, name='multifd-sink-accept')
        self._acceptor.daemon = True
        self._acceptor.start()

    # --- setup -----------------------------------------------------------
    def _listen(self):
        if len(self.sock_path.encode()) > 107:
            raise MultifdStreamError('socket path too long for a UNIX socket: %s' % self.sock_path,
                                     path=self.sock_path, hint='use a shorter directory')
        try:
            st = os.lstat(self.sock_path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise MultifdStreamError('%s exists and is not a socket' % self.sock_path,
                                         path=self.sock_path)
            os.unlink(self.sock_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            sock.bind(self.sock_path)
        except OSError as e:
            sock.close()
            raise MultifdStreamError('cannot listen on %s: %s' % (self.sock_path, _describe(e)),
                                     path=self.sock_path)
        finally:
            os.umask(old_umask)
        os.chmod(self.sock_path, 0o600)
        sock.listen(64)
        sock.settimeout(0.2)
        return sock

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if not self._stop.is_set():
                    self._accept_error = e
                return
            conn.settimeout(None)
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return
                index = len(self._channels)
                path = os.path.join(self.out_dir, '%s.ch%d' % (self.prefix, index))
                ch = _Channel(index, conn, path)
                self._channels.append(ch)
            ch.thread = threading.Thread(target=self._receive, args=(ch,),
                                         name='multifd-sink-%d' % index)
            ch.thread.daemon = True
            ch.thread.start()

    # --- per channel -----------------------------------------------------
    def _receive(self, ch):
        try:
            ch.fd = os.open(ch.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_CLOEXEC', 0),
                            0o600)
            if self.zero_copy:
                self._receive_splice(ch)
            else:
                self._receive_copy(ch)
        except Exception as e:  # reported by finish()
            ch.error = e
            try:
                # make QEMU's migration fail now instead of blocking on a full socket
                ch.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        finally:
            try:
                ch.conn.close()
            except OSError:
                pass
            ch.done.set()

    def _write_all(self, ch, view):
        while len(view):
            n = os.write(ch.fd, view)
            view = view[n:]

    def _take_head(self, ch, data):
        if len(ch.head) < _MAGIC_LEN:
            ch.head += bytes(data[:_MAGIC_LEN - len(ch.head)])

    def _receive_copy(self, ch):
        buf = bytearray(self.buf_size)
        view = memoryview(buf)
        while True:
            n = ch.conn.recv_into(buf)
            if n == 0:
                return
            self._take_head(ch, view[:n])
            self._write_all(ch, view[:n])
            ch.bytes += n

    def _receive_splice(self, ch):
        # the magic comes through the ordinary path, the rest by splice(2):
        # socket -> pipe -> file without copying through user space
        while len(ch.head) < _MAGIC_LEN:
            data = ch.conn.recv(_MAGIC_LEN - len(ch.head))
            if not data:
                self._write_all(ch, memoryview(ch.head))
                ch.bytes = len(ch.head)
                return
            ch.head += data
        self._write_all(ch, memoryview(ch.head))
        ch.bytes = len(ch.head)
        rfd, wfd = os.pipe2(getattr(os, 'O_CLOEXEC', 0))
        try:
            try:
                import fcntl
                fcntl.fcntl(wfd, _F_SETPIPE_SZ, self.buf_size)
            except (ImportError, OSError):
                pass  # the default pipe size still works, only slower
            sfd = ch.conn.fileno()
            while True:
                n = os.splice(sfd, wfd, self.buf_size)
                if n == 0:
                    return
                left = n
                while left:
                    m = os.splice(rfd, ch.fd, left)
                    if m == 0:
                        raise OSError(errno.EIO, 'short splice into file')
                    left -= m
                ch.bytes += n
        finally:
            os.close(rfd)
            os.close(wfd)

    # --- public ----------------------------------------------------------
    def bytes_received(self):
        with self._lock:
            return sum(ch.bytes for ch in self._channels)

    def channels_connected(self):
        with self._lock:
            return len(self._channels)

    def _stop_accepting(self):
        self._stop.set()
        # the acceptor wakes up every 0.2 s; close the listener after it left
        if self._acceptor.is_alive() and self._acceptor is not threading.current_thread():
            self._acceptor.join(2)
        try:
            self._listener.close()
        except OSError:
            pass
        try:
            os.unlink(self.sock_path)
        except OSError:
            pass

    def finish(self, timeout=60.0):
        """Wait until ``expected_channels`` connections came and every one
        reached EOF, fsync and close the files; return one dict per file:
        ``{'file', 'bytes', 'kind'}``. On any failure the partial files are
        removed and MultifdStreamError is raised, naming the file."""
        deadline = Deadline(timeout)
        seen = {}

        def all_ended():
            with self._lock:
                channels = seen['channels'] = list(self._channels)
            failed = [ch for ch in channels if ch.done.is_set() and ch.error is not None]
            if failed:
                ch = failed[0]
                raise MultifdStreamError('writing %s failed: %s' % (ch.path, _describe(ch.error)),
                                         path=ch.path, bytes=ch.bytes)
            if self._accept_error is not None:
                raise MultifdStreamError('accepting on %s failed: %s'
                                         % (self.sock_path, _describe(self._accept_error)), path=self.sock_path)
            return True if len(channels) >= self.expected_channels and all(ch.done.is_set() for ch in channels) \
                else None

        def timed_out():
            channels = seen['channels']
            pending = [ch.path for ch in channels if not ch.done.is_set()]
            if len(channels) < self.expected_channels:
                return MultifdStreamError('only %d of %d migration channels connected to %s within %ss'
                                          % (len(channels), self.expected_channels, self.sock_path, timeout),
                                          path=self.sock_path)
            return MultifdStreamError('%s did not reach end of stream within %ss' % (', '.join(pending), timeout),
                                      path=pending[0])

        try:
            poll_until(all_ended, deadline, timed_out, interval=0.05)
            self._stop_accepting()
            # a connection accepted just before we stopped
            with self._lock:
                channels = list(self._channels)
            for ch in channels:
                ch.done.wait(deadline.remaining())
                if not ch.done.is_set():
                    raise MultifdStreamError('%s did not reach end of stream within %ss' % (ch.path, timeout),
                                             path=ch.path)
                if ch.error is not None:
                    raise MultifdStreamError('writing %s failed: %s' % (ch.path, _describe(ch.error)),
                                             path=ch.path, bytes=ch.bytes)
            result = []
            for ch in channels:
                try:
                    os.fsync(ch.fd)
                    fd, ch.fd = ch.fd, None
                    os.close(fd)
                except OSError as e:
                    raise MultifdStreamError('writing %s failed: %s' % (ch.path, _describe(e)),
                                             path=ch.path, bytes=ch.bytes)
                result.append({'file': ch.path, 'bytes': ch.bytes, 'kind': ch.kind})
            kinds = [r['kind'] for r in result]
            if kinds.count('main') != 1 or kinds.count('unknown'):
                bad = [r['file'] for r in result if r['kind'] != 'multifd']
                raise MultifdStreamError('the received streams are not one QEMU main stream plus multifd '
                                         'channels (kinds: %s; check %s)' % (', '.join(kinds), ', '.join(bad)),
                                         path=bad[0] if bad else None)
            try:
                durable.fsync_dir(self.out_dir)
            except OSError as e:
                raise MultifdStreamError('syncing directory %s failed: %s' % (self.out_dir, _describe(e)),
                                         path=self.out_dir)
            self._closed = True
            return result
        except Exception:
            self.abort()
            raise

    def abort(self):
        """Close every connection and file and remove the partial files.
        Safe to call more than once; a no-op after a successful finish()."""
        if self._closed:
            return
        self._closed = True
        self._stop_accepting()
        with self._lock:
            channels = list(self._channels)
        for ch in channels:
            try:
                ch.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for ch in channels:
            if ch.thread is not None:
                ch.thread.join(5)
            if ch.fd is not None:
                try:
                    os.close(ch.fd)
                except OSError:
                    pass
                ch.fd = None
            try:
                os.unlink(ch.path)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()


class _Feed(object):
    def __init__(self, path, kind):
        self.path = path
        self.kind = kind
        self.sock = None
        self.bytes = 0
        self.size = 0
        self.error = None
        self.thread = None
        self.done = threading.Event()


class ChannelSource(object):
    """Streams saved channel files into QEMU's ``migrate-incoming
    unix:<sock_path>`` socket, one connection per file, each in its own
    thread. ``files`` are paths or the dicts ``ChannelSink.finish()``
    returned. The main stream connects first (``main_first=False`` reverses
    the order, for tests); streaming starts at once."""

    def __init__(self, files, sock_path, connect_timeout=30.0, main_first=True):
        self.sock_path = sock_path
        feeds = []
        for f in files:
            path = f['file'] if isinstance(f, dict) else f
            try:
                kind = file_kind(path)
            except OSError as e:
                raise MultifdStreamError('cannot read %s: %s' % (path, _describe(e)), path=path)
            if kind == 'unknown':
                raise MultifdStreamError('%s is not a QEMU migration stream (no QEVM or multifd magic)' % path,
                                         path=path)
            feeds.append(_Feed(path, kind))
        mains = [fd for fd in feeds if fd.kind == 'main']
        if len(mains) != 1:
            raise MultifdStreamError('need exactly one main migration stream among %s, found %d'
                                     % (', '.join(fd.path for fd in feeds), len(mains)),
                                     path=mains[1].path if mains else None)
        feeds.sort(key=lambda fd: fd.kind != 'main')
        if not main_first:
            feeds.reverse()
        self._feeds = feeds
        try:
            for fd in feeds:
                fd.sock = self._connect(fd, connect_timeout)
                fd.thread = threading.Thread(target=self._send, args=(fd,),
                                             name='multifd-source-%s' % os.path.basename(fd.path))
                fd.thread.daemon = True
                fd.thread.start()
        except Exception:
            self.abort()
            raise

    def _connect(self, feed, timeout):
        def connected():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.sock_path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as e:
                sock.close()
                seen['error'] = e
                return None  # QEMU is not listening yet
            except OSError as e:
                sock.close()
                raise MultifdStreamError('cannot connect to %s for %s: %s'
                                         % (self.sock_path, feed.path, _describe(e)), path=feed.path)
        seen = {}
        return poll_until(connected, Deadline(timeout), interval=0.05, on_timeout=lambda: MultifdStreamError(
            'cannot connect to %s for %s: %s' % (self.sock_path, feed.path, _describe(seen['error'])), path=feed.path))

    def _send(self, feed):
        try:
            with open(feed.path, 'rb') as f:
                feed.size = os.fstat(f.fileno()).st_size
                out = feed.sock.fileno()
                offset = 0
                while offset < feed.size:
                    n = os.sendfile(out, f.fileno(), offset, min(SENDFILE_CHUNK, feed.size - offset))
                    if n == 0:
                        raise OSError(errno.EIO, 'file ended early (truncated while sending?)')
                    offset += n
                    feed.bytes = offset
            feed.sock.shutdown(socket.SHUT_WR)
        except Exception as e:  # reported by finish()
            feed.error = e
        finally:
            feed.done.set()

    def bytes_sent(self):
        return sum(fd.bytes for fd in self._feeds)

    def finish(self, timeout=60.0):
        """Wait until every file was sent; return ``[{'file', 'bytes',
        'kind'}]``. Raises MultifdStreamError naming the file on error."""
        deadline = Deadline(timeout)
        try:
            for fd in self._feeds:
                fd.done.wait(deadline.remaining())
            for fd in self._feeds:
                if fd.error is not None:
                    raise MultifdStreamError('sending %s to %s failed: %s'
                                             % (fd.path, self.sock_path, _describe(fd.error)),
                                             path=fd.path, bytes=fd.bytes)
                if not fd.done.is_set():
                    raise MultifdStreamError('sending %s to %s did not finish within %ss (%d of %d bytes)'
                                             % (fd.path, self.sock_path, timeout, fd.bytes, fd.size),
                                             path=fd.path, bytes=fd.bytes)
        except Exception:
            self.abort()
            raise
        self._close()
        return [{'file': fd.path, 'bytes': fd.bytes, 'kind': fd.kind} for fd in self._feeds]

    def _close(self):
        for fd in self._feeds:
            if fd.sock is not None:
                try:
                    fd.sock.close()
                except OSError:
                    pass

    def abort(self):
        for fd in self._feeds:
            if fd.sock is not None:
                try:
                    fd.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for fd in self._feeds:
            if fd.thread is not None:
                fd.thread.join(5)
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()
