import multiprocessing
import os
import signal
import threading
import time

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.common import vm_lock
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmBusy

VM = dict(qmp_socket='/run/vm/db1.qmp')


def _hold(lock_dir, ready, release):
    """Hold the VM's lock from ``ready`` until ``release`` (at most a minute)."""
    vm_lock.LOCK_DIR = lock_dir
    with vm_lock.vm_locked(VM, 'fleet_snapshot present', 10, 'db1'):
        ready.set()
        release.wait(60)


@pytest.fixture
def holder(tmp_path, monkeypatch):
    monkeypatch.setattr(vm_lock, 'LOCK_DIR', str(tmp_path / 'locks'))
    ctx = multiprocessing.get_context('fork')
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path / 'locks'), ready, ctx.Event()))
    proc.start()
    assert ready.wait(10)
    yield proc
    if proc.is_alive():
        proc.kill()
    proc.join()


def test_a_second_run_waits_its_timeout_then_fails_naming_the_holder(holder):
    t0 = time.monotonic()
    with pytest.raises(VmBusy) as e:
        with vm_lock.vm_locked(VM, 'vm_save', 0.6, 'db1'):
            pass
    assert time.monotonic() - t0 >= 0.6
    assert "VM 'db1' is being changed by pid %d" % holder.pid in e.value.message
    assert 'fleet_snapshot present' in e.value.message and 'longer timeout' in e.value.message


def test_the_lock_goes_with_its_holder_however_it_dies(holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with vm_lock.vm_locked(VM, 'vm_save', 5, 'db1'):
        pass


def test_a_waiter_gets_the_lock_when_the_holder_is_done(tmp_path, monkeypatch):
    monkeypatch.setattr(vm_lock, 'LOCK_DIR', str(tmp_path))
    ctx = multiprocessing.get_context('fork')
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    proc.start()
    assert ready.wait(10)
    threading.Timer(0.3, release.set).start()
    with vm_lock.vm_locked(VM, 'vm_save', 10, 'db1'):
        assert release.is_set()  # it got the lock only once the holder let go
    proc.join(5)
    assert proc.exitcode == 0


def test_reentrant_within_a_process_and_other_vms_are_free(tmp_path, monkeypatch):
    monkeypatch.setattr(vm_lock, 'LOCK_DIR', str(tmp_path))
    with vm_lock.vm_locked(VM, 'fleet', 1):
        with vm_lock.vm_locked(dict(qmp_socket='/run/vm/../vm/db1.qmp'), 'vm_save', 0.1):
            pass
        with vm_lock.vm_locked(dict(domain='db1', uri='qemu:///system'), 'vm_save', 0.1):
            pass
    assert oct(os.stat(os.path.join(str(tmp_path), os.listdir(str(tmp_path))[0])).st_mode & 0o777) == '0o600'
