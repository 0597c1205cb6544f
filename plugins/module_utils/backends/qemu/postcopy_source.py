# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The postcopy *source* for a memory image written with mapped-ram: it feeds a QEMU
started with ``-incoming`` and ``postcopy-ram`` as if a running QEMU were migrating to it,
so that the guest runs at once and its RAM follows (seed 004's asynchronous revert).

QEMU's own source cannot do this: ``mapped-ram`` (a page-addressable file) and
``postcopy-ram`` cannot be set together in one QEMU. The stream is QEMU's own
(migration/savevm.c, ram.c, docs/devel/migration/postcopy.rst of QEMU 10):

- the header and configuration as the image holds them;
- ``OPEN_RETURN_PATH`` and ``POSTCOPY_ADVISE`` (page size summary, target page size);
- the RAM section's setup (the block list, without the image's mapped-ram headers);
- one ``PACKAGED`` command: ``POSTCOPY_LISTEN``, the device state verbatim from the
  image (it follows the RAM region there), ``POSTCOPY_RUN``; the guest runs now;
- every page in file order in RAM sections, those the destination asks for on the
  return path first (each page sent exactly once: the destination fails on a page
  placed twice), then the RAM section's end and ``EOF``.

Standard library only: it runs as its own process (``python -m``), so that a failure of
the load is a process the caller watches, and so it can run without Ansible.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import socket
import struct
import sys
import threading
import time

MAGIC = 0x5145564d
VERSION = 3
SECTION_START, SECTION_PART, SECTION_END, SECTION_FULL = 0x01, 0x02, 0x03, 0x04
SUBSECTION, CONFIGURATION, COMMAND, FOOTER, EOF = 0x05, 0x07, 0x08, 0x7e, 0x00
CMD_OPEN_RETURN_PATH, CMD_PING, CMD_POSTCOPY_ADVISE, CMD_POSTCOPY_LISTEN, CMD_POSTCOPY_RUN = 1, 2, 3, 4, 5
CMD_POSTCOPY_RAM_DISCARD, CMD_PACKAGED = 6, 7
RP_SHUT, RP_PONG, RP_REQ_PAGES_ID, RP_REQ_PAGES = 1, 2, 3, 4
FLAG_ZERO, FLAG_MEM_SIZE, FLAG_PAGE, FLAG_EOS, FLAG_CONTINUE, FLAG_MULTIFD_FLUSH = 0x2, 0x4, 0x8, 0x10, 0x20, 0x200
PAGE = 4096
# one read of the image, one send: 256 KiB. A page the running guest asks for waits behind the
# chunk being sent and what the socket holds: both are kept small, or each of the guest's first
# faults waits milliseconds (bench/results/instant_revert.md measured ~10 ms each with 1 MiB chunks)
CHUNK_PAGES = 64
SEND_BUFFER = 128 << 10
ZERO_PAGE = bytes(PAGE)


class ImageError(Exception):
    pass


def bitmap_bytes(pages):
    """The size of a block's bitmap in the image: QEMU writes it as unsigned longs."""
    return (pages + 63) // 64 * 8


