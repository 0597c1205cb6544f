"""A fleet of simulated hypervisors on this one machine, reached over real SSH.

Each host is a network namespace (``<prefix><i>``) joined to the root namespace
by a veth pair: the root side ``<prefix><i>`` holds ``<subnet>.<i>.1/24``, the
host's ``eth0`` holds ``<subnet>.<i>.2/24`` (its ``ansible_host``; ``subnet`` is
10.213 unless given, a second rig up at once takes another). The root namespace
forwards between the veths, so that the hosts reach each other (migrations).
Each host's libvirtd has its own host UUID, takes the rig's directory as shared
storage and lets the login user on its socket; root's ~/.ssh on each host holds
the rig's key and every host's host key (its libvirtd reaches a peer's over
``qemu+ssh://vmfleet@<address>/system``). A holder
process (``sleep infinity`` under ``ip netns exec NS unshare --mount
--propagation private``) keeps the host's mount namespace, in which per-host
directories are bind-mounted over /run/libvirt, /var/lib/libvirt, /etc/libvirt
(a copy without domain definitions), /var/log/libvirt, /var/cache/libvirt and /etc/pki/qemu (migration certificates, see
rig/tls.py).
Every daemon of the host is started in both namespaces (``nsenter``): its own
``virtlogd`` and ``libvirtd`` (so ``virsh -c qemu:///system`` on the host shows
only its domains), its own ``sshd`` (key authentication only, login user
``vmfleet`` who becomes root with passwordless sudo), and its raw QEMU VMs (QMP
sockets). From the root namespace a host's libvirt is
``qemu:///system?socket=<dir>/run/libvirt-sock``.

Everything lives under ``/var/tmp/vmfleet-rig-<prefix>/``; the controller side
(client key, known_hosts, SSH control sockets, inventory) too. ``down()`` kills
every process of every host's namespace, deletes the namespaces and veths, the
sudoers entry, the user (when the rig made it) and the directory. A rig holds
``/run/vmfleet-rig-<prefix>.lock`` while up; ``up()`` takes it and sweeps
whatever a killed run of the same prefix left (the mount points it had to make
on the machine, /run/sshd and /var/lib/vmfleet, are listed in
``/run/vmfleet-rig-<prefix>.made`` for that).

  python -m rig.hypervisors up [--hosts N] [--vms M] [--memory MIB] [--prefix P]
  python -m rig.hypervisors down [--prefix P]
"""

import argparse
import fcntl
import json
import os
import pwd
import re
import shutil
import socket
import signal
import subprocess
import sys
import time

from .accel import detect_accel
from .ansible_run import run_tasks
from .guest import REPO
from .libvirt_guest import LibvirtGuest, virsh
from .qemu_guest import QemuGuest
from . import sudoers

PREFIX = 'vmfh'
SUBNET = '10.213'  # the default; two rigs up at once take different ones (Fleet(subnet=...))
USER = 'vmfleet'
GECOS = 'vmfleet test rig'  # marks the login user as the rig's own: down() deletes it
SUDOERS = '/etc/sudoers.d/vmfleet-rig'
# IPv4 forwarding as it was before a rig turned it on (restored when the last rig goes)
FORWARD_MARK = '/run/vmfleet-rig-ip_forward.before'
VENV_PYTHON = os.path.join(REPO, '.venv', 'bin', 'python')
# per-host directory -> where it is bind-mounted in the host's mount namespace
# (/var/lib/vmfleet: the roles' reports, save images and journals stay each host's own)
HOST_DIRS = (('run', '/run/libvirt'), ('lib', '/var/lib/libvirt'), ('etc', '/etc/libvirt'),
             ('log', '/var/log/libvirt'), ('cache', '/var/cache/libvirt'), ('vmfleet', '/var/lib/vmfleet'),
             ('root-ssh', '/root/.ssh'), ('pki', '/etc/pki/qemu'))
# the fleet roles, each with its own variable for the raw QEMU sockets of a host
ROLES = ('pre_upgrade_snapshot', 'snapshot_rollback', 'snapshot_cleanup', 'storage_migration', 'host_maintenance')


def _run(argv, check=True, **kw):
    kw.setdefault('capture_output', True)
    r = subprocess.run(argv, text=True, check=False, **kw)
    if check and r.returncode:
        raise RuntimeError('%s failed (%d): %s' % (' '.join(argv), r.returncode, (r.stderr or '').strip()))
    return r


def _wait(what, predicate, timeout, every=0.1):
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > end:
            raise TimeoutError('%s: not within %ss' % (what, timeout))
        time.sleep(every)


