"""postcopy_source's reading of a mapped-ram image and the stream it sends, on a synthetic
image laid out as QEMU 10 writes one (migration/savevm.c, ram.c). That QEMU takes the stream
and runs the guest is proven in tests/system/test_instant_revert_background.py."""

import os
import socket
import struct

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import postcopy_source as pc

PAGE = pc.PAGE
DEVICES = b'\x04' + struct.pack('>I', 2) + b'\x05timer' + struct.pack('>II', 0, 2) + b'state' \
    + struct.pack('>BI', pc.FOOTER, 2)


def _image(path, pages, caps=(b'mapped-ram',), vmdesc=True, sparse=False):
    """A mapped-ram image of one block 'pc.ram' holding ``pages`` (bytes each, or None: never written,
    a hole where ``sparse``)."""
    name = b'pc-q35-10.0'
    out = bytearray(struct.pack('>II', pc.MAGIC, pc.VERSION))
    out += struct.pack('>BI', pc.CONFIGURATION, len(name)) + name
    if caps:
        sub = b'configuration/capabilities'
        out += struct.pack('>BB', pc.SUBSECTION, len(sub)) + sub + struct.pack('>II', 1, len(caps))
        out += b''.join(struct.pack('>B', len(c)) + c for c in caps)
    length = len(pages) * PAGE
    out += struct.pack('>BIB', pc.SECTION_START, 1, 3) + b'ram' + struct.pack('>II', 0, 4)
    out += struct.pack('>Q', length | pc.FLAG_MEM_SIZE) + b'\x06pc.ram' + struct.pack('>Q', length)
    bitmap_offset = len(out) + 28
    pages_offset = 1 << 20
    out += struct.pack('>IQQQ', 1, PAGE, bitmap_offset, pages_offset)
    out += b'\0' * (pages_offset - len(out))
    for p in pages:
        out += p if p is not None else b'\0' * PAGE
    out += struct.pack('>QBI', pc.FLAG_EOS, pc.FOOTER, 1)                 # end of the setup
    out += struct.pack('>BIQBI', pc.SECTION_PART, 1, pc.FLAG_EOS, pc.FOOTER, 1)  # an iteration
    out += DEVICES + b'\x00'
    if vmdesc:
        desc = b'{"page_size": 4096, "devices": []}'
        out += struct.pack('>BI', 0x06, len(desc)) + desc
    with open(path, 'wb') as f:
        f.write(out)
    if sparse:
        with open(path, 'r+b') as f:
            f.truncate(pages_offset)
            for i, p in enumerate(pages):
                if p is not None:
                    f.seek(pages_offset + i * PAGE)
                    f.write(p)
            f.seek(pages_offset + length)
            f.write(out[pages_offset + length:])
    return path


@pytest.mark.parametrize('vmdesc', [True, False])
def test_the_image_is_read_as_qemu_wrote_it(tmp_path, vmdesc):
    img = pc.MappedRamImage(_image(str(tmp_path / 'm'), [b'a' * PAGE, None, b'b' * PAGE], vmdesc=vmdesc))
    try:
        assert [(b.name, b.pages, b.pages_offset) for b in img.blocks] == [('pc.ram', 3, 1 << 20)]
        assert img.section_id == 1 and img.ram_bytes == 3 * PAGE
        start, end = img.device_state
        assert img._read(start, end - start) == DEVICES
        # the destination loads a stream, not this file: mapped-ram is no capability of it
        assert b'mapped-ram' not in img.preamble and img.preamble.startswith(b'\x07\x00\x00\x00\x0bpc-q35-10.0')
    finally:
        img.close()


def test_other_validated_capabilities_are_kept(tmp_path):
    img = pc.MappedRamImage(_image(str(tmp_path / 'm'), [None], caps=(b'mapped-ram', b'x-ignore-shared')))
    img.close()
    assert img.preamble.endswith(struct.pack('>I', 1) + b'\x0fx-ignore-shared')


