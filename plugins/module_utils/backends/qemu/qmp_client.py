# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A blocking face on qemu.qmp's QMPClient.

qemu.qmp's legacy blocking class cannot time out a connect, and a QMP socket
that another client holds accepts the connection but never greets: without a
deadline the module would hang. So we drive the asyncio client ourselves."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import asyncio
import logging
import traceback

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    ConnectionFailed, QmpCommandError, VmGone, OperationTimeout,
)

try:
    from qemu.qmp import QMPClient, EventListener, ExecuteError, ConnectError
    HAS_QMP = True
    # A reply that arrives after we gave up waiting is dropped with a warning;
    # the module's stdout must stay pure JSON, so qemu.qmp logs nowhere.
    logging.getLogger('qemu.qmp').addHandler(logging.NullHandler())
    logging.getLogger('qemu.qmp').propagate = False
    QMP_IMPORT_ERROR = None
except ImportError:
    HAS_QMP = False
    QMP_IMPORT_ERROR = traceback.format_exc()


class QmpClient(object):
    """One QMP session. ``execute`` raises QmpCommandError with QEMU's words."""

    def __init__(self, name="vmfleet"):
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)
        self._events = EventListener()
        self._client.register_listener(self._events)
        self.address = None

    def _run(self, coro, timeout):
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def connect(self, path, timeout):
        self.address = path
        try:
            self._run(self._client.connect(path), timeout)
        except asyncio.TimeoutError:
            self.close()
            raise ConnectionFailed(
                "QMP socket %s accepted the connection but QEMU did not greet within %.0fs" % (path, timeout),
                hint="QEMU serves one QMP client at a time: another client (a second vmfleet task, "
                     "a qmp-shell) probably holds it; stop it or wait, then re-run")
        except (ConnectError, OSError) as e:
            self.close()
            cause = getattr(e, 'exc', None) or e
            raise ConnectionFailed(
                "cannot connect to QMP socket %s: %s" % (path, cause),
                hint="check that the QEMU process is running and was started with "
                     "'-qmp unix:%s,server=on,wait=off'" % path)
        return self

    def listen(self, path, timeout):
        """Serve ``path`` for a QEMU started with ``-qmp unix:path`` (client mode)."""
        self.address = path
        self._run(self._client.start_server(path), timeout)
        return self

    def accept(self, timeout):
        try:
            self._run(self._client.accept(), timeout)
        except asyncio.TimeoutError:
            raise ConnectionFailed("QEMU did not connect to %s within %.0fs" % (self.address, timeout))
        return self

    def execute(self, command, args=None, timeout=60.0):
        try:
            return self._run(self._client.execute(command, args or None), timeout)
        except ExecuteError as e:
            raise QmpCommandError(command, e.error.error.class_, e.error.error.desc)
        except asyncio.TimeoutError:
            raise OperationTimeout("QMP command '%s' on %s got no answer within %.0fs"
                                   % (command, self.address, timeout))
        except (EOFError, ConnectionError, OSError) as e:
            raise VmGone("QEMU at %s went away during '%s' (%s)" % (self.address, command, e or type(e).__name__),
                         hint="the QEMU process exited or closed its monitor; check its log")
        except Exception as e:  # qemu.qmp raises StateError etc. once disconnected
            if type(e).__name__ in ('StateError', 'ExecInterruptedError', 'DisconnectedError'):
                raise VmGone("QEMU at %s went away during '%s'" % (self.address, command),
                             hint="the QEMU process exited or closed its monitor; check its log")
            raise

    def wait_event(self, timeout):
        """The next event, or None after ``timeout`` seconds."""
        try:
            return dict(self._run(self._events.get(), timeout))
        except asyncio.TimeoutError:
            return None

    def drain_events(self):
        return [dict(e) for e in self._events.clear()]

    def close(self):
        try:
            self._run(self._client.disconnect(), 5)
        except Exception:  # a QEMU that already quit leaves nothing to close
            pass
        self._loop.close()
