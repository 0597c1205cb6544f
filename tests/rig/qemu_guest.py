"""A test guest run by a bare qemu-system-x86_64 (no libvirt), driven over QMP."""

import ctypes
import os
import pwd
import signal
import subprocess
import threading
import time

from . import guest
from .accel import detect_accel

# (name, format, size in MiB); the guest sees them as vda, vdb, vdc in this order
DEFAULT_DISKS = (('root', 'qcow2', 64), ('data', 'qcow2', 64), ('varstore', 'raw', 2))
CMDLINE = 'console=ttyS0 quiet panic=-1'
FIRST_SLOT = 4  # q35 uses slots 0-2 and 0x1f itself


def create_disks(workdir, disks, ext4=()):
    """Create missing disk images; return {name: (path, fmt)}. The disks named in
    ``ext4`` hold an empty ext4 filesystem (the guest mounts one with vmfleet.fs=)."""
    out = {}
    for name, fmt, size_mib in disks:
        path = os.path.join(workdir, '%s.%s' % (name, fmt))
        if not os.path.exists(path):
            if name in ext4:
                raw = path + '.mkfs'
                with open(raw, 'wb') as f:
                    f.truncate(size_mib << 20)
                subprocess.run(['mkfs.ext4', '-q', '-F', raw], check=True, capture_output=True)
                subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', fmt, raw, path],
                               check=True, capture_output=True)
                os.unlink(raw)
            else:
                subprocess.run(['qemu-img', 'create', '-q', '-f', fmt, path, '%dM' % size_mib],
                               check=True, capture_output=True)
        out[name] = (path, fmt)
    return out


