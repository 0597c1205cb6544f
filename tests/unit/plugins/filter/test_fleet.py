"""The playbooks' extra-var filter."""

from ansible_collections.vmfleet.kvm.plugins.filter import fleet


def test_extra_vars_lists_come_as_lists_or_comma_separated_text():
    assert fleet.fleet_list('a, b,,/run/c.qmp') == ['a', 'b', '/run/c.qmp']
    assert fleet.fleet_list('web01\nweb02\r\n\n/run/c.qmp\n') == ['web01', 'web02', '/run/c.qmp']
    assert fleet.fleet_list(None) == [] and fleet.fleet_list('') == [] and fleet.fleet_list(['x']) == ['x']
