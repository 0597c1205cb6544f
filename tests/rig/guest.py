"""The test guest (built by scripts/build-guest.sh) and readers for what it
leaves behind: counter lines on its serial log, records in its disk images."""

import os
import re
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST_DIR = os.environ.get('VMFLEET_GUEST_DIR') or os.path.join(REPO, 'build', 'guest')
# the kernel's ELF, booted through its PVH entry (scripts/build-guest.sh says why)
KERNEL = os.path.join(GUEST_DIR, 'vmlinux')
# the bzImage, for UEFI guests (their firmware starts the kernel's EFI stub)
KERNEL_EFI = os.path.join(GUEST_DIR, 'vmlinuz')
INITRD = os.path.join(GUEST_DIR, 'initrd.img')
# the same with the QEMU guest agent and ext4 (boot it with vmfleet.qga=1, vmfleet.fs=vdX)
INITRD_QGA = os.path.join(GUEST_DIR, 'initrd-qga.img')
SECTOR = 512

# The guest's tick, once a second; group 1 is the counter. Only whole lines:
# the UART hands QEMU the line a byte at a time. (A str pattern, for wait_serial.)
COUNTER = r'VMFLEET-COUNTER (\d+)\r?\n'
_COUNTER = re.compile(COUNTER.encode())
_RECORD = re.compile(r'^VMFLEET (\S+) (\d+)$')
_SEQ = re.compile(r'^VMFLEET-SEQ (\d+)$')


def build_guest():
    """Build the guest unless it is up to date (that check takes milliseconds)."""
    subprocess.run(['bash', os.path.join(REPO, 'scripts', 'build-guest.sh'), GUEST_DIR],
                   check=True, stdout=subprocess.DEVNULL)
    return GUEST_DIR


def _read(log_path, offset=0):
    try:
        with open(log_path, 'rb') as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b''


def counters_in(data):
    """The counters of the whole counter lines in ``data`` (bytes), in order."""
    return [int(n) for n in _COUNTER.findall(data)]


def serial_counters(log_path, after_offset=0):
    """The counters the guest printed on its serial log, from byte ``after_offset`` on."""
    return counters_in(_read(log_path, after_offset))


def last_serial_counter(log_path):
    found = serial_counters(log_path)
    return found[-1] if found else None


def wait_serial(log_path, pattern_regex, timeout, after_offset=0):
    """Wait until ``pattern_regex`` matches the log at or past byte
    ``after_offset``. The log is read as latin-1, so the match's start() and
    end() are byte offsets into the file (end() is a good next after_offset)."""
    pattern = re.compile(pattern_regex)
    end = time.monotonic() + timeout
    while True:
        text = _read(log_path).decode('latin-1')
        m = pattern.search(text, after_offset)
        if m:
            return m
        if time.monotonic() >= end:
            raise TimeoutError('%r did not appear in %s within %ss; log ends with:\n%s'
                               % (pattern.pattern, log_path, timeout, text[-1500:]))
        time.sleep(0.1)


def read_sectors(image_path, fmt, first, count):
    """Sectors ``first`` .. ``first+count-1`` of an image, even one a running
    QEMU holds: ``qemu-img dd -U`` skips the image lock. The guest flushes
    after each write, so the qcow2 metadata on disk is current."""
    with tempfile.TemporaryDirectory(prefix='vmfleet-read-') as tmp:
        out = os.path.join(tmp, 'out.raw')
        subprocess.run(['qemu-img', 'dd', '-U', '-f', fmt, '-O', 'raw', 'bs=%d' % SECTOR,
                        'skip=%d' % first, 'count=%d' % count, 'if=' + image_path, 'of=' + out],
                       check=True, capture_output=True)
        with open(out, 'rb') as f:
            return f.read()


def _text(sector_bytes):
    return sector_bytes.split(b'\0', 1)[0].decode('ascii', 'replace').strip()


def read_disk_record(image_path, fmt, sector=0):
    """The text of one guest record (NUL padding and newline stripped)."""
    return _text(read_sectors(image_path, fmt, sector, 1))


def disk_counter(image_path, fmt):
    """The counter the guest last wrote to sector 0, or None if none yet."""
    m = _RECORD.match(read_disk_record(image_path, fmt, 0))
    return int(m.group(2)) if m else None


def seq_records(image_path, fmt, count):
    """Values in sectors 1..count written by ``vmfleet.writer``. A sector
    without a record reads as 0 and trailing ones are dropped, so a run with
    no lost write is exactly [1, 2, ..., k]."""
    data = read_sectors(image_path, fmt, 1, count)
    values = []
    for i in range(0, len(data), SECTOR):
        m = _SEQ.match(_text(data[i:i + SECTOR]))
        values.append(int(m.group(1)) if m else 0)
    while values and values[-1] == 0:
        values.pop()
    return values
