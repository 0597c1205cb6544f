"""Real VMs for the system tests. Shared VMs serve the tests that do not
change them; a test that changes a VM boots its own. Every VM is torn down."""

import itertools
import os
import re
import shutil
import tempfile

import pytest

from rig.accel import detect_accel
from rig.hypervisors import Fleet
from rig.libvirt_guest import LibvirtGuest, virsh
from rig.qemu_guest import QemuGuest
from rig.targets import Target

PREFIX = 'vmfleet-test-'
# libvirt domain names are host-wide: two test sessions at once must not share one
SESSION = os.getpid() % 100000
# backend -> the VM class, and the tag of its default names
_KINDS = {'qemu': (QemuGuest, 'raw'), 'libvirt': (LibvirtGuest, 'lv')}


def _sweep_leftovers():
    """Domains a killed run left behind: ours by name, and their disks gone.
    A domain whose disks still exist belongs to a run still going on."""
    for name in virsh('list', '--all', '--name', check=False).stdout.split():
        if not name.startswith(PREFIX):
            continue
        # (a block disk's source is its loop device, attached while its run goes on)
        sources = re.findall(r"<source (?:file|dev)='([^']+)'", virsh('dumpxml', name, check=False).stdout)
        if sources and any(os.path.exists(src) for src in sources):
            continue
        virsh('destroy', name, check=False)
        virsh('undefine', name, '--snapshots-metadata', '--nvram', check=False)


def pytest_itemcollected(item):
    """``make test`` runs two pytest-xdist workers (--dist loadgroup): every test of the
    simulated fleet in one (the rig is host-wide: one fleet at a time, brought up once), the
    other files each whole in one worker (their module-scoped VMs booted once). Marked as each
    test is collected: xdist reads the marks in its own pytest_collection_modifyitems."""
    if item.get_closest_marker('xdist_group') is None:
        fleet = 'session_fleet' in getattr(item, 'fixturenames', ())
        item.add_marker(pytest.mark.xdist_group('fleet' if fleet else item.path.name))


@pytest.fixture(scope='session')
def accel():
    return detect_accel()


@pytest.fixture(scope='session')
def workroot():
    _sweep_leftovers()
    # libvirt's QEMU runs as another user: the tree must be traversable.
    root = tempfile.mkdtemp(prefix='vmfleet-tests-', dir='/var/tmp')
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _workdir(root, name):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    return d


class VmFactory:
    """Boots VMs on demand and tears all of them down at the end."""

    def __init__(self, root, accel):
        self.root = root
        self.accel = accel
        self.vms = []
        self.n = 0

    def boot(self, backend, **kw):
        """Boot a VM on ``backend`` ('qemu' or 'libvirt'; ``kw`` as for its class) and wait
        until its guest counts; a Target for it."""
        cls, tag = _KINDS[backend]
        self.n += 1
        name = kw.pop('name', '%s%s%d-%d' % (PREFIX, tag, SESSION, self.n))
        vm = cls(_workdir(self.root, name), name=name, accel=self.accel, **kw)
        self.vms.append(vm)
        vm.start()
        # the guest fills its RAM before it counts: ~20 MB/s under TCG, slower on a busy host
        m = re.search(r'vmfleet\.fill=(\d+)', kw.get('cmdline_extra', ''))
        vm.wait_booted(120 + (int(m.group(1)) if m else 0))
        return Target(vm, backend)

    def close(self):
        for vm in reversed(self.vms):
            try:
                vm.stop()
            except Exception as e:  # keep tearing the others down
                print('teardown of %s failed: %s' % (getattr(vm, 'name', vm), e))
        self.vms = []


_test_dirs = itertools.count(1)


def _factory(workroot, accel, prefix):
    # short paths: a QMP socket path must fit in 107 bytes
    return VmFactory(_workdir(workroot, '%s%d' % (prefix, next(_test_dirs))), accel)


@pytest.fixture(scope='session')
def session_vms(workroot, accel):
    f = _factory(workroot, accel, 's')
    yield f
    f.close()


@pytest.fixture
def vms(workroot, accel):
    """VMs a single test may change; gone when the test ends."""
    f = _factory(workroot, accel, 't')
    yield f
    f.close()


@pytest.fixture(scope='module')
def module_vms(workroot, accel):
    """VMs for one test module (big or busy guests that later modules should not pay for)."""
    f = _factory(workroot, accel, 'm')
    yield f
    f.close()


@pytest.fixture(scope='session')
def shared_qemu(session_vms):
    """A raw QEMU VM that no test changes (a Target)."""
    return session_vms.boot('qemu', name='%sshared-raw-%d' % (PREFIX, SESSION))


@pytest.fixture(scope='session')
def shared_libvirt(session_vms):
    """A libvirt domain that no test changes (a Target)."""
    return session_vms.boot('libvirt', name='%sshared-lv-%d' % (PREFIX, SESSION))


# The simulated hypervisors (rig/hypervisors.py) of every multi-host test file, brought up once:
# test_fleet_ssh.py uses hv1-hv4 and the bare hv5, test_host_evacuate.py hv1-hv3,
# test_vm_migrate.py hv1-hv2. No VM runs on them between files: each file's ``fleet`` fixture
# boots its own through a FleetView of it (rig/hypervisors.py), which leaves the hosts empty again.
FLEET_HOSTS = 4
FLEET_BARE_HOSTS = 1


@pytest.fixture(scope='session')
def session_fleet():
    """4 hypervisors and one bare host ("not prepared": its python lacks libvirt-python and
    qemu.qmp), no VM on any; down at the end of the session."""
    f = Fleet(hosts=FLEET_HOSTS, vms_per_host=0, memory_mib=256, bare_hosts=FLEET_BARE_HOSTS)
    f.up()
    try:
        yield f
    finally:
        f.down()
