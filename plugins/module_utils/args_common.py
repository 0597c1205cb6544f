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

CONNECTION_MUTUALLY_EXCLUSIVE = [('domain', 'qmp_socket')]
CONNECTION_REQUIRED_ONE_OF = [('domain', 'qmp_socket')]


def argument_spec(**extra):
    """The connection options merged with a module's own options."""
    spec = copy.deepcopy(CONNECTION_ARGS)
    spec.update(extra)
    return spec
