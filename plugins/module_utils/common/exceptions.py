# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed errors of the engine. Each carries a message that names the object
and the fix; runner.py turns them into fail_json without a traceback."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class VmfleetError(Exception):
    """Base error. ``result`` holds whatever partial result is worth returning."""

    def __init__(self, msg, hint=None, **result):
        super(VmfleetError, self).__init__(msg)
        self.msg = msg
        self.hint = hint
        self.result = result

    @property
    def message(self):
        if not self.hint:
            return self.msg
        return "%s. %s%s" % (self.msg, self.hint[0].upper(), self.hint[1:])


class InvalidArgument(VmfleetError):
    pass


class ConnectionFailed(VmfleetError):
    pass


class VmNotFound(VmfleetError):
    pass


class DiskNotFound(VmfleetError):
    pass


class SnapshotNotFound(VmfleetError):
    pass


class CapabilityMissing(VmfleetError):
    pass


class QmpCommandError(VmfleetError):
    """QEMU refused a QMP command; ``error_class`` is QEMU's class string."""

    def __init__(self, command, error_class, desc, **result):
        super(QmpCommandError, self).__init__(
            "QEMU refused '%s': %s" % (command, desc), **result)
        self.command = command
        self.error_class = error_class
        self.desc = desc


class JobFailed(VmfleetError):
    pass


class OperationTimeout(VmfleetError):
    """Raised when ``timeout`` ran out; ``result`` carries the partial result."""
    pass


class VmGone(VmfleetError):
    """The VM (QEMU process or libvirt domain) went away during the operation."""
    pass


class SnapshotInconsistent(VmfleetError):
    """A snapshot exists in a shape the request does not match (other disks, half-made)."""
    pass


class ImageCorrupt(VmfleetError):
    """A save image or memory file does not match its manifest."""
    pass


class TargetProblem(VmfleetError):
    """A drive mirror target that cannot be used as asked."""
    pass


class SpaceTooSmall(VmfleetError):
    pass


class MultifdStreamError(VmfleetError):
    """A multifd channel failed; ``path`` names the file it was writing or reading."""

    def __init__(self, msg, path=None, hint=None, **result):
        super(MultifdStreamError, self).__init__(msg, hint=hint, **result)
        self.path = path


class FleetFailed(VmfleetError):
    """A fleet workflow failed on some VMs; ``result`` holds every VM's record."""
    pass


class VmBusy(VmfleetError):
    """Another vmfleet run holds the VM's lock on this hypervisor."""


class DestinationProblem(VmfleetError):
    """A migration's destination cannot take the VM (memory, CPU, a copy already running there)."""
    pass


class Untrusted(VmfleetError):
    """A file, directory or process the collection did not make, or that others
    could have changed: root does not act on what it says."""
    pass
