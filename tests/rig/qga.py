"""The test side of the QEMU guest agent: one command to the agent of a test VM, and a
stand-in agent for the failure paths (a socket that speaks the agent's protocol)."""

import json
import os
import socket
import threading
import time

from .libvirt_guest import virsh


def agent_command(vm, command, timeout=10):
    """``command``'s return value from the guest agent of ``vm`` (a QemuGuest's chardev
    socket, or a LibvirtGuest through libvirt), or raise."""
    if hasattr(vm, 'agent_socket'):
        return _socket_command(vm.agent_socket, command, timeout)
    r = virsh('qemu-agent-command', vm.name, '--timeout', str(timeout), json.dumps({'execute': command}),
              uri=vm.uri, check=False)
    if r.returncode:
        raise RuntimeError(r.stderr.strip())
    return json.loads(r.stdout)['return']


def _socket_command(path, command, timeout):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(b'\xff' + json.dumps({'execute': 'guest-sync-delimited', 'arguments': {'id': 77}}).encode() + b'\n')
        buf = b''
        while b'\xff' not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError('the agent closed the connection')
            buf += chunk
        buf = buf.split(b'\xff', 1)[1]
        buf = _line(s, buf)[1]  # the sync's answer
        s.sendall(json.dumps({'execute': command}).encode() + b'\n')
        line = _line(s, buf)[0]
        reply = json.loads(line)
        if 'error' in reply:
            raise RuntimeError(reply['error'])
        return reply['return']
    finally:
        s.close()


def _line(s, buf):
    """(the first whole line, what follows it), reading from ``s`` as needed."""
    while b'\n' not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError('the agent closed the connection')
        buf += chunk
    return buf.split(b'\n', 1)


def wait_agent(vm, timeout=120):
    """Until the guest's agent answers (it starts with the guest; libvirt connects a moment later)."""
    end = time.time() + timeout
    while True:
        try:
            return agent_command(vm, 'guest-ping')
        except (OSError, RuntimeError, ValueError) as e:
            if time.time() > end:
                raise AssertionError('the guest agent of %s never answered: %s' % (vm.name, e))
            time.sleep(0.5)


class StandInAgent:
    """A unix socket at ``path`` that answers as a qemu-ga would: guest-sync-delimited, then
    ``answers`` {command: return value or {'error': ...}}; silent (None) to play a dead agent."""

    def __init__(self, path, answers=None):
        self.path = path
        self.answers = answers
        self.seen = []
        self.sock = socket.socket(socket.AF_UNIX)
        if os.path.exists(path):
            os.unlink(path)
        self.sock.bind(path)
        self.sock.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        buf = b''
        with conn:
            while True:
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk.replace(b'\xff', b'')
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    msg = json.loads(line)
                    self.seen.append(msg['execute'])
                    if self.answers is None:
                        continue
                    if msg['execute'] == 'guest-sync-delimited':
                        conn.sendall(b'\xff' + json.dumps({'return': msg['arguments']['id']}).encode() + b'\n')
                        continue
                    value = self.answers.get(msg['execute'], {'error': {'class': 'CommandNotFound', 'desc': 'no'}})
                    reply = value if isinstance(value, dict) and 'error' in value else {'return': value}
                    conn.sendall(json.dumps(reply).encode() + b'\n')

    def close(self):
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
