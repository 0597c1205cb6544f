# -*- coding: utf-8 -*-
# Copyright: vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for the playbooks' extra vars. The fleet policy itself (which
VMs, which disks, which snapshots may go) runs in the fleet modules, on the
hypervisor: plugins/module_utils/fleet/policy.py."""

from __future__ import annotations

import re


def fleet_list(value):
    """A list from an extra var given as a list, or as text separated by commas
    or newlines (an AWX survey's text or textarea field), or nothing."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in re.split(r'[,\n]', value) if v.strip()]
    return list(value)


def fleet_hosts(value, hostvars):
    """Hosts for fleet_maintenance's destinations and home: each inventory name
    becomes {name, address, user} from its ansible_host and ansible_user; a
    dict is kept as it is (a host described in full)."""
    out = []
    for h in fleet_list(value):
        if isinstance(h, dict):
            out.append(h)
            continue
        hv = hostvars[h] if h in hostvars else {}
        out.append(dict(name=h, address=hv.get('ansible_host') or h, user=hv.get('ansible_user')))
    return out


class FilterModule(object):
    def filters(self):
        return {'fleet_list': fleet_list, 'fleet_hosts': fleet_hosts}
