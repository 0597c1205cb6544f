"""Migration TLS for the simulated fleet: a throwaway CA and each host's certificates in libvirt's
layout (installed in the host's own /etc/pki/qemu, rig/hypervisors.py), and an AF_PACKET capture
on a host's eth0 (in its network namespace) with the TCP streams it saw put back together, to
look for guest memory on the wire.

The certificates are made with Python's ``cryptography`` (ansible-core depends on it, so the
.venv has it)."""

import datetime
import grp
import json
import os
import signal
import struct
import subprocess
import sys
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import ipaddress

# libvirt's QEMU runs as this group and must read the keys (libvirt does not relabel them)
QEMU_GROUP = 'libvirt-qemu'


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'vmfleet test rig'),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


class Ca:
    """A CA of its own (``name`` tells two apart)."""

    def __init__(self, name='vmfleet test CA'):
        self.key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = _name('%s %s' % (name, uuid.uuid4().hex[:8]))
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                  key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                  decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, cn, usage, address=None, expired=False):
        """(certificate PEM, key PEM) for ``cn``; ``usage`` 'server' or 'client'; ``address`` an IP in its SAN;
        ``expired``: its time ended an hour ago."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            now -= datetime.timedelta(days=2, hours=1)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if usage == 'server'
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if address:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn),
                                                             x509.IPAddress(ipaddress.ip_address(address))]),
                                critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def install(self, host, expired=False):
        """The host's /etc/pki/qemu in libvirt's layout: the CA, a server certificate naming the
        host's address, a client certificate (both expired if ``expired``); keys 0640 root:libvirt-qemu."""
        d = host.path('pki')
        gid = grp.getgrnam(QEMU_GROUP).gr_gid
        files = {'ca-cert.pem': (self.cert.public_bytes(serialization.Encoding.PEM), None)}
        for usage in ('server', 'client'):
            cert, key = self.issue(host.name, usage, host.address, expired)
            files['%s-cert.pem' % usage] = (cert, None)
            files['%s-key.pem' % usage] = (key, gid)
        for name, (data, group) in files.items():
            path = os.path.join(d, name)
            tmp = path + '.tmp'
            with open(tmp, 'wb') as f:
                f.write(data)
            if group is not None:
                os.chown(tmp, 0, group)
            os.chmod(tmp, 0o640 if group is not None else 0o644)
            os.replace(tmp, path)


def install(ca, hosts):
    for h in hosts:
        ca.install(h)


# Run in a host's network namespace: every frame on the interface (both ways), each written as a
# 4-byte length and the frame, until SIGTERM. Says "ready" once bound.
CAPTURE = r"""
import signal, socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: no frame dropped at the guest's pace
s.bind((sys.argv[1], 0))
out = open(sys.argv[2], 'wb', buffering=1 << 20)
signal.signal(signal.SIGTERM, lambda *a: (out.close(), sys.exit(0)))
print('ready', flush=True)
while True:
    frame = s.recv(1 << 17)
    out.write(struct.pack('!I', len(frame)) + frame)
"""


