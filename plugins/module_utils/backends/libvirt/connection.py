# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connections to libvirt: this host's, another host's (within a deadline, with keepalive), and
libvirt's event loop; the libvirt backend's VM handle and migrator open theirs here."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import threading
import traceback

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing, ConnectionFailed, OperationTimeout, VmfleetError

try:
    import libvirt
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()


def _require_libvirt():
    if not HAS_LIBVIRT:
        from ansible.module_utils.basic import missing_required_lib
        raise CapabilityMissing(missing_required_lib('libvirt-python'), exception=LIBVIRT_IMPORT_ERROR)


def _silence_libvirt():
    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda *a: None, None)


def connect(uri):
    _require_libvirt()
    _silence_libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise ConnectionFailed(
            "cannot connect to libvirt at %s: %s" % (uri, e.get_error_message()),
            hint="check that libvirtd (or virtqemud) runs on this host and that the uri is right")


def open_remote(uri, deadline, what):
    """A connection to another host's libvirt, within the deadline (an SSH that hangs must not hang
    the task), with keepalive: a peer lost mid-run (link cut, host down) is noticed in ~20 s, and
    calls on it (and closing it) fail instead of waiting for TCP to give up (many minutes)."""
    _require_libvirt()
    _silence_libvirt()
    # keepalive needs libvirt's event loop registered before the connection opens (else it is refused,
    # silently here, and a lost peer hangs every call on it for as long as TCP takes)
    event_loop()
    box = {}

    def target():
        try:
            box['conn'] = libvirt.open(uri)
        except libvirt.libvirtError as e:
            box['error'] = e.get_error_message()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(max(1.0, min(60.0, deadline.remaining())))
    if 'conn' in box:
        try:
            box['conn'].setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass
        return box['conn']
    raise ConnectionFailed("%s %s is unreachable: %s" % (what, uri, box.get('error', 'no answer within %.0f s' % min(60.0, deadline.timeout))),
                           hint="check that its libvirtd runs and that this host reaches it (for qemu+ssh: "
                                "root's SSH key and known_hosts on the source host)")


_SHARED_LOCK = threading.Lock()
_SHARED = None  # {uri: [lock, connection or None, a prefetch's error]} while shared_remotes() is open


@contextlib.contextmanager
def shared_remotes():
    """Within it, remote_connection() hands every caller of one process the same connection per
    URI: a fleet run moving many domains to one host opens SSH and libvirt's handshake to it once,
    not once a domain (a few tenths of a second of the CPU each migration wants). All closed at the end."""
    global _SHARED
    with _SHARED_LOCK:
        outer = _SHARED is not None
        if not outer:
            _SHARED = {}
    try:
        yield
    finally:
        if not outer:
            with _SHARED_LOCK:
                shared, _SHARED = _SHARED, None
            for _lock, conn, _error in shared.values():
                if conn is not None:
                    close_quietly(conn)


def remote_connection(uri, deadline, what):
    """Another host's libvirt: open_remote's connection, or inside shared_remotes() the one this
    process has to ``uri`` while it is alive (a lost one is replaced). Give it back with release()."""
    with _SHARED_LOCK:
        if _SHARED is None:
            return open_remote(uri, deadline, what)
        slot = _SHARED.setdefault(uri, [threading.Lock(), None, None])
    with slot[0]:  # one opening per URI; other destinations open at the same time
        if slot[2] is not None:
            error, slot[2] = slot[2], None
            raise error  # the prefetch's own failure, not a second wait for the same answer
        return _live(slot, uri, deadline, what)


def _live(slot, uri, deadline, what):
    """Under the slot's lock: its connection while alive, else a new one put there."""
    conn = slot[1]
    if conn is not None:
        try:
            if conn.isAlive():
                return conn
        except libvirt.libvirtError:
            pass
        close_quietly(conn)
    slot[1] = None  # a lost one never stays, even when the new one cannot open
    slot[1] = open_remote(uri, deadline, what)
    return slot[1]


def prefetch(uri, deadline, what):
    """remote_connection() in a daemon thread, inside shared_remotes() only: its first taker
    waits for it (the URI's lock) instead of opening its own."""
    with _SHARED_LOCK:
        if _SHARED is None or not HAS_LIBVIRT:
            return
        slot = _SHARED.setdefault(uri, [threading.Lock(), None, None])
    started = threading.Event()

    def target():
        with slot[0]:
            started.set()
            try:
                _live(slot, uri, deadline, what)
            except VmfleetError as e:
                slot[2] = e  # for the first migration that needs it to report

    threading.Thread(target=target, name='connect %s' % uri, daemon=True).start()
    started.wait(5)  # holding the lock before anyone asks


def release(conn):
    """Close a connection remote_connection() gave, unless shared_remotes() holds it."""
    with _SHARED_LOCK:
        shared = _SHARED is not None and any(conn is slot[1] for slot in _SHARED.values())
    if not shared:
        close_quietly(conn)


def close_quietly(conn):
    """Close a connection; one whose peer is lost may block in its goodbye until keepalive gives
    up on it: the run ends anyway (at most 30 s more)."""
    def target():
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(30)


_EVENT_LOOP_LOCK = threading.Lock()
_EVENT_LOOP = []


def event_loop():
    """libvirt's default event loop in a daemon thread (for events such as job-completed);
    registered once per process (a fleet run migrates from several threads), before the
    connections that wait for events are opened."""
    with _EVENT_LOOP_LOCK:
        if _EVENT_LOOP:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run():
            while True:
                libvirt.virEventRunDefaultImpl()

        t = threading.Thread(target=run, name='libvirt-events', daemon=True)
        t.start()
        _EVENT_LOOP.append(t)


def find_domain(conn, name):
    """The domain ``name`` of ``conn``, or None when there is none."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def domain_running(dom):
    try:
        return dom is not None and dom.state()[0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                                                      libvirt.VIR_DOMAIN_BLOCKED)
    except libvirt.libvirtError:
        return False


def run_blocking(fn, deadline, what, on_timeout=None):
    """Run a blocking libvirt call in a thread so the deadline holds."""
    box = {}

    def target():
        try:
            box['result'] = fn()
        except Exception as e:  # handed to the caller's thread
            box['error'] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(deadline.remaining())
    if t.is_alive():
        if on_timeout:
            try:
                on_timeout()
            except Exception:
                pass
        t.join(60)
        raise OperationTimeout("%s did not finish within %gs%s" % (
            what, deadline.timeout, "; it was aborted" if on_timeout else "; libvirt is still working on it"))
    if 'error' in box:
        e = box['error']
        msg = e.get_error_message() if hasattr(e, 'get_error_message') else str(e)
        raise VmfleetError("%s failed: %s" % (what, msg))
    return box.get('result')


def domain_by_uuid(conn, uuid):
    """The domain of ``uuid`` on ``conn``, None when it has none."""
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError:
        return None