@pytest.mark.parametrize('content, words', [
    (b'not a migration stream at all', 'not a QEMU migration stream'),
    (b'', 'not a mapped-ram memory image'),
])
def test_what_is_no_image_is_refused_by_name(tmp_path, content, words):
    path = tmp_path / 'x'
    path.write_bytes(content)
    with pytest.raises(pc.ImageError, match=words):
        pc.MappedRamImage(str(path))


def _records(stream, section_id=1):
    """(offset, kind, data) of each page record in the RAM sections of ``stream``."""
    out, i = [], 0
    while i < len(stream):
        kind = stream[i]
        if kind not in (pc.SECTION_PART, pc.SECTION_END):
            i += 1
            continue
        if struct.unpack('>I', stream[i + 1:i + 5])[0] != section_id:
            i += 1
            continue
        i += 5
        while True:
            word = struct.unpack('>Q', stream[i:i + 8])[0]
            i += 8
            flags, addr = word & (PAGE - 1), word & ~(PAGE - 1)
            if flags & pc.FLAG_EOS:
                i += 5
                break
            if not flags & pc.FLAG_CONTINUE:
                i += 1 + stream[i]
            if flags & pc.FLAG_PAGE:
                out.append((addr, 'page', stream[i:i + PAGE]))
                i += PAGE
            else:
                out.append((addr, 'zero', stream[i:i + 1]))
                i += 1
    return out


def test_pages_go_out_once_each_zero_pages_as_such(tmp_path):
    """The RAM records of the background stream; that QEMU takes them is proven on a real VM
    (tests/system/test_instant_revert_background.py)."""
    pages = [b'a' * PAGE, None, b'\0' * PAGE, b'c' * PAGE]
    img = pc.MappedRamImage(_image(str(tmp_path / 'm'), pages))
    src = pc.PostcopySource(img, str(tmp_path / 's'))
    src.sock, peer = socket.socketpair()
    try:
        src._send(img.blocks[0], 0, 2)
        src._send(img.blocks[0], 0, 4)  # the first two are out already: only the last two go
        src._send(img.blocks[0], 0, 4)  # nothing left: nothing sent
        src.sock.close()
        stream = b''
        while True:
            data = peer.recv(1 << 16)
            if not data:
                break
            stream += data
    finally:
        peer.close()
        img.close()
    assert _records(stream) == [(0, 'page', b'a' * PAGE), (PAGE, 'zero', b'\0'), (2 * PAGE, 'zero', b'\0'),
                                (3 * PAGE, 'page', b'c' * PAGE)]
    assert src.sent_pages == 4


def test_fill_bitmap_marks_the_pages_that_hold_data_and_no_hole(tmp_path):
    """QEMU's own loader reads only the pages the bitmap marks; a background snapshot leaves it zero."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import memory_load
    probe = tmp_path / 'probe'
    with open(probe, 'wb') as f:
        f.truncate(1 << 20)
    with open(probe, 'rb') as f:
        if os.lseek(f.fileno(), 0, os.SEEK_HOLE) != 0:
            pytest.skip('this file system reports no holes (every page would be marked)')
    pages = [None] * 130
    data = [0, 3] + list(range(10, 40)) + [64, 129]  # a run over whole bytes of the bitmap, and lone pages
    for i in data:
        pages[i] = bytes([i + 1]) * PAGE
    path = _image(str(tmp_path / 'm'), pages, sparse=True)
    img = pc.MappedRamImage(path)
    [b] = img.blocks
    img.close()
    with open(path, 'rb') as f:
        before = f.read()
    assert memory_load.fill_bitmap(path) == len(data)
    with open(path, 'rb') as f:
        after = f.read()
    bitmap = after[b.bitmap_offset:b.bitmap_offset + pc.bitmap_bytes(130)]
    assert len(bitmap) == 24  # 130 pages: three unsigned longs, as QEMU sizes it
    assert [i for i in range(130) if bitmap[i >> 3] >> (i & 7) & 1] == data
    # nothing but the bitmap changed, and the image still reads as before
    assert after[:b.bitmap_offset] == before[:b.bitmap_offset]
    assert after[b.bitmap_offset + 24:] == before[b.bitmap_offset + 24:]
    assert memory_load.fill_bitmap(path) == len(data)
