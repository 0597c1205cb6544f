"""Talk QMP to a test VM's QEMU: one client per call, closed after it.
(QEMU serves one QMP client at a time: hold none longer than needed.)"""

import asyncio
import os
import contextlib

from qemu.qmp import QMPClient
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


def qmp(socket_path, command, _timeout=120, **args):
    """Run one QMP command; its return value. A QEMU that does not answer within ``_timeout``
    (its greeting included) fails the test instead of hanging it."""
    async def run():
        client = QMPClient('vmfleet-test')
        await client.connect(socket_path)
        try:
            return await client.execute(command, args or None)
        finally:
            await client.disconnect()
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(run(), _timeout))
    finally:
        loop.close()


def quit_any(sockets):
    """Ask the raw QEMU at each of ``sockets`` that exists to quit (a VM's, wherever it runs now);
    one where nothing answers is gone already."""
    for sock in sockets:
        if os.path.exists(sock):
            try:
                qmp(sock, 'quit')
            except Exception:  # nothing answers there
                pass
