# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the live migration engine (migrate/vm_migration.py) asks of a backend to move one VM to
another host; each backend's ``migrator.py`` subclasses Migrator, as ``*_mirror.py`` subclass
MirrorDriver. The engine keeps the checks, the postcopy policy, the progress samples and the
result; a migrator only talks to its libvirt or its QEMUs."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class Migrator(object):
    """One VM (``vm``; None when it does not run on this host) moving to ``params['destination_uri']``.
    ``deadline``: the run's one Deadline. Required: ``identity``, ``runs_at_destination``,
    ``destination_memory``, ``plan``, ``migrate``."""

    route = None

    def __init__(self, module, params, deadline, vm=None):
        self.module = module
        self.p = params
        self.deadline = deadline
        self.vm = vm

    def identity(self):
        """The result's keys that name the VM and where it goes (domain or qmp_socket, ...)."""
        raise NotImplementedError

    @property
    def where(self):
        """The destination as messages name it."""
        return self.p['destination_uri']

    def runs_at_destination(self):
        """True when the VM runs at the destination already (a re-run after it moved, or a second copy)."""
        raise NotImplementedError

    def destination_memory(self):
        """Bytes a new guest can have at the destination, or None when it does not say."""
        raise NotImplementedError

    def plan(self):
        """Backend checks before anything changes (storage, the destination's copies); a dict for the result."""
        raise NotImplementedError

    def migrate(self, progress):
        """Move the VM; the result's measures. ``progress`` (the engine's) takes the samples, says when
        to switch to postcopy and when time is up; a failure raises with the VM left running here
        (unless past postcopy's switch)."""
        raise NotImplementedError

    def recover(self):
        """Before anything else: finish what a killed run left half-done that is the backend's own
        (libvirt: snapshot metadata taken off the domain and not yet defined again); a dict for the
        result, or None."""
        return None

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