def _die_with_parent():
    # a crashed test run must not leave guests burning the CPU
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QemuGuest:
    def __init__(self, workdir, name='rawvm', memory_mib=256, disks=None, cmdline_extra='', accel=None,
                 incoming=None, detach=False, device_ids=None, runas=None, qemu_name=None, guest_agent=False,
                 ext4_disks=()):
        self.workdir = os.path.abspath(workdir)
        self.detach = detach  # outlive this process (molecule, demo): stopped later through the pidfile
        self.incoming = incoming  # e.g. 'defer': start as a migration target
        self.name = name
        self.memory_mib = memory_mib
        self.cmdline_extra = cmdline_extra
        self.accel = accel
        os.makedirs(self.workdir, exist_ok=True)
        self.disks = create_disks(self.workdir, disks or DEFAULT_DISKS, ext4_disks)
        # the QEMU guest agent's port, on a chardev socket (the guest runs initrd-qga.img)
        self.guest_agent = guest_agent
        # a disk's block node is named for it; its device (what QEMU lists it by) too, unless renamed here
        self.device_ids = dict(device_ids or {})
        self.runas = runas  # a user QEMU runs as (its directory and disks become that user's)
        self.qemu_name = qemu_name or name  # QEMU's -name, when it is not the file names' (such as '../../x')
        self.proc = None
        self._argv = None

    def _file(self, suffix):
        return os.path.join(self.workdir, self.name + suffix)

    qmp_socket = property(lambda self: self._file('.qmp'))
    serial_log = property(lambda self: self._file('.serial.log'))
    qemu_log = property(lambda self: self._file('.qemu.log'))
    pidfile = property(lambda self: self._file('.pid'))
    agent_socket = property(lambda self: self._file('.qga'))

    def disk_path(self, name):
        return self.disks[name][0]

    def device_id(self, name):
        return self.device_ids.get(name, name)

    @property
    def pid(self):
        """The QEMU running this VM now: ours, or one vm_restore relaunched."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return self._pidfile_pid()

    def _pidfile_pid(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
        except (OSError, ValueError):
            return None
        # a stale pidfile's number may belong to another process by now
        return pid if self.qmp_socket.encode() in b' '.join(argv) else None

    @property
    def argv(self):
        if self._argv is None:
            self._argv = self._build_argv()
        return list(self._argv)

    def _build_argv(self):
        accel = self.accel or detect_accel()
        argv = ['qemu-system-x86_64', '-name', self.qemu_name, '-machine', 'q35', '-accel', accel]
        if accel == 'kvm':
            argv += ['-cpu', 'host']
        argv += ['-m', str(self.memory_mib), '-smp', '1', '-display', 'none', '-nodefaults',
                 '-serial', 'file:' + self.serial_log,
                 '-kernel', guest.KERNEL, '-initrd', guest.INITRD_QGA if self.guest_agent else guest.INITRD,
                 '-append', (CMDLINE + ' ' + self.cmdline_extra).strip(),
                 '-qmp', 'unix:%s,server=on,wait=off' % self.qmp_socket,
                 '-pidfile', self.pidfile]
        if self.incoming:
            argv += ['-incoming', self.incoming]
        if self.guest_agent:
            argv += ['-chardev', 'socket,id=qga0,path=%s,server=on,wait=off' % self.agent_socket,
                     '-device', 'virtio-serial-pci,id=vser0,bus=pcie.0,addr=0x%x' % (FIRST_SLOT + len(self.disks)),
                     '-device', 'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0']
        for i, (name, (path, fmt)) in enumerate(self.disks.items()):
            argv += ['-blockdev', 'driver=file,filename=%s,node-name=%s-file' % (path, name),
                     '-blockdev', 'driver=%s,file=%s-file,node-name=%s' % (fmt, name, name),
                     '-device', 'virtio-blk-pci,drive=%s,id=%s,bus=pcie.0,addr=0x%x'
                     % (name, self.device_id(name), FIRST_SLOT + i)]
        return argv

    def start(self):
        if self.proc and self.proc.poll() is None:
            raise RuntimeError('%s is already running' % self.name)
        if len(self.qmp_socket) > 107:
            raise ValueError('QMP socket path too long for a unix socket: ' + self.qmp_socket)
        if any(',' in path for path, _fmt in self.disks.values()):
            raise ValueError('disk paths must not contain commas (QEMU option syntax)')
        guest.build_guest()
        for f in (self.qmp_socket, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)
        ids = {}
        if self.runas:
            pw = pwd.getpwnam(self.runas)
            for path in [self.workdir] + [p for p, _fmt in self.disks.values()]:
                os.chown(path, pw.pw_uid, pw.pw_gid)
            ids = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        with open(self.qemu_log, 'ab') as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=os.setsid if self.detach else _die_with_parent, **ids)
        # callers talk QMP right after start(): wait for the socket
        end = time.monotonic() + 30
        while not os.path.exists(self.qmp_socket):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                with open(self.qemu_log, 'rb') as f:
                    tail = f.read()[-2000:].decode('utf-8', 'replace')
                raise RuntimeError('QEMU for %s did not come up:\n%s' % (self.name, tail))
            time.sleep(0.05)
        return self

    def wait_booted(self, timeout=120):
        return guest.wait_serial(self.serial_log, guest.COUNTER, timeout)

    def _qmp_quit(self):
        try:
            from .qmp import qmp
        except ImportError:
            return False

        def quit_():
            try:
                qmp(self.qmp_socket, 'quit')
            except Exception:  # the process is killed below anyway
                pass

        # connect() has no timeout and hangs while another client holds the monitor
        t = threading.Thread(target=quit_, daemon=True)
        t.start()
        t.join(3)
        return True

    def stop(self):
        proc = self.proc
        try:
            if proc is not None and proc.poll() is None:
                if not (os.path.exists(self.qmp_socket) and self._qmp_quit()):
                    proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    try:
                        proc.wait(3)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        finally:
            if proc is not None:
                proc.wait()
                self.proc = None
            self._stop_relaunched()

    def _stop_relaunched(self):
        """vm_restore and instant reverts start QEMU detached from us, with the
        same pidfile and QMP socket: stop that one too."""
        pid = self._pidfile_pid()
        if pid is None:
            return
        if os.path.exists(self.qmp_socket):
            self._qmp_quit()
        for sig, grace in ((None, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if sig is not None:
                try:
                    os.kill(pid, sig)
                except OSError:
                    return
            end = time.time() + grace
            while time.time() < end:
                if self._pidfile_pid() != pid:
                    return
                time.sleep(0.05)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
