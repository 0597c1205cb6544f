"""The same test guest as a libvirt domain, driven with virsh (no libvirt-python)."""

import os
import shutil
import subprocess
from xml.sax.saxutils import escape, quoteattr

from . import guest
from .accel import detect_accel
from .qemu_guest import CMDLINE, DEFAULT_DISKS, create_disks

URI = 'qemu:///system'  # the libvirt every test, benchmark and demo VM lives in

# undefine flags that make it succeed whatever metadata a test left on the domain
_UNDEFINE_FLAGS = ['--managed-save', '--snapshots-metadata', '--checkpoints-metadata', '--nvram']


def virsh(*args, uri=URI, check=True):
    """``virsh -c URI args...``: the CompletedProcess, output as text."""
    return subprocess.run(['virsh', '-c', uri] + list(args), capture_output=True, text=True, check=check)


class LibvirtGuest:
    def __init__(self, workdir, name, memory_mib=256, disks=None, cmdline_extra='', accel=None,
                 uri=URI, guest_agent=False, ext4_disks=(), firmware=None, block_disks=()):
        """``firmware='efi'``: UEFI as libvirt defines it by default (OVMF pflash code, a raw NVRAM
        copied from its template), the kernel still booted directly (OVMF loads it from fw_cfg).
        ``block_disks``: roles whose image the domain reaches as a block device (a loop device)."""
        self.workdir = os.path.abspath(workdir)
        self._name = name
        self.memory_mib = memory_mib
        self.cmdline_extra = cmdline_extra
        self.accel = accel
        self.uri = uri
        # libvirt's QEMU runs as libvirt-qemu: it must reach the workdir
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.disks = create_disks(self.workdir, disks or DEFAULT_DISKS, ext4_disks)
        # a guest agent channel (the guest runs initrd-qga.img)
        self.guest_agent = guest_agent
        self.firmware = firmware
        self.block_disks = tuple(block_disks)
        self.loops = {}  # role -> loop device, attached at start, detached at stop
        self._serial_start = 0

    @property
    def name(self):
        return self._name

    @property
    def serial_log(self):
        return os.path.join(self.workdir, self._name + '.serial.log')

    def disk_path(self, name):
        return self.disks[name][0]

    def virsh(self, *args, check=True):
        return virsh(*args, uri=self.uri, check=check)

    def xml(self):
        accel = self.accel or detect_accel()
        # private copies: libvirt relabels what it boots, keep its hands off build/guest
        kernel = os.path.join(self.workdir, 'kernel')
        initrd = os.path.join(self.workdir, 'initrd.img')
        cmdline = (CMDLINE + ' ' + self.cmdline_extra).strip()
        disks = ''.join(
            ("<disk type='block' device='disk'><driver name='qemu' type=%s/><source dev=%s/>"
             if role in self.loops else
             "<disk type='file' device='disk'><driver name='qemu' type=%s/><source file=%s/>")
            % (quoteattr(fmt), quoteattr(self.loops.get(role, path)))
            + "<target dev='vd%s' bus='virtio'/></disk>\n" % chr(ord('a') + i)
            for i, (role, (path, fmt)) in enumerate(self.disks.items()))
        # no secure boot: it would refuse the unsigned kernel, and its SMM is slow under TCG
        efi = ("<os firmware='efi'><firmware><feature enabled='no' name='secure-boot'/>"
               "<feature enabled='no' name='enrolled-keys'/></firmware>") if self.firmware == 'efi' else '<os>'
        log = quoteattr(self.serial_log)
        if self.guest_agent:
            disks += "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n"
        return """<domain type='%(type)s'>
  <name>%(name)s</name>
  <memory unit='MiB'>%(mem)d</memory>
  <vcpu>1</vcpu>
  %(os)s
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(cmdline)s</cmdline>
  </os>
  %(cpu)s%(features)s
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    %(disks)s
    <serial type='file'><source path=%(log)s append='on'/><target port='0'/></serial>
    <console type='file'><source path=%(log)s append='on'/><target type='serial' port='0'/></console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
""" % dict(type='kvm' if accel == 'kvm' else 'qemu', name=escape(self._name), mem=self.memory_mib,
           kernel=escape(kernel), initrd=escape(initrd), cmdline=escape(cmdline),
           cpu="<cpu mode='host-passthrough'/>" if accel == 'kvm' else '', disks=disks, log=log, os=efi,
           features="<features><acpi/></features>" if self.firmware == 'efi' else '')

    def defined(self):
        return self.virsh('dominfo', self._name, check=False).returncode == 0

    def start(self):
        guest.build_guest()
        # OVMF boots a kernel through its EFI stub, which only the bzImage has
        kernel = guest.KERNEL_EFI if self.firmware == 'efi' else guest.KERNEL
        for src, f in ((kernel, 'kernel'), (guest.INITRD_QGA if self.guest_agent else guest.INITRD, 'initrd.img')):
            shutil.copyfile(src, os.path.join(self.workdir, f))
            os.chmod(os.path.join(self.workdir, f), 0o644)
        if self.virsh('domstate', self._name, check=False).stdout.strip() in ('running', 'paused'):
            # left by a test run that was killed before its teardown: it would fail this one's start
            self.stop()
        for role in self.block_disks:
            if role not in self.loops:
                self.loops[role] = subprocess.run(['losetup', '-f', '--show', self.disks[role][0]],
                                                  capture_output=True, text=True, check=True).stdout.strip()
        if not self.defined():
            path = os.path.join(self.workdir, self._name + '.xml')
            with open(path, 'w') as f:
                f.write(self.xml())
            r = self.virsh('define', path, check=False)
            if r.returncode:
                raise RuntimeError('virsh define %s failed: %s' % (self._name, r.stderr.strip()))
        # the log is appended to across restarts (and restores): boot is judged past this point
        self._serial_start = os.path.getsize(self.serial_log) if os.path.exists(self.serial_log) else 0
        r = self.virsh('start', self._name, check=False)
        if r.returncode:
            raise RuntimeError('virsh start %s failed: %s' % (self._name, r.stderr.strip()))
        return self

    def wait_booted(self, timeout=120):
        return guest.wait_serial(self.serial_log, guest.COUNTER, timeout, self._serial_start)

    def stop(self):
        """Destroy and undefine (and detach its loop devices); fine if the domain is already gone."""
        if not self.defined():
            self.detach_loops()
            return
        self.virsh('destroy', self._name, check=False)
        if self.virsh('undefine', self._name, *_UNDEFINE_FLAGS, check=False).returncode:
            self.virsh('undefine', self._name, check=False)
        if self.defined():
            raise RuntimeError('could not remove libvirt domain %s' % self._name)
        self.detach_loops()

    def detach_loops(self):
        for role, dev in list(self.loops.items()):
            subprocess.run(['losetup', '-d', dev], capture_output=True, check=False)
            del self.loops[role]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