class Block(object):
    def __init__(self, name, length, pages_offset, bitmap_offset):
        self.name = name
        self.length = length
        self.pages = length // PAGE
        self.pages_offset = pages_offset
        self.bitmap_offset = bitmap_offset
        self.sent = bytearray((self.pages + 7) // 8)

    def was_sent(self, i):
        return self.sent[i >> 3] >> (i & 7) & 1

    def mark_sent(self, i):
        self.sent[i >> 3] |= 1 << (i & 7)


class MappedRamImage(object):
    """The parts of a mapped-ram migration file a postcopy source needs: the bytes of its
    header and configuration, the RAM section's id and block list (with where each block's
    bitmap and pages are), and the device state bytes."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self._parse()
        except (struct.error, IndexError, ValueError) as e:
            os.close(self.fd)
            raise ImageError('%s is not a mapped-ram memory image QEMU wrote (%s)' % (path, e))
        except ImageError:
            os.close(self.fd)
            raise

    def close(self):
        os.close(self.fd)

    def _read(self, off, n):
        data = os.pread(self.fd, n, off)
        if len(data) != n:
            raise ImageError('%s ends at %d, %d bytes short' % (self.path, off + len(data), n - len(data)))
        return data

    def _parse(self):
        size = os.fstat(self.fd).st_size
        head = self._read(0, min(size, 65536))
        magic, version = struct.unpack('>II', head[:8])
        if magic != MAGIC or version != VERSION:
            raise ImageError('%s is not a QEMU migration stream (version 3)' % self.path)
        pos = self._configuration(head)
        ram_start = pos + 5
        if head[pos] != SECTION_START or head[ram_start:ram_start + 12] != b'\x03ram\x00\x00\x00\x00\x00\x00\x00\x04':
            raise ImageError('%s has no RAM section where QEMU puts it' % self.path)
        self.section_id = struct.unpack('>I', head[pos + 1:pos + 5])[0]
        pos = ram_start + 12
        total = struct.unpack('>Q', self._read(pos, 8))[0]
        if not total & FLAG_MEM_SIZE:
            raise ImageError('%s: the RAM section does not start with its size' % self.path)
        total &= ~(PAGE - 1)
        # root reads what a QEMU of another user may have written: every length and offset is
        # checked against the file before it is used (a sparse image is as long as its RAM)
        if not 0 < total <= size:
            raise ImageError('%s: its RAM size %d does not fit its %d bytes' % (self.path, total, size))
        pos += 8
        self.blocks = []
        left = total
        while left:
            n = self._read(pos, 1)[0]
            name = self._read(pos + 1, n).decode('ascii')
            length = struct.unpack('>Q', self._read(pos + 1 + n, 8))[0]
            pos += 9 + n
            hversion, page_size, bitmap_offset, pages_offset = struct.unpack('>IQQQ', self._read(pos, 28))
            if hversion != 1 or page_size != PAGE:
                raise ImageError('%s: block %s is not mapped-ram v1 with 4 KiB pages' % (self.path, name))
            if not (0 < length <= left and length % PAGE == 0 and pages_offset % PAGE == 0
                    and pos + 28 <= bitmap_offset <= pages_offset - bitmap_bytes(length // PAGE)
                    and pages_offset <= size - length):
                raise ImageError('%s: block %s (%d bytes at offset %d) does not fit the image (%d bytes, %d of RAM '
                                 'left to place)' % (self.path, name, length, pages_offset, size, left))
            b = Block(name, length, pages_offset, bitmap_offset)
            self.blocks.append(b)
            left -= length
            pos = pages_offset + length
        # the rest of the RAM section's setup, then its iterations: flags only, the pages are in place
        pos = self._skip_ram_records(pos)
        while True:
            kind = self._read(pos, 1)[0]
            if kind not in (SECTION_PART, SECTION_END):
                break
            if struct.unpack('>I', self._read(pos + 1, 4))[0] != self.section_id:
                raise ImageError('%s: a section other than RAM among the RAM iterations' % self.path)
            pos = self._skip_ram_records(pos + 5)
        if kind != SECTION_FULL:
            raise ImageError('%s: no device state after the RAM (section type %d)' % (self.path, kind))
        self.size = size
        self.device_state = (pos, self._device_state_end(pos, size))
        self.ram_bytes = total

    def _configuration(self, head):
        """Read the configuration section into ``self.preamble``, as the destination must see it:
        without mapped-ram among the capabilities it validates (the destination loads a stream,
        not this file). Returns where the next section starts."""
        if head[8] != CONFIGURATION:
            raise ImageError('%s has no configuration section' % self.path)
        n = struct.unpack('>I', head[9:13])[0]
        out = [head[8:13 + n]]
        pos = 13 + n
        while head[pos] == SUBSECTION:
            name = head[pos + 2:pos + 2 + head[pos + 1]]
            body = pos + 2 + len(name) + 4  # after the subsection's version
            if name != b'configuration/capabilities':
                raise ImageError('%s: configuration subsection %s is not supported' % (self.path, name.decode()))
            count = struct.unpack('>I', head[body:body + 4])[0]
            caps, p = [], body + 4
            for dummy in range(count):
                caps.append(head[p + 1:p + 1 + head[p]])
                p += 1 + head[p]
            caps = [c for c in caps if c != b'mapped-ram']
            if caps:
                out.append(head[pos:body] + struct.pack('>I', len(caps))
                           + b''.join(struct.pack('>B', len(c)) + c for c in caps))
            pos = p
        self.preamble = b''.join(out)
        return pos

    def _skip_ram_records(self, pos):
        while True:
            flags = struct.unpack('>Q', self._read(pos, 8))[0] & (PAGE - 1)
            pos += 8
            if flags & ~(FLAG_EOS | FLAG_MULTIFD_FLUSH):
                raise ImageError('%s: RAM records with pages in the stream (flags %#x): not a mapped-ram image'
                                 % (self.path, flags))
            if flags & FLAG_EOS:
                break
        if self._read(pos, 1)[0] == FOOTER:
            pos += 5
        return pos

    def _device_state_end(self, start, size):
        """The device state ends with EOF, followed by QEMU's JSON description when there is one."""
        tail_len = min(size - start, 4 << 20)
        tail = self._read(size - tail_len, tail_len)
        i = tail.rfind(b'\x00\x06')
        while i >= 0:
            if i + 6 <= len(tail) and struct.unpack('>I', tail[i + 2:i + 6])[0] == len(tail) - i - 6:
                return size - tail_len + i
            i = tail.rfind(b'\x00\x06', 0, i)
        if tail[-1:] == b'\x00':
            return size - 1
        raise ImageError('%s does not end as QEMU ends a migration stream' % self.path)

    def block(self, name):
        for b in self.blocks:
            if b.name == name:
                return b
        raise ImageError('the destination asked for block %s, which the image does not have' % name)


def _cmd(cmd, data=b''):
    return struct.pack('>BHH', COMMAND, cmd, len(data)) + data


class PostcopySource(object):
    """Serve ``image`` to the QEMU listening (``migrate-incoming``) on ``address``."""

    def __init__(self, image, address, progress=None):
        self.image = image
        self.address = address
        self.progress = progress  # callable(dict), from the sending thread
        self.cond = threading.Condition()
        self.lock = threading.Lock()  # which pages are out
        self.preempt_lock = threading.Lock()
        self.preempt = None
        self.ponged = threading.Event()
        self.shut = False
        self.rp_error = None
        self.sent_pages = 0
        self.requested = 0
        self.total_pages = sum(b.pages for b in image.blocks)

    def run(self):
        img = self.image
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        # the return path's reader must get the interpreter at once when a request comes, not
        # after the sender's 5 ms time slice
        sys.setswitchinterval(0.0005)
        self.sock.connect(self.address)
        self.t0 = time.monotonic()
        s = self.sock
        s.sendall(struct.pack('>II', MAGIC, VERSION) + img.preamble)
        s.sendall(_cmd(CMD_OPEN_RETURN_PATH) + _cmd(CMD_PING, struct.pack('>I', 1)))
        reader = threading.Thread(target=self._return_path, name='return-path')
        reader.daemon = True
        reader.start()
        s.sendall(_cmd(CMD_POSTCOPY_ADVISE, struct.pack('>QQ', PAGE, PAGE)))
        setup = [struct.pack('>BIB', SECTION_START, img.section_id, 3), b'ram', struct.pack('>II', 0, 4),
                 struct.pack('>Q', img.ram_bytes | FLAG_MEM_SIZE)]
        for b in img.blocks:
            name = b.name.encode('ascii')
            setup += [struct.pack('>B', len(name)), name, struct.pack('>Q', b.length)]
        setup += [struct.pack('>Q', FLAG_EOS), struct.pack('>BI', FOOTER, img.section_id)]
        s.sendall(b''.join(setup))
        start, end = img.device_state
        # QEMU 10 has a bug on the path where LISTEN follows ADVISE directly (savevm.c,
        # loadvm_postcopy_handle_listen): it sets the state back from LISTENING to DISCARD, so
        # every page goes through the precopy loader and the first one deadlocks on userfaultfd.
        # A QEMU source always sends a discard first; so do we, of one page nothing has placed yet.
        first = img.blocks[0].name.encode('ascii')
        s.sendall(_cmd(CMD_POSTCOPY_RAM_DISCARD, struct.pack('>BB', 0, len(first)) + first
                       + struct.pack('>BQQ', 0, 0, PAGE)))
        # the destination took the first connection as the main stream once it answers; the
        # second is then its preempt channel (capability postcopy-preempt), which it must have
        # before it loads the device state
        if not self.ponged.wait(60) or self.rp_error is not None:
            raise IOError('the destination QEMU did not answer on the return path: %s' % self.rp_error)
        preempt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        preempt.connect(self.address)
        self.preempt = preempt
        package = (_cmd(CMD_POSTCOPY_LISTEN) + img._read(start, end - start)
                   + _cmd(CMD_PING, struct.pack('>I', 3)) + _cmd(CMD_POSTCOPY_RUN))
        s.sendall(_cmd(CMD_PACKAGED, struct.pack('>I', len(package))) + package)
        self._report('running')
        for b in img.blocks:
            i = 0
            while i < b.pages:
                if self.rp_error is not None:
                    raise IOError('the destination QEMU failed: %s' % self.rp_error)
                n = min(CHUNK_PAGES, b.pages - i)
                self._send(b, i, n)
                i += n
        self._end_preempt()
        s.sendall(struct.pack('>BIQBI', SECTION_END, img.section_id, FLAG_EOS, FOOTER, img.section_id)
                  + struct.pack('>B', EOF))
        self._report('sent')
        # the destination says SHUT once it has placed everything; then the stream may close
        with self.cond:
            while not self.shut and self.rp_error is None:
                self.cond.wait(1.0)
        self._report('done' if self.shut else 'failed')
        if not self.shut:
            raise IOError('the destination QEMU closed its return path before it said it was done: %s'
                          % self.rp_error)
        s.close()

    def _report(self, phase):
        if self.progress:
            self.progress(dict(phase=phase, pages=self.sent_pages, total_pages=self.total_pages,
                               requested=self.requested, elapsed_s=round(time.monotonic() - self.t0, 3)))

    def _records(self, b, first, count):
        """The records of pages first..first+count of ``b`` not out yet (marked out now: the
        destination fails on a page placed twice, whichever channel it came by)."""
        with self.lock:
            todo = [i for i in range(first, min(first + count, b.pages)) if not b.was_sent(i)]
            for i in todo:
                b.mark_sent(i)
            self.sent_pages += len(todo)
        if not todo:
            return []
        # every page by its place, not by the image's bitmap: QEMU 10 writes that bitmap only when a
        # migration completes its RAM section, which a background snapshot never does (it stays zero).
        # A page the snapshot found zero was never written: a hole, read as zeros.
        data = self.image._read(b.pages_offset + todo[0] * PAGE, (todo[-1] - todo[0] + 1) * PAGE)
        name = b.name.encode('ascii')
        out = []
        cont = False
        for i in todo:
            o = (i - todo[0]) * PAGE
            page = data[o:o + PAGE]
            flags = FLAG_ZERO if page == ZERO_PAGE else FLAG_PAGE
            out.append(struct.pack('>Q', i * PAGE | flags | (FLAG_CONTINUE if cont else 0)))
            if not cont:
                out.append(struct.pack('>B', len(name)) + name)
                cont = True
            out.append(page if flags == FLAG_PAGE else b'\x00')
        return out

    def _send(self, b, first, count):
        """Pages first..first+count of ``b`` that are not out yet, as one RAM section of the main stream."""
        out = self._records(b, first, count)
        if not out:
            return
        sid = self.image.section_id
        self.sock.sendall(b''.join([struct.pack('>BI', SECTION_PART, sid)] + out
                                   + [struct.pack('>QBI', FLAG_EOS, FOOTER, sid)]))
        if self.sent_pages % (CHUNK_PAGES * 256) < count:
            self._report('loading')

    def _send_urgent(self, b, start, length):
        """A page the guest waits for, at once on the preempt channel (postcopy-preempt): never
        behind the background stream. Bare page records there; EOS ends QEMU's reader of it."""
        first = start // PAGE
        out = self._records(b, first, max(1, (start + length + PAGE - 1) // PAGE - first))
        with self.preempt_lock:
            if out and self.preempt is not None:
                self.preempt.sendall(b''.join(out))

    def _end_preempt(self):
        with self.preempt_lock:
            if self.preempt is not None:
                self.preempt.sendall(struct.pack('>Q', FLAG_EOS))
                self.preempt.close()
                self.preempt = None

    def _return_path(self):
        f = self.sock.makefile('rb')
        block = None
        try:
            while True:
                head = f.read(4)
                if len(head) < 4:
                    raise IOError('return path closed')
                kind, n = struct.unpack('>HH', head)
                data = f.read(n)
                if kind == RP_SHUT:
                    with self.cond:
                        self.shut = True
                        self.cond.notify_all()
                    if struct.unpack('>I', data)[0]:
                        raise IOError('the destination QEMU shut the migration down with an error')
                    return
                if kind == RP_PONG:
                    self.ponged.set()
                if kind in (RP_REQ_PAGES_ID, RP_REQ_PAGES):
                    start, length = struct.unpack('>QI', data[:12])
                    if kind == RP_REQ_PAGES_ID:
                        block = self.image.block(data[13:13 + data[12]].decode('ascii', 'replace'))
                    if block is None or start % PAGE or start + length > block.length:
                        raise ImageError('the destination asked for %d bytes at %d of block %s, which is not in it'
                                         % (length, start, block.name if block else '(none named)'))
                    self.requested += 1
                    self._send_urgent(block, start, length)
        except (IOError, OSError, ImageError, struct.error) as e:
            with self.cond:
                if not self.shut:
                    self.rp_error = str(e)
                self.cond.notify_all()
            self.ponged.set()


def main(argv=None):
    """python -m ...postcopy_source IMAGE SOCKET: progress as JSON lines on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    image_path, address = argv[:2]

    def progress(p):
        sys.stdout.write(json.dumps(p) + '\n')
        sys.stdout.flush()
    try:
        image = MappedRamImage(image_path)
        PostcopySource(image, address, progress).run()
    except (ImageError, IOError, OSError) as e:
        sys.stdout.write(json.dumps(dict(phase='failed', error=str(e))) + '\n')
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