class Capture:
    """An AF_PACKET capture on ``host``'s eth0 into ``path``, as a context manager; then
    ``streams()`` (each TCP stream's payload, in order) and ``holds(marker)``."""

    def __init__(self, host, path):
        self.host = host
        self.path = path
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(['nsenter', '-t', str(self.host.holder), '-n', '--', sys.executable, '-c',
                                      CAPTURE, 'eth0', self.path], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == 'ready'
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def frames(self):
        with open(self.path, 'rb') as f:
            data = f.read()
        i = 0
        while i + 4 <= len(data):
            (n,) = struct.unpack('!I', data[i:i + 4])
            yield data[i + 4:i + 4 + n]
            i += 4 + n

    def streams(self):
        """{(src, sport, dst, dport): payload bytes in sequence order} of the IPv4 TCP frames."""
        flows = {}
        for f in self.frames():
            if len(f) < 34 or f[12:14] != b'\x08\x00' or f[23] != 6:
                continue
            ip = f[14:]
            ihl = (ip[0] & 15) * 4
            total = struct.unpack('!H', ip[2:4])[0] or len(ip)
            tcp = ip[ihl:total]
            payload = tcp[(tcp[12] >> 4) * 4:]
            if not payload:
                continue
            key = (ip[12:16], tcp[0:2], ip[16:20], tcp[2:4])
            (seq,) = struct.unpack('!I', tcp[4:8])
            segs = flows.setdefault(key, {})
            if len(payload) > len(segs.get(seq, b'')):
                segs[seq] = payload
        out = {}
        for key, segs in flows.items():
            base = min(segs)  # a stream here is far shorter than 2 GiB: no wrap to care for but this
            if max(segs) - base > 1 << 31:
                base = min(s for s in segs if s > 1 << 31)
            data = bytearray()
            for seq in sorted(segs, key=lambda s: (s - base) % (1 << 32)):
                at = (seq - base) % (1 << 32)
                p = segs[seq]
                if at + len(p) > len(data):
                    data[at:] = b''
                    data.extend(b'\0' * (at - len(data)))  # a hole (a frame not seen)
                    data.extend(p)
            out[key] = bytes(data)
        return out

    def bytes_seen(self):
        return sum(len(s) for s in self.streams().values())

    def holds(self, marker):
        return any(marker in s for s in self.streams().values())


# Run in a third host's network namespace: wait (1 ms polls of the destination namespace's TCP
# table) for a listener that was not there at start (a migration's incoming port), connect to it,
# open TLS without a client certificate and send a QEMU migration stream's header in it; `ss -ltnH`
# in the destination namespace; then let the source's connections through (GATE, which Intruder
# set up, holds them back until then: the intruder is first, every time). Writes what it saw as JSON.
INTRUDER = r"""
import json, socket, ssl, struct, subprocess, sys, time
dst_pid, dst_addr, out, src_pid = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
gate = json.loads(sys.argv[5])
def listeners():
    found = set()
    with open('/proc/%s/net/tcp' % dst_pid) as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == '0A':
                ip, port = local.split(':')
                found.add((socket.inet_ntoa(struct.pack('<I', int(ip, 16))), int(port, 16)))
    return found
base = listeners()
r = {}
print('ready', flush=True)
end = time.monotonic() + 300
while not listeners() - base:
    if time.monotonic() > end:
        subprocess.run(['nsenter', '-t', src_pid, '-n', '--', 'iptables', '-w', '-D'] + gate)
        json.dump({'error': 'no new listener'}, open(out, 'w'))
        sys.exit(0)
    time.sleep(0.001)
new = sorted(listeners() - base)
r['listeners'] = new
s = socket.create_connection((dst_addr, new[0][1]), timeout=60)
r['from'] = s.getsockname()[0]
ss = subprocess.Popen(['nsenter', '-t', dst_pid, '-n', '--', 'ss', '-ltnH'], stdout=subprocess.PIPE, text=True)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
try:
    t = ctx.wrap_socket(s)
    r['server_cert'] = t.getpeercert(binary_form=True).hex()
    # QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION, a configuration section: the start of a stream
    t.sendall(b'QEVM' + struct.pack('>I', 3) + b'\x07' + struct.pack('>I', 12) + b'pc-i440fx-10' + b'\0' * 4096)
    r['answer'] = t.recv(4096).hex()
except (OSError, ssl.SSLError) as e:
    r['error'] = '%s: %s' % (type(e).__name__, e)
r['ss'] = ss.communicate(timeout=30)[0]
subprocess.run(['nsenter', '-t', src_pid, '-n', '--', 'iptables', '-w', '-D'] + gate, check=True)
json.dump(r, open(out, 'w'))
"""


def _gate(dst):
    """The source's new TCP connections to ``dst``, but for SSH and libvirtd (which set the migration
    up), held back: their SYNs dropped (the kernel sends them again a second later)."""
    return ['OUTPUT', '-p', 'tcp', '--syn', '-d', dst.address, '-m', 'multiport', '!', '--dports', '22,16509', '-j', 'DROP']


class Intruder:
    """A process at ``third`` (a Host: its network namespace is a third address) that connects to
    ``dst``'s incoming port before the migration from ``src`` does (see INTRUDER), as a context
    manager; ``result()`` is what it saw: ``listeners`` [(address, port)], ``from``, ``server_cert``
    (the DER it was shown, hex) or ``error``, ``answer`` (hex), ``ss`` (the destination's listening
    sockets)."""

    def __init__(self, third, src, dst, path):
        self.third, self.src, self.dst, self.path = third, src, dst, path
        self.proc = None

    def __enter__(self):
        gate = _gate(self.dst)
        self.src.run(['iptables', '-w', '-I'] + gate)
        self.proc = subprocess.Popen(['nsenter', '-t', str(self.third.holder), '-n', '--', sys.executable, '-c',
                                      INTRUDER, str(self.dst.holder), self.dst.address, self.path,
                                      str(self.src.holder), json.dumps(gate)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == 'ready'
        return self

    def _wait(self):
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc):
        self._wait()
        # the gate gone whatever the intruder did (it removes it itself: this finds none)
        while self.src.run(['iptables', '-w', '-D'] + _gate(self.dst), check=False).returncode == 0:
            pass

    def result(self):
        self._wait()
        if not os.path.exists(self.path):
            raise AssertionError('the intruder wrote nothing: no new listener appeared at %s (did the migration '
                                 'fail before the destination listened?)' % self.dst.name)
        with open(self.path) as f:
            return json.load(f)

    def server_name(self):
        """The common name of the certificate the destination showed it, or None."""
        der = self.result().get('server_cert')
        if not der:
            return None
        cert = x509.load_der_x509_certificate(bytes.fromhex(der))
        return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
