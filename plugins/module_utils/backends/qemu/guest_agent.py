# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client of the QEMU guest agent (qemu-ga) on the host side of its chardev
socket, for a raw QEMU VM (libvirt talks to its own agent channel itself).

The agent's protocol is not QMP: no greeting, no capabilities negotiation, and
the socket may hold the half-read answer of a client that went away. So each
exchange starts with guest-sync-delimited: a 0xFF byte resets the agent's
parser, the agent answers with 0xFF before its reply, and everything before
that byte is stale. One connection per command: QEMU's chardev serves one
client at a time, and the watchdog that guarantees the thaw must get in."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import random
import socket
import time

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.process import keyvals
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import (
    CapabilityMissing, OperationTimeout, VmfleetError,
)

AGENT = 'the QEMU guest agent (qemu-ga)'
PORT_NAME = 'org.qemu.guest_agent.0'
# how to give a raw QEMU VM an agent: the host side of the channel, and the guest's package
HOW_TO_ADD = ("start QEMU with '-chardev socket,id=qga0,path=PATH,server=on,wait=off -device virtio-serial "
              "-device virtserialport,chardev=qga0,name=%s', run qemu-guest-agent in the guest, and give PATH "
              "as guest_agent_socket if it is not found on the QEMU command line" % PORT_NAME)


class AgentError(VmfleetError):
    """The agent answered with an error (``error_class`` is its class string)."""

    def __init__(self, command, error_class, desc):
        super(AgentError, self).__init__("%s refused '%s': %s" % (AGENT, command, desc))
        self.command = command
        self.error_class = error_class


class GuestAgent(object):
    def __init__(self, socket_path):
        self.socket_path = socket_path

    def _connect(self, timeout):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.socket_path)
        except (OSError, socket.error) as e:
            s.close()
            raise CapabilityMissing("cannot reach %s on %s: %s" % (AGENT, self.socket_path, e), hint=HOW_TO_ADD)
        return s

    @staticmethod
    def _read_until(s, buf, byte, end, what):
        while byte not in buf:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                chunk = None
            if not chunk:
                raise OperationTimeout("%s did not answer '%s'%s" % (
                    AGENT, what, '' if chunk is None else ' (it closed the connection)'),
                    hint="check that qemu-guest-agent runs in the guest")
            buf += chunk
        return buf

    def execute(self, command, timeout, **args):
        """Run ``command``; its return value, AgentError, or OperationTimeout within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        s = self._connect(timeout)
        try:
            sync_id = random.randint(1, 2 ** 31 - 1)
            s.sendall(b'\xff' + json.dumps({'execute': 'guest-sync-delimited',
                                            'arguments': {'id': sync_id}}).encode() + b'\n')
            buf = b''
            while True:
                # a stale answer of an earlier client may come first: the 0xFF our sync put before its reply
                buf = self._read_until(s, buf, b'\xff', end, 'guest-sync-delimited')
                buf = buf.split(b'\xff', 1)[1]
                buf = self._read_until(s, buf, b'\n', end, 'guest-sync-delimited')
                line, buf = buf.split(b'\n', 1)
                try:
                    if json.loads(line.decode('utf-8', 'replace')).get('return') == sync_id:
                        break
                except ValueError:
                    pass
            msg = {'execute': command}
            if args:
                msg['arguments'] = args
            s.sendall(json.dumps(msg).encode() + b'\n')
            while True:
                buf = self._read_until(s, buf, b'\n', end, command)
                line, buf = buf.split(b'\n', 1)
                line = line.strip().lstrip(b'\xff')
                if not line:
                    continue
                reply = json.loads(line.decode('utf-8', 'replace'))
                if 'error' in reply:
                    err = reply['error']
                    raise AgentError(command, err.get('class'), err.get('desc'))
                if 'return' in reply:
                    return reply['return']
        finally:
            s.close()

    def check(self, timeout):
        """Before anything changes: the agent answers and can freeze filesystems."""
        info = self.execute('guest-info', timeout)
        enabled = dict((c.get('name'), c.get('enabled', True)) for c in info.get('supported_commands', []))
        for c in ('guest-fsfreeze-freeze', 'guest-fsfreeze-thaw'):
            if not enabled.get(c):
                raise CapabilityMissing(
                    "%s %s in the guest does not offer '%s'" % (AGENT, info.get('version', '?'), c),
                    hint="run a qemu-guest-agent that does not block it (its --block-rpcs or config)")
        return info

    def freeze(self, timeout):
        return self.execute('guest-fsfreeze-freeze', timeout)

    def thaw(self, timeout):
        return self.execute('guest-fsfreeze-thaw', timeout)

    def status(self, timeout):
        return self.execute('guest-fsfreeze-status', timeout)


def socket_from_argv(argv):
    """The path of the unix socket chardev that backs the virtserialport named
    org.qemu.guest_agent.0 on a QEMU command line, or None."""
    chardevs, wanted = {}, None
    for i, a in enumerate(argv[:-1]):
        if a in ('-chardev', '--chardev'):
            opt = argv[i + 1]
            backend, _sep, rest = opt.partition(',')
            kv = keyvals(opt) if opt.startswith('{') else keyvals(rest)
            if (kv.get('backend') or backend) == 'socket' and kv.get('id') and kv.get('path'):
                chardevs[kv['id']] = kv['path']
        elif a in ('-device', '--device'):
            kv = keyvals(argv[i + 1])
            driver = kv.get('driver') or argv[i + 1].split(',', 1)[0]
            if driver == 'virtserialport' and kv.get('name') == PORT_NAME and kv.get('chardev'):
                wanted = kv['chardev']
    path = chardevs.get(wanted) if wanted else None
    return path if path and os.path.exists(path) else None