def _pid_from(path):
    try:
        with open(path) as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _kill_pids(pids, grace=5.0):
    """TERM, then KILL what is left after ``grace`` seconds."""
    pids = set(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    end = time.monotonic() + grace
    while pids and time.monotonic() < end:
        pids = set(p for p in pids if _alive(p))
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def _netns_pids(ns):
    r = _run(['ip', 'netns', 'pids', ns], check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


class HostQemuGuest(QemuGuest):
    """A raw QEMU VM started inside a host's network and mount namespaces, so that
    its QMP socket is the one the host's modules see."""

    def __init__(self, host, *args, **kw):
        self.host = host
        super().__init__(*args, **kw)

    def _build_argv(self):
        # nsenter execs QEMU in place: the process (and the pidfile) is QEMU's own
        return self.host.nsenter_argv() + super()._build_argv()


class Host:
    """One simulated hypervisor."""

    def __init__(self, fleet, index):
        self.fleet = fleet
        self.index = index
        self.name = 'hv%d' % index
        self.ns = '%s%d' % (fleet.prefix, index)
        self.veth = self.ns
        self.gateway = '%s.%d.1' % (fleet.subnet, index)
        self.address = '%s.%d.2' % (fleet.subnet, index)
        self.dir = os.path.join(fleet.root, self.name)
        self.holder = None
        self.vms = []  # LibvirtGuest / HostQemuGuest
        self.dead_sockets = []
        self.python = VENV_PYTHON  # this host's ansible_python_interpreter

    # --- paths and namespaces -------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def libvirt_socket(self):
        return self.path('run', 'libvirt-sock')

    @property
    def uri(self):
        """This host's libvirt, from the root namespace."""
        return 'qemu:///system?socket=' + self.libvirt_socket

    def nsenter_argv(self):
        return ['nsenter', '-t', str(self.holder), '-m', '-n', '--']

    def run(self, argv, check=True, **kw):
        """Run ``argv`` on this host (its network and mount namespaces), as root."""
        return _run(self.nsenter_argv() + list(argv), check=check, **kw)

    def virsh(self, *args, check=True):
        return virsh(*args, uri=self.uri, check=check)

    def domstate(self, name):
        """The state virsh gives domain ``name`` here, or None where it is not defined."""
        r = self.virsh('domstate', name, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    def wait_incoming(self, name, proc, timeout=180):
        """Return once domain ``name`` is defined here (a migration's incoming domain: the migration
        runs), while ``proc`` (the playbook migrating it) still runs."""
        end = time.monotonic() + timeout
        while self.domstate(name) is None:
            if proc.poll() is not None:
                raise AssertionError('the migration ended before %s saw an incoming %s: %s'
                                     % (self.name, name, proc.stdout.read()[-3000:]))
            assert time.monotonic() < end, 'no incoming domain %s at %s' % (name, self.name)
            time.sleep(0.2)

    @property
    def ssh_uri(self):
        """This host's libvirt as vm_migrate reaches it from another host."""
        return 'qemu+ssh://%s@%s/system' % (USER, self.address)

    def procs(self, needle):
        """Processes of this host (its network namespace) whose command line holds ``needle``."""
        pids = subprocess.run(['ip', 'netns', 'pids', self.ns], capture_output=True, text=True,
                              check=True).stdout.split()
        out = []
        for pid in pids:
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    if needle.encode() in f.read():
                        out.append(int(pid))
            except OSError:
                pass
        return out

    # --- bring-up -------------------------------------------------------------
    def create(self):
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        _run(['ip', 'netns', 'add', self.ns])
        _run(['ip', 'link', 'add', self.veth, 'type', 'veth', 'peer', 'name', self.veth + 'p',
              'netns', self.ns])
        _run(['ip', 'addr', 'add', self.gateway + '/24', 'dev', self.veth])
        _run(['ip', 'link', 'set', self.veth, 'up'])
        ns = ['ip', 'netns', 'exec', self.ns]
        _run(ns + ['ip', 'link', 'set', self.veth + 'p', 'name', 'eth0'])
        _run(ns + ['ip', 'addr', 'add', self.address + '/24', 'dev', 'eth0'])
        _run(ns + ['ip', 'link', 'set', 'eth0', 'up'])
        _run(ns + ['ip', 'link', 'set', 'lo', 'up'])
        # the other hosts of the fleet (migrations): through the root namespace, which forwards
        _run(ns + ['ip', 'route', 'add', '%s.0.0/16' % self.fleet.subnet, 'via', self.gateway])
        # the holder keeps the host's mount namespace for everything started later
        with open(self.path('holder.log'), 'wb') as log:
            proc = subprocess.Popen(ns + ['unshare', '--mount', '--propagation', 'private', '--',
                                          'sleep', 'infinity'],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.holder = proc.pid  # ip netns exec and unshare exec in place: this is sleep
        mine = os.readlink('/proc/self/ns/mnt')
        _wait('mount namespace of %s' % self.ns,
              lambda: proc.poll() is None and os.readlink('/proc/%d/ns/mnt' % proc.pid) != mine
              and open('/proc/%d/comm' % proc.pid).read().strip() == 'sleep', 10)
        self._libvirt_dirs()
        self._sshd_config()
        self.start_libvirtd()
        self.start_sshd()

    def _libvirt_dirs(self):
        for sub, target in HOST_DIRS:
            d = self.path(sub)
            if sub == 'etc':
                shutil.copytree('/etc/libvirt', d, symlinks=True)
                # none of the machine's domains, and nothing that autostarts
                for sub_dir in ('qemu', 'qemu/autostart', 'qemu/networks/autostart', 'storage/autostart'):
                    p = os.path.join(d, sub_dir)
                    for f in (os.listdir(p) if os.path.isdir(p) else ()):
                        fp = os.path.join(p, f)
                        if f.endswith('.xml') and not os.path.isdir(fp):
                            os.unlink(fp)
            elif sub == 'root-ssh':
                os.makedirs(d, mode=0o700)
            elif sub == 'pki':
                # libvirt's and vm_migrate's migration certificates (empty until a test installs some)
                self.fleet.mountpoint('/etc/pki')
                os.makedirs(d, mode=0o755)
            elif sub == 'cache' and os.path.isdir('/var/cache/libvirt'):
                # QEMU's probed capabilities: saves each libvirtd seconds at start
                shutil.copytree('/var/cache/libvirt', d, symlinks=True)
            else:
                os.makedirs(d)
            self.fleet.mountpoint(target)
            self.run(['mount', '--bind', d, target])
        os.makedirs(self.path('lib', 'images'), exist_ok=True)
        self._migration_config()

    def _migration_config(self):
        """What live migration between the hosts needs: a host UUID of its own (libvirt refuses a
        migration to "the same host"), the rig's directory declared shared storage (every host sees
        it), and the login user allowed on the libvirt socket (a peer's libvirtd comes in through
        ``qemu+ssh://vmfleet@<address>/system``, as virt-ssh-helper run by that user)."""
        uuid = '5eed%04x-0000-4000-8000-%012x' % (sum(self.fleet.prefix.encode()), self.index)
        # qemu+tcp:// as well, as fleets without SSH between their hypervisors have it: plain TCP
        # without authentication, which only the rig's private network reaches
        with open(self.path('etc', 'libvirtd.conf'), 'a') as f:
            f.write('\n# vmfleet test rig\nhost_uuid = "%s"\nunix_sock_group = "%s"\n'
                    'unix_sock_rw_perms = "0770"\nauth_unix_rw = "none"\n'
                    'listen_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\nlisten_addr = "%s"\n'
                    % (uuid, USER, self.address))
        with open(self.path('etc', 'qemu.conf'), 'a') as f:
            f.write('\n# vmfleet test rig\nshared_filesystems = [ "%s" ]\n' % self.fleet.root)

    def write_root_ssh(self, hosts):
        """Root's ~/.ssh on this host (its own mount): the rig's key and every host's host key, so
        that this host's libvirtd reaches its peers over SSH as the login user."""
        d = self.path('root-ssh')
        shutil.copyfile(self.fleet.key, os.path.join(d, 'id_ed25519'))
        os.chmod(os.path.join(d, 'id_ed25519'), 0o600)
        with open(os.path.join(d, 'known_hosts'), 'w') as f:
            f.writelines(h.known_hosts_line for h in hosts)
        with open(os.path.join(d, 'config'), 'w') as f:
            f.write('User %s\nBatchMode yes\nConnectTimeout 10\n' % USER)

    def start_libvirtd(self):
        if not _pid_from(self.path('virtlogd.pid')):
            self.run(['virtlogd', '-d', '-p', self.path('virtlogd.pid')])
        _wait('virtlogd of %s' % self.name, lambda: _pid_from(self.path('virtlogd.pid')), 30)
        with open(self.path('libvirtd.log'), 'ab') as log:
            # under tini as child subreaper, as on the machine (scripts/setup-host.sh): an exited QEMU is reaped at once
            subprocess.Popen(self.nsenter_argv() + ['tini', '-s', '--', 'libvirtd', '--listen', '-p', self.path('libvirtd.pid')],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        _wait('libvirtd of %s answering on %s' % (self.name, self.libvirt_socket),
              lambda: self.virsh('version', check=False).returncode == 0, 120, every=0.3)

    def stop_libvirtd(self):
        """A fault: this host's libvirtd goes down (its domains run on)."""
        pid = _pid_from(self.path('libvirtd.pid'))
        if pid:
            _kill_pids([pid], grace=15)
        _wait('libvirtd of %s gone' % self.name, lambda: not _pid_from(self.path('libvirtd.pid'))
              or not _alive(_pid_from(self.path('libvirtd.pid'))), 20)

    def _sshd_config(self):
        os.makedirs(self.path('ssh'))
        key = self.path('ssh', 'ssh_host_ed25519_key')
        _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', self.name, '-f', key])
        with open(self.path('ssh', 'sshd_config'), 'w') as f:
            f.write('\n'.join([
                'ListenAddress %s' % self.address,
                'Port 22',
                'HostKey %s' % key,
                'PidFile %s' % self.path('sshd.pid'),
                'AuthorizedKeysFile .ssh/authorized_keys',
                'PubkeyAuthentication yes',
                'PasswordAuthentication no',
                'KbdInteractiveAuthentication no',
                'PermitRootLogin no',
                # the narrow-sudo user of rig/sudoers.py too, when a test makes it
                'AllowUsers %s %s' % (USER, sudoers.USER),
                'UsePAM no',
                'MaxStartups 100',
                'MaxSessions 100',
                'Subsystem sftp internal-sftp',
                'LogLevel VERBOSE',
            ]) + '\n')

    def start_sshd(self):
        self.fleet.mountpoint('/run/sshd')  # its privilege separation directory
        self.run(['/usr/sbin/sshd', '-f', self.path('ssh', 'sshd_config'), '-E', self.path('sshd.log')])
        _wait('sshd of %s' % self.name, lambda: _pid_from(self.path('sshd.pid')), 30)

    def stop_sshd(self):
        """A fault: this host becomes unreachable (its sshd stopped)."""
        pid = _pid_from(self.path('sshd.pid'))
        if pid:
            _kill_pids([pid])

    @property
    def known_hosts_line(self):
        with open(self.path('ssh', 'ssh_host_ed25519_key.pub')) as f:
            kind, key = f.read().split()[:2]
        return '%s %s %s\n' % (self.address, kind, key)

    # --- VMs ------------------------------------------------------------------
    def add_vm(self, backend, name, memory_mib, accel, detach, disks=None, cmdline_extra=''):
        workdir = self.path('vms', name)
        kw = dict(memory_mib=memory_mib, accel=accel, disks=disks, cmdline_extra=cmdline_extra)
        if backend == 'libvirt':
            vm = LibvirtGuest(workdir, name, uri=self.uri, **kw)
        else:
            vm = HostQemuGuest(self, workdir, name, detach=detach, **kw)
        os.chmod(self.path('vms'), 0o755)
        self.vms.append(vm)
        vm.start()
        return vm

    @property
    def qmp_sockets(self):
        return [vm.qmp_socket for vm in self.vms if isinstance(vm, QemuGuest)] + self.dead_sockets

    def add_dead_socket(self, name):
        """A fault: the socket a raw QEMU left behind when it died (a path no QEMU answers on)."""
        path = self.path('vms', name, name + '.qmp')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
        self.dead_sockets.append(path)
        return path

    def clear(self):
        """Back to a host with no VM and its daemons up, as the next test file expects it: every
        libvirt domain destroyed and undefined, every storage pool and raw QEMU gone (the rig's
        own and whatever the tests' runs started or moved here), dead sockets forgotten, and the
        per-host state (/var/lib/vmfleet, libvirt's images, the VMs' directories) emptied."""
        if self.virsh('version', check=False).returncode:
            self.start_libvirtd()
        if not _pid_from(self.path('sshd.pid')):
            self.start_sshd()
        for name in self.virsh('list', '--all', '--name').stdout.split():
            self.virsh('destroy', name, check=False)
            if self.virsh('undefine', name, '--snapshots-metadata', '--nvram', check=False).returncode:
                self.virsh('undefine', name, check=False)
        for pool in self.virsh('pool-list', '--all', '--name').stdout.split():
            self.virsh('pool-destroy', pool, check=False)
            self.virsh('pool-undefine', pool, check=False)
        qemus = []
        for pid in _netns_pids(self.ns):
            try:
                with open('/proc/%d/cmdline' % pid, 'rb') as f:
                    if b'qemu-system' in f.read().split(b'\0')[0]:
                        qemus.append(pid)
            except OSError:
                pass
        _kill_pids(qemus)
        # the rig's own records last: its QEMUs are gone by now (no clean quit to wait for, these
        # are test guests), what is left is reaping them and forgetting them
        for vm in reversed(self.vms):
            try:
                vm.stop()
            except Exception as e:  # keep clearing
                print('rig: stopping %s: %s' % (vm.name, e), file=sys.stderr)
        self.vms = []
        self.dead_sockets = []
        for sub in ('vmfleet', os.path.join('lib', 'images'), 'vms', 'pki'):
            d = self.path(sub)
            for name in (os.listdir(d) if os.path.isdir(d) else ()):
                p = os.path.join(d, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.unlink(p)
        leftovers = self.virsh('list', '--all', '--name').stdout.split()
        if leftovers:
            raise RuntimeError('%s: domains left after clearing: %s' % (self.name, leftovers))

    @property
    def domains(self):
        return [vm.name for vm in self.vms if isinstance(vm, LibvirtGuest)]

    def state(self):
        return dict(name=self.name, ns=self.ns, address=self.address, dir=self.dir, uri=self.uri,
                    python=self.python, domains=self.domains, qmp_sockets=self.qmp_sockets,
                    vms=[dict(name=vm.name, backend='libvirt' if isinstance(vm, LibvirtGuest) else 'qemu',
                              serial_log=vm.serial_log,
                              disks=dict((n, list(v)) for n, v in vm.disks.items()))
                         for vm in self.vms])


class Fleet:
    """``hosts`` simulated hypervisors with ``vms_per_host`` VMs each (libvirt and raw
    QEMU alternating, libvirt first), plus ``bare_hosts`` hosts without VMs whose
    ``ansible_python_interpreter`` is a plain venv (no libvirt-python, no qemu.qmp)."""

    def __init__(self, hosts=4, vms_per_host=2, memory_mib=256, prefix=PREFIX, bare_hosts=0,
                 detach=False, lock_timeout=900, subnet=SUBNET):
        if not re.match(r'^[a-z]{1,8}$', prefix):
            raise ValueError('prefix: 1-8 lowercase letters (it names interfaces)')
        if not re.match(r'^\d{1,3}\.\d{1,3}$', subnet):
            raise ValueError('subnet: the first two octets, such as 10.213')
        self.subnet = subnet
        if not 1 <= hosts + bare_hosts <= 250:
            raise ValueError('1-250 hosts')
        self.prefix = prefix
        self.count = hosts
        self.bare_count = bare_hosts
        self.vms_per_host = vms_per_host
        self.memory_mib = memory_mib
        self.detach = detach  # raw QEMUs outlive this process (a CLI rig)
        self.lock_timeout = lock_timeout
        self.root = '/var/tmp/vmfleet-rig-%s' % prefix
        self.lock_path = '/run/vmfleet-rig-%s.lock' % prefix
        self.hosts = []
        self.bare_hosts = []
        self._lock = None
        # directories of the machine that the rig had to create, for the sweep (even after a killed run)
        self.made_path = '/run/vmfleet-rig-%s.made' % prefix

    def mountpoint(self, path):
        """Make sure ``path`` exists on the machine (a mount point); if the rig makes it, the sweep removes it."""
        if not os.path.isdir(path):
            with open(self.made_path, 'a') as f:
                f.write(path + '\n')
            os.makedirs(path, mode=0o755)

    # --- controller-side files ------------------------------------------------
    @property
    def key(self):
        return os.path.join(self.root, 'id_ed25519')

    @property
    def known_hosts(self):
        return os.path.join(self.root, 'known_hosts')

    @property
    def bare_venv(self):
        return os.path.join(self.root, 'bare-venv')

    @property
    def bare_python(self):
        return os.path.join(self.bare_venv, 'bin', 'python')

    @property
    def inventory(self):
        return os.path.join(self.root, 'inventory.yml')

    @property
    def all_hosts(self):
        return self.hosts + self.bare_hosts

    def host(self, name):
        return next(h for h in self.all_hosts if h.name == name)

    # --- up / down --------------------------------------------------------------
    def up(self):
        self._take_lock()
        try:
            self.sweep()
            os.makedirs(self.root)
            os.chmod(self.root, 0o755)
            self._user()
            self._forwarding()
            for i in range(1, self.count + self.bare_count + 1):
                h = Host(self, i)
                (self.hosts if i <= self.count else self.bare_hosts).append(h)
                h.create()
            for h in self.all_hosts:
                h.write_root_ssh(self.all_hosts)
            if self.bare_hosts:
                # "not prepared": a python with what Ansible needs (the standard library), pip, and nothing else
                _run(['python3', '-m', 'venv', self.bare_venv])
                for h in self.bare_hosts:
                    h.python = self.bare_python
            self._boot_vms()
            self.write_inventory()
            self._wait_ssh()
            with open(os.path.join(self.root, 'fleet.json'), 'w') as f:
                json.dump([h.state() for h in self.all_hosts], f, indent=1)
        except BaseException:
            self.down()
            raise
        return self

    def _boot_vms(self):
        self.boot_vms(self.hosts, self.vms_per_host)

    def boot_vms(self, hosts, per_host, wait=True):
        """``per_host`` VMs on each of ``hosts`` (libvirt and raw QEMU alternating, libvirt first:
        ``<ns>-lv1``, ``<ns>-raw2``, ...), all booting at once; back once every guest counts
        (``wait``), or at once: add more, then wait_booted for all of them together."""
        if not per_host:
            return
        accel = detect_accel()
        for h in hosts:
            for j in range(1, per_host + 1):
                backend = 'libvirt' if j % 2 else 'qemu'
                h.add_vm(backend, '%s-%s%d' % (h.ns, 'lv' if backend == 'libvirt' else 'raw', j),
                         self.memory_mib, accel, self.detach)
        if wait:
            self.wait_booted(hosts)

    def wait_booted(self, hosts=None):
        """Back once every guest of ``hosts`` (all hosts) counts."""
        # eight TCG guests boot together on two busy cores: be generous
        for h in (self.hosts if hosts is None else hosts):
            for vm in h.vms:
                vm.wait_booted(300)

    def reset_bare_venv(self):
        """The bare hosts' python as up() made it: a plain venv (a test may have prepared it)."""
        if self.bare_hosts:
            shutil.rmtree(self.bare_venv, ignore_errors=True)
            _run(['python3', '-m', 'venv', self.bare_venv])

    def _wait_ssh(self):
        for h in self.all_hosts:
            _wait('ssh to %s (%s)' % (h.name, h.address),
                  lambda: _run(self.ssh_argv(h, 'sudo', '-n', 'true'), check=False, timeout=60).returncode == 0,
                  60, every=0.5)

    def ssh_argv(self, host, *command):
        return ['ssh', '-i', self.key, '-o', 'UserKnownHostsFile=' + self.known_hosts,
                '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10',
                '%s@%s' % (USER, host.address)] + list(command)

    def down(self):
        """Remove everything of the rig; safe to call twice, and after a failed up()."""
        try:
            # raw QEMUs: a clean quit, and their Popen reaped
            for h in self.all_hosts:
                for vm in h.vms:
                    if isinstance(vm, QemuGuest):
                        try:
                            vm.stop()
                        except Exception as e:  # the namespace sweep below kills it anyway
                            print('rig: stopping %s: %s' % (vm.name, e), file=sys.stderr)
            self.sweep()
            self.hosts, self.bare_hosts = [], []
        finally:
            self._release_lock()

    def sweep(self):
        """Remove what any run of this prefix left: processes of the hosts' namespaces,
        the namespaces, veths, SSH control masters, sudoers entry, user, directory."""
        names = re.compile(r'^%s\d+$' % re.escape(self.prefix))
        spaces = [ns for ns in (line.split()[0] for line in _run(['ip', 'netns', 'list']).stdout.splitlines()
                                if line.strip()) if names.match(ns)]
        pids = set()
        for ns in spaces:
            pids.update(_netns_pids(ns))
        pids.update(self._pids_using_root())
        pids.discard(os.getpid())
        _kill_pids(pids)
        for ns in spaces:
            _run(['ip', 'netns', 'del', ns], check=False)
        for line in _run(['ip', '-o', 'link', 'show']).stdout.splitlines():
            m = re.match(r'^\d+:\s+([^:@]+)', line)
            if m and names.match(m.group(1)):
                _run(['ip', 'link', 'del', m.group(1)], check=False)
        if self._other_rigs_up():
            self._drop_own_key()  # the user, sudoers entry and forwarding serve the other rigs still
        else:
            if os.path.exists(SUDOERS):
                os.unlink(SUDOERS)
            sudoers.remove()  # what a killed test left
            try:
                if pwd.getpwnam(USER).pw_gecos == GECOS:
                    _run(['userdel', '-r', '-f', USER], check=False)
            except KeyError:
                pass
            try:
                with open(FORWARD_MARK) as f:
                    before = f.read().strip()
                with open('/proc/sys/net/ipv4/ip_forward', 'w') as f:
                    f.write(before + '\n')
                os.unlink(FORWARD_MARK)
            except (OSError, ValueError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            with open(self.made_path) as f:
                made = f.read().split()
        except FileNotFoundError:
            made = []
        others = self._other_rigs_up()
        for d in reversed(made):
            if others:
                # a mount point the other rigs' hosts may use still: the last rig down removes it
                for other in others:
                    with open('/run/vmfleet-rig-%s.made' % other, 'a') as f:
                        f.write(d + '\n')
                continue
            try:
                os.rmdir(d)  # only if empty: something else may have put files there since
            except OSError:
                pass
        if os.path.exists(self.made_path):
            os.unlink(self.made_path)

    def _pids_using_root(self):
        """Processes (outside the namespaces) whose command line names the rig's
        directory: SSH control masters, raw QEMUs of a detached rig."""
        needle = self.root.encode() + b'/'
        out = []
        for d in os.listdir('/proc'):
            if not d.isdigit():
                continue
            try:
                with open('/proc/%s/cmdline' % d, 'rb') as f:
                    if needle in f.read():
                        out.append(int(d))
            except OSError:
                pass
        return out

    def _other_rigs_up(self):
        """Whether a rig of another prefix is up (holds its lock): the login user, sudoers entry
        and IPv4 forwarding are shared by all rigs, the last one down removes them. Their prefixes."""
        up = []
        for name in os.listdir('/run'):
            m = re.match(r'^vmfleet-rig-([a-z]+)\.lock$', name)
            if not m or m.group(1) == self.prefix:
                continue
            try:
                fd = os.open(os.path.join('/run', name), os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                up.append(m.group(1))
            finally:
                os.close(fd)
        return up

    def _forwarding(self):
        """IPv4 forwarding on in the root namespace: the hosts reach each other through it."""
        with open('/proc/sys/net/ipv4/ip_forward') as f:
            before = f.read().strip()
        if before != '1':
            if not os.path.exists(FORWARD_MARK):
                with open(FORWARD_MARK, 'w') as f:
                    f.write(before + '\n')
            with open('/proc/sys/net/ipv4/ip_forward', 'w') as f:
                f.write('1\n')

    def _drop_own_key(self):
        try:
            keys = os.path.join(pwd.getpwnam(USER).pw_dir, '.ssh', 'authorized_keys')
            with open(keys) as f:
                lines = f.readlines()
        except (KeyError, OSError):
            return
        with open(keys, 'w') as f:
            f.writelines(line for line in lines if not line.rstrip().endswith(' ' + self._key_comment))

    @property
    def _key_comment(self):
        return 'vmfleet-rig-controller-%s' % self.prefix

    def _take_lock(self):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        end = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    os.close(fd)
                    raise TimeoutError('another fleet rig of prefix %r is up (lock %s held)'
                                       % (self.prefix, self.lock_path))
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.write(fd, b'%d\n' % os.getpid())
        self._lock = fd

    def _release_lock(self):
        if self._lock is not None:
            try:
                os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._lock)
            self._lock = None

    def _user(self):
        try:
            u = pwd.getpwnam(USER)
            if u.pw_gecos != GECOS:
                raise RuntimeError('user %s exists and is not the rig\'s own (GECOS %r)' % (USER, u.pw_gecos))
        except KeyError:
            # '*': no password, yet not locked (sshd refuses locked accounts)
            _run(['useradd', '--create-home', '--shell', '/bin/sh', '--comment', GECOS, '--password', '*', USER])
        u = pwd.getpwnam(USER)
        with open(SUDOERS + '.tmp', 'w') as f:
            f.write('%s ALL=(ALL) NOPASSWD: ALL\n' % USER)
        os.chmod(SUDOERS + '.tmp', 0o440)
        _run(['visudo', '-c', '-q', '-f', SUDOERS + '.tmp'])
        os.replace(SUDOERS + '.tmp', SUDOERS)
        _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', self._key_comment, '-f', self.key])
        ssh_dir = os.path.join(u.pw_dir, '.ssh')
        os.makedirs(ssh_dir, exist_ok=True)
        self._drop_own_key()
        # appended: another rig (another prefix) may be up with its own key
        with open(self.key + '.pub') as f, open(os.path.join(ssh_dir, 'authorized_keys'), 'a') as out:
            out.write(f.read())
        for p in (ssh_dir, os.path.join(ssh_dir, 'authorized_keys')):
            os.chown(p, u.pw_uid, u.pw_gid)
        os.chmod(ssh_dir, 0o700)
        os.chmod(os.path.join(ssh_dir, 'authorized_keys'), 0o600)

    # --- inventory ------------------------------------------------------------
    def write_inventory(self, path=None, host_vars=None, hosts=None):
        """An inventory like a user's: group ``hypervisors``; host vars are the address,
        the raw QEMU sockets (which no registry lists) and the interpreter where it
        differs. ``host_vars``: {host name: {var: value}} added on top."""
        with open(self.known_hosts, 'w') as f:
            f.writelines(h.known_hosts_line for h in self.all_hosts)
        host_vars = host_vars or {}
        entries = {}
        for h in (hosts if hosts is not None else self.all_hosts):
            v = dict(ansible_host=h.address)
            if h.qmp_sockets:
                v['vmfleet_qmp_sockets'] = h.qmp_sockets
            if h.python != VENV_PYTHON:
                v['ansible_python_interpreter'] = h.python
            v.update(host_vars.get(h.name, {}))
            entries[h.name] = v
        group_vars = dict(('%s_qmp_sockets' % role, '{{ vmfleet_qmp_sockets | default([]) }}') for role in ROLES)
        inv = {'hypervisors': {
            'hosts': entries,
            'vars': dict(group_vars, **{
                'ansible_connection': 'ssh',
                'ansible_user': USER,
                'ansible_become': True,
                'ansible_ssh_private_key_file': self.key,
                'ansible_ssh_common_args': '-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes' % self.known_hosts,
                'ansible_control_path_dir': os.path.join(self.root, 'cp'),
                # interpreter discovery picks a broken shim on these machines; the hosts share this filesystem
                'ansible_python_interpreter': VENV_PYTHON,
            })}}
        path = path or self.inventory
        import yaml
        with open(path, 'w') as f:
            yaml.safe_dump(inv, f, default_flow_style=False, sort_keys=False)
        return path

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()


class FleetView:
    """One test file's share of a fleet that is up for the whole session: the first ``hosts``
    hosts (hv1, hv2, ...), the bare ones if ``bare``, and an inventory of its own (only those
    hosts, with ``host_vars``). Everything else is the fleet's. Used as a context manager: on
    the way out every host it used is cleared (Host.clear) and the bare venv made plain again,
    so that the next file finds the hosts as this one did."""

    def __init__(self, fleet, name, hosts, bare=False, host_vars=None):
        if hosts > len(fleet.hosts) or (bare and not fleet.bare_hosts):
            raise ValueError('the session fleet has %d hosts and %d bare ones' % (len(fleet.hosts), len(fleet.bare_hosts)))
        self.fleet = fleet
        self.hosts = fleet.hosts[:hosts]
        self.bare_hosts = list(fleet.bare_hosts) if bare else []
        self.inventory = os.path.join(fleet.root, 'inventory-%s.yml' % name)
        self.host_vars = host_vars or {}

    @property
    def all_hosts(self):
        return self.hosts + self.bare_hosts

    def write_inventory(self):
        return self.fleet.write_inventory(self.inventory, self.host_vars, self.all_hosts)

    def play(self, host, tasks, check=False):
        """Run ``tasks`` on ``host`` (a Host or its name): what each registered, and the run's output."""
        results, proc = run_tasks(tasks, check=check, inventory=self.inventory, hosts=getattr(host, 'name', host),
                                  extra_args=['-v'])
        return results, proc.stdout + proc.stderr

    def __getattr__(self, name):
        return getattr(self.fleet, name)

    def __enter__(self):
        for h in self.hosts:
            if h.vms or h.dead_sockets:
                raise RuntimeError('%s is not empty: %s' % (h.name, [vm.name for vm in h.vms] + h.dead_sockets))
        self.write_inventory()
        return self

    def __exit__(self, *exc):
        errors = []
        for h in self.all_hosts:
            try:
                h.clear()
            except Exception as e:  # clear the others still
                errors.append('%s: %s' % (h.name, e))
        if self.bare_hosts:
            self.fleet.reset_bare_venv()
        if os.path.exists(self.inventory):
            os.unlink(self.inventory)
        if errors:
            raise RuntimeError('clearing the hosts: ' + '; '.join(errors))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('action', choices=['up', 'down'])
    ap.add_argument('--hosts', type=int, default=4)
    ap.add_argument('--bare-hosts', type=int, default=0)
    ap.add_argument('--vms', type=int, default=2)
    ap.add_argument('--memory', type=int, default=256)
    ap.add_argument('--prefix', default=PREFIX)
    ap.add_argument('--subnet', default=SUBNET)
    args = ap.parse_args(argv)
    fleet = Fleet(args.hosts, args.vms, args.memory, args.prefix, args.bare_hosts, detach=True, subnet=args.subnet)
    if args.action == 'up':
        fleet.up()
        fleet._release_lock()  # a CLI rig stays up after this process; `down` sweeps it
        print(fleet.inventory)
    else:
        fleet._take_lock()
        fleet.down()


if __name__ == '__main__':
    main()
