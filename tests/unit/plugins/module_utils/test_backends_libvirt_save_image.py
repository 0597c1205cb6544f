"""backends/libvirt/save_image.py: libvirt's save-image header as libvirt's
qemu_saveimage.h lays it out, and a partial image told from a complete one."""

import os
import struct

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt import save_image as img
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import ImageCorrupt

XML = "<domain type='qemu'><name>web01</name></domain>"


def test_header_layout_is_libvirts():
    data = img.build_header(XML, was_running=True)
    assert img.HEADER_SIZE == 92  # char magic[16]; uint32 version, data_len, was_running, format, cookieOffset, unused[14]
    assert len(data) % 4096 == 0
    magic, version, data_len, running, fmt, cookie = struct.unpack('=16s5I', data[:36])
    assert (magic, version, running, fmt, cookie) == (b'LibvirtQemudPart', 2, 1, 0, 0)
    assert data_len == len(data) - 92 and data_len >= len(XML) + 1 + 64 * 1024
    assert data[92:92 + len(XML) + 1] == XML.encode() + b'\0'
    assert set(data[36:92]) == {0} and set(data[92 + len(XML):]) == {0}
    assert struct.unpack('=16s5I', img.build_header(XML, was_running=False)[:36])[3] == 0


def test_partial_image_is_refused_until_marked_complete(tmp_path):
    path = str(tmp_path / 'm.vmstate')
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        start = img.write_header(fd, XML, True)
        assert os.lseek(fd, 0, os.SEEK_CUR) == start  # the stream goes on from here
        os.write(fd, b'QEVM' + b'\0' * 100)
        with pytest.raises(ImageCorrupt, match='incomplete'):
            img.check_complete(path)
        img.mark_complete(fd)
    finally:
        os.close(fd)
    h = img.check_complete(path)
    assert h['xml'] == XML and h['was_running'] is True
    with open(path, 'rb') as f:
        assert f.read(16) == b'LibvirtQemudSave'
        f.seek(start)
        assert f.read(4) == b'QEVM'
    with open(path, 'r+b') as f:
        f.write(b'NotLibvirtAtAll!')
    with pytest.raises(ImageCorrupt, match='not a raw libvirt save image'):
        img.check_complete(path)
