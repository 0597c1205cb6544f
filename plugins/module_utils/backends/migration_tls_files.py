# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration certificates in libvirt's layout (vm_migrate ``tls``), and the source's check of
its own before anything changes: QEMU reads them only once the migration starts, and a file missing
at the source would then read like a fault of the destination."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re
import socket

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import CapabilityMissing

# libvirt's directory and file names (raw QEMU VMs: vm_migrate's tls_dir)
TLS_DIR = '/etc/pki/qemu'
CLIENT_FILES = ('ca-cert.pem', 'client-cert.pem', 'client-key.pem')
LIBVIRT_QEMU_CONF = '/etc/libvirt/qemu.conf'


def libvirt_tls_dir(conf=LIBVIRT_QEMU_CONF):
    """The directory this host's libvirt takes migration certificates from: qemu.conf's
    migrate_tls_x509_cert_dir, else its default_tls_x509_cert_dir, else /etc/pki/qemu."""
    try:
        with open(conf) as f:
            text = f.read()
    except (IOError, OSError):
        return TLS_DIR
    for key in ('migrate_tls_x509_cert_dir', 'default_tls_x509_cert_dir'):
        m = re.search(r'^\s*%s\s*=\s*"([^"]*)"' % key, text, re.M)
        if m:
            return m.group(1)
    return TLS_DIR


def check_client_files(directory, hint_dir):
    """This host's CA, client certificate and key are readable in ``directory``, else CapabilityMissing
    naming the file and the host (nothing changed yet)."""
    for f in CLIENT_FILES:
        path = os.path.join(directory, f)
        if not os.access(path, os.R_OK):
            raise CapabilityMissing(
                "tls: %s is missing or unreadable at the source (%s); nothing was changed" % (path, socket.gethostname()),
                hint="install the fleet's migration certificates (ca-cert.pem, client-cert.pem, client-key.pem, "
                     "server-cert.pem, server-key.pem) in %s at every host, for example with the "
                     "vmfleet.kvm.hypervisor role, or %s" % (directory, hint_dir))
