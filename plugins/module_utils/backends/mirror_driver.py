# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract between drive_mirror's engine and a backend."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class MirrorDriver(object):
    """What drive_mirror's engine asks of a backend to copy one disk live; each
    backend's ``mirror.py`` subclasses it. What has a body here defaults to a
    backend without a persistent definition of its VMs."""

    route = None
    # the backend keeps a persistent definition, pointed at the target after the switch
    keeps_config = False
    # what the result says when the job ended without an error message
    silent_failure = 'the job ended without an error message'

    def __init__(self, vm):
        self.vm = vm

    def job(self, disk, job_id=None):
        """The disk's mirror job: a dict with id, len, offset, ready, status, error, speed; None when there is none."""
        raise NotImplementedError

    def start(self, disk, target, fmt, sync, copy_mode, speed, granularity, buf_size, backing_node=None):
        """Start copying ``disk`` to the image ``target``: the job's id."""
        raise NotImplementedError

    def set_speed(self, job, speed):
        raise NotImplementedError

    def complete(self, disk, job, deadline):
        """Switch the disk to the target (the job is ready), wait until the job has ended:
        its error message, or None."""
        raise NotImplementedError

    def cancel(self, disk, job, deadline):
        """Stop the copy, the disk staying on its source, and wait until the job has ended."""
        raise NotImplementedError

    def pause(self):
        """Stop the guest's vCPUs (verify compares source and target while nothing writes)."""
        raise NotImplementedError

    def resume(self):
        raise NotImplementedError

    def nodes_for_verify(self, disk, target):
        """(source node, target node): flushed before verify compares the two images."""
        raise NotImplementedError

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
