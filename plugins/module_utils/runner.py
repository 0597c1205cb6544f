# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place engine errors become fail_json: no traceback reaches a user
unless the error is a bug of ours, and then only at -vvv."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import traceback

from ansible_collections.vmfleet.kvm.plugins.module_utils.exceptions import VmfleetError


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
