# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The way in to a VM: modules and features open VMs here and never import a
backend themselves. Each backend is imported only when a VM needs it, so a
host with only one of the two libraries still works."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import os

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument


def _libvirt():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.vm import LibvirtVm
    return LibvirtVm


def _qemu():
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.vm import QemuVm
    return QemuVm


# backend name, as vm_info and manifests report it -> its handle class. Plain
# imports (not importlib) so that Ansible packs both backends with a module.
_BACKENDS = {'libvirt': _libvirt, 'qemu': _qemu}


def backend_class(name):
    """The handle class of backend ``name``: it also restores that backend's save images."""
    try:
        return _BACKENDS[name]()
    except KeyError:
        raise InvalidArgument("unknown backend %r" % name, hint="this collection knows: %s" % ", ".join(sorted(_BACKENDS)))


def backend_of(params):
    """The backend the connection options name, or None when they name no VM."""
    if params.get('qmp_socket'):
        return 'qemu'
    if params.get('domain'):
        return 'libvirt'
    return None


def vm_key(params):
    """The VM ``params`` name, as one string however they name it: a QMP socket's
    real path, or the libvirt URI and domain name. ``params`` are connection
    options, or the identity() of a VM that a manifest records."""
    if params.get('qmp_socket'):
        return 'qmp:' + os.path.realpath(params['qmp_socket'])
    return 'libvirt:%s:%s' % (params.get('uri') or 'qemu:///system', params.get('domain') or params['name'])


def reached_alone(name, uri):
    """The connection options of the VM a fleet's list names ``name``, when
    no listing of the host shows it: a path is a raw QEMU's QMP socket. None
    for any other name (a libvirt domain of ``uri``, or a VM's name): the
    listing of the host finds it."""
    if name.startswith('/'):
        return dict(qmp_socket=name, domain=None, uri=uri)
    return None


def listed_names(connection):
    """The names other than its own that a fleet's list may give the VM ``connection``
    (a VM's connection()) reaches: its QMP socket's path, its libvirt domain."""
    return [n for n in (connection.get('qmp_socket'), connection.get('domain')) if n]


def open_vm(module, params=None):
    """Open the VM the connection options name: a libvirt domain or a raw QEMU's QMP socket."""
    params = params or module.params
    backend = backend_of(params)
    if backend is None:
        raise InvalidArgument("one of 'domain' or 'qmp_socket' is required",
                              hint="name the libvirt domain, or the QMP socket of a QEMU no libvirt manages")
    return backend_class(backend).open(module, params)


def migrator_for(module, params, deadline):
    """The migrator of the VM the connection options name when that VM does not run on this host
    (it may run at the destination already): it asks the destination only."""
    return backend_class(backend_of(params)).migrator_class()(module, params, deadline, None)


def destination_uris(host, user=None):
    """How the source's root reaches ``host`` (``user``: the login there), per backend, by the keys a
    fleet record keeps them under: libvirt's ``libvirt_uri``, SSH's ``ssh_uri`` (raw QEMU)."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt import migrator as libvirt_migrator
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu import remote
    return dict(libvirt_uri=libvirt_migrator.destination_uri(host, user), ssh_uri=remote.destination_uri(host, user))


def shared_connections():
    """A context within which the VMs of one run moving to one host share the connections to it
    (backends/libvirt/connection.py; a raw QEMU's SSH shares its own master connection)."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.connection import shared_remotes
    return shared_remotes()


def prefetch_destination(params, deadline):
    """For a migration (vm_migrate's options): the connection to its destination, opened in the
    background inside shared_connections() (a libvirt domain's; a raw QEMU's SSH opens as it goes)."""
    if backend_of(params) == 'libvirt' and params.get('destination_uri'):
        prefetch_connection(params['destination_uri'], deadline)


def prefetch_connection(uri, deadline):
    """Open the connection to the libvirt at ``uri`` in the background, for the VMs of this run that
    will move there (inside shared_connections(); a failure shows when a migration needs it)."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt.connection import prefetch
    prefetch(uri, deadline, 'the destination libvirt')


def destination_key(backend):
    """The key of a fleet record's destination that reaches a VM of ``backend`` there."""
    return 'ssh_uri' if backend == 'qemu' else 'libvirt_uri'


def available_memory(ssh_uri, deadline):
    """Bytes of memory available (MemAvailable) at the host of ``ssh_uri``, read over SSH; None when it does not say."""
    from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.qemu.remote import Remote
    return Remote(ssh_uri, deadline).available_memory()


@contextlib.contextmanager
def open_vms(module, params=None):
    """The VM the options name, or, when they name none, every domain of the
    libvirt at ``uri``; all closed on exit. Yields (vms, host): ``host`` gives
    the host's facts when there is no VM to ask."""
    params = params or module.params
    backend = backend_of(params)
    if backend is not None:
        with open_vm(module, params) as vm:
            yield [vm], vm
        return
    with backend_class('libvirt').open_all(module, params) as (vms, host):
        yield vms, host
