# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How every module is built and run: the connection options merged in once,
and the one place engine errors become fail_json, so no traceback reaches a
user unless the error is a bug of ours, and then only at -vvv."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.arg_specs import (
    CONNECTION_MUTUALLY_EXCLUSIVE, CONNECTION_REQUIRED_ONE_OF, RELAUNCH_ARGS, argument_spec, fleet_argument_spec,
)
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import VmfleetError


def vmfleet_module(options=None, mutually_exclusive=(), needs_vm=True, relaunches=False):
    """An AnsibleModule with the shared connection options and ``options``.
    ``needs_vm``: one of domain/qmp_socket is required (modules that can list
    every VM of the host, or restore one that does not run, need none).
    ``relaunches``: the module starts a raw QEMU again from its command line (RELAUNCH_ARGS)."""
    options = dict(options or {})
    if relaunches:
        options.update(RELAUNCH_ARGS)
    return AnsibleModule(
        argument_spec=argument_spec(**options),
        mutually_exclusive=CONNECTION_MUTUALLY_EXCLUSIVE + list(mutually_exclusive),
        required_one_of=CONNECTION_REQUIRED_ONE_OF if needs_vm else None,
        supports_check_mode=True,
    )


def fleet_module(options=None, **kw):
    """An AnsibleModule with the fleet selection options and ``options``."""
    return AnsibleModule(argument_spec=fleet_argument_spec(**(options or {})), supports_check_mode=True, **kw)


def run_module(module, work):
    """Call ``work(module)`` and exit with its result dict, or fail clearly.

    fail_json is called outside the except blocks: inside one, ansible-core
    attaches the active traceback to the result even for expected errors."""
    failure = None
    try:
        result = work(module)
    except VmfleetError as e:
        failure = dict(e.result, msg=e.message, error=type(e).__name__)
    except Exception as e:  # a bug of ours: say so, keep the trace for -vvv
        failure = dict(msg="vmfleet.kvm internal error: %s: %s" % (type(e).__name__, e),
                       exception=traceback.format_exc())
    if failure is not None:
        module.fail_json(**failure)
    module.exit_json(**result)
