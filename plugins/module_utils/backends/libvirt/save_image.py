# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's save-image format, written by the collection so that an instant
snapshot's memory file of a libvirt domain is one libvirt restores itself
(virDomainRestore). The layout is libvirt's ``virQEMUSaveHeader``
(src/qemu/qemu_saveimage.h and qemu_saveimage_format.h of libvirt):

    char     magic[16];      "LibvirtQemudPart" while written, "LibvirtQemudSave" once complete
    uint32_t version;        2
    uint32_t data_len;       bytes of XML (NUL-terminated), cookie and zero padding that follow
    uint32_t was_running;    1: libvirt starts the restored domain running by default
    uint32_t format;         0: raw (the migration stream follows as it is)
    uint32_t cookieOffset;   0: no cookie
    uint32_t unused[14];

in host byte order, followed by ``data_len`` bytes (the domain's migratable
XML and zeros), then QEMU's migration stream. Like libvirt we leave 64 KiB
of room after the XML; the stream starts on a 4 KiB boundary."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import struct

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import ImageCorrupt

MAGIC_PARTIAL = b'LibvirtQemudPart'
MAGIC_SAVE = b'LibvirtQemudSave'
VERSION = 2
FORMAT_RAW = 0
_HEADER = struct.Struct('=16s5I14I')
HEADER_SIZE = _HEADER.size  # 92
XML_SLACK = 64 * 1024
ALIGN = 4096


def build_header(xml, was_running):
    """Header, XML and padding of a partial image (bytes); its length is a multiple of 4 KiB."""
    body = xml.encode('utf-8') + b'\0'
    total = -(-(HEADER_SIZE + len(body) + XML_SLACK) // ALIGN) * ALIGN
    data_len = total - HEADER_SIZE
    head = _HEADER.pack(MAGIC_PARTIAL, VERSION, data_len, 1 if was_running else 0, FORMAT_RAW, 0, *([0] * 14))
    return head + body + b'\0' * (data_len - len(body))


def write_header(fd, xml, was_running):
    """Write the partial header at the start of ``fd``; its offset is left where the stream begins."""
    data = build_header(xml, was_running)
    os.lseek(fd, 0, os.SEEK_SET)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return len(data)


def mark_complete(fd):
    """The stream is written: make it durable, then the magic that tells libvirt the image is whole."""
    os.fsync(fd)
    os.pwrite(fd, MAGIC_SAVE, 0)
    os.fsync(fd)


def read_header(path):
    """{magic, version, data_len, was_running, format, xml} of the image at ``path``."""
    try:
        with open(path, 'rb') as f:
            head = f.read(HEADER_SIZE)
            if len(head) != HEADER_SIZE:
                raise ImageCorrupt("memory file %s is too short for a libvirt save image" % path)
            magic, version, data_len, was_running, fmt, cookie = _HEADER.unpack(head)[:6]
            xml = f.read(min(data_len, 16 << 20)).split(b'\0', 1)[0].decode('utf-8', 'replace')
    except OSError as e:
        raise ImageCorrupt("cannot read memory file %s: %s" % (path, e.strerror))
    return dict(magic=magic, version=version, data_len=data_len, was_running=bool(was_running), format=fmt,
                xml=xml)


def check_complete(path):
    """Fail unless ``path`` is a complete raw libvirt save image."""
    h = read_header(path)
    if h['magic'] == MAGIC_PARTIAL:
        raise ImageCorrupt("memory file %s is an incomplete libvirt save image" % path,
                           hint="nothing was changed; the snapshot cannot be reverted, remove it")
    if h['magic'] != MAGIC_SAVE or h['version'] != VERSION or h['format'] != FORMAT_RAW:
        raise ImageCorrupt("memory file %s is not a raw libvirt save image (magic %r, version %d, format %d)"
                           % (path, h['magic'], h['version'], h['format']),
                           hint="nothing was changed; the snapshot cannot be reverted, remove it")
    return h
