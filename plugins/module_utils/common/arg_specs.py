# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument-spec pieces shared by every module. Each constant here is paired
with a doc fragment in plugins/doc_fragments/ of the same name; change both."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy

# Paired with doc fragment vmfleet.kvm.connection.
CONNECTION_ARGS = dict(
    domain=dict(type='str'),
    uri=dict(type='str', default='qemu:///system'),
    qmp_socket=dict(type='path'),
    timeout=dict(type='float', default=300.0),
)

# Paired with doc fragment vmfleet.kvm.relaunch: the modules that start a raw QEMU again from its command line.
RELAUNCH_ARGS = dict(
    allow_exec_options=dict(type='bool', default=False),
)

CONNECTION_MUTUALLY_EXCLUSIVE = [('domain', 'qmp_socket')]
CONNECTION_REQUIRED_ONE_OF = [('domain', 'qmp_socket')]


def argument_spec(**extra):
    """The connection options merged with a module's own options."""
    spec = copy.deepcopy(CONNECTION_ARGS)
    spec.update(extra)
    return spec


# Paired with doc fragment vmfleet.kvm.fleet: the fleet modules work every
# selected VM of the host, so they take a selection instead of one VM.
FLEET_ARGS = dict(
    uri=dict(type='str', default='qemu:///system'),
    vms=dict(type='list', elements='str', default=[]),
    exclude=dict(type='list', elements='str', default=[]),
    name_pattern=dict(type='str', default=''),
    qmp_sockets=dict(type='list', elements='path', default=[]),
    concurrency=dict(type='int', default=2),
    timeout=dict(type='float', default=600.0),
    progress_file=dict(type='path'),
    report_file=dict(type='path'),
    report_extra=dict(type='dict', default={}),
)


def fleet_argument_spec(**extra):
    """The fleet selection options merged with a fleet module's own options."""
    spec = copy.deepcopy(FLEET_ARGS)
    spec.update(extra)
    return spec
