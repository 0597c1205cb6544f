"""Talk QMP to a test VM's QEMU: one client per call, closed after it.
(QEMU serves one QMP client at a time: hold none longer than needed.)"""

import contextlib

from qemu.qmp.legacy import QEMUMonitorProtocol


@contextlib.contextmanager
def connect(socket_path, timeout=None):
    """A connected QEMUMonitorProtocol (``q.cmd(...)``), closed on leaving."""
    q = QEMUMonitorProtocol(socket_path)
    q.connect()
    try:
        if timeout is not None:
            q.settimeout(timeout)
        yield q
    finally:
        q.close()


def qmp(socket_path, command, **args):
    """Run one QMP command; its return value."""
    with connect(socket_path) as q:
        return q.cmd(command, **args)
