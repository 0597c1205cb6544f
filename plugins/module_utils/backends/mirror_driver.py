# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract between drive_mirror's engine and a backend."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class MirrorDriver(object):
    """What drive_mirror's engine asks of a backend to copy one disk live; each
    backend's ``mirror.py`` subclasses it. Required: ``job(disk, job_id)``
    (a dict with id, len, offset, ready, status, error, speed; None when there
    is none), ``start``, ``set_speed``, ``complete``, ``cancel``, ``pause``,
    ``resume``, ``nodes_for_verify``. The rest defaults to a backend without
    a persistent definition of its VMs."""

    route = None
    # the backend keeps a persistent definition, pointed at the target after the switch
    keeps_config = False
    # what the result says when the job ended without an error message
    silent_failure = 'the job ended without an error message'

    def __init__(self, vm):
        self.vm = vm

    def job_target(self, disk):
        return None  # the backend does not say: the journal does

    def dismiss(self, job):
        pass

    def cleanup_after_cancel(self, target):
        pass

    def backing_node(self, disk):
        return None

    def config_source(self, disk):
        return None

    def update_config(self, disk, target, fmt):
        return False

    def stale_definition(self, disk, target, source):
        """A warning for after the switch, when the VM's definition still names the old image."""
        return None
