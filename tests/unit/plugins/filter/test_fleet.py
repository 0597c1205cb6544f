"""The playbooks' extra-var filter."""

from ansible_collections.vmfleet.kvm.plugins.filter import fleet


def test_extra_vars_lists_come_as_lists_or_comma_separated_text():
    assert fleet.fleet_list('a, b,,/run/c.qmp') == ['a', 'b', '/run/c.qmp']
    assert fleet.fleet_list('web01\nweb02\r\n\n/run/c.qmp\n') == ['web01', 'web02', '/run/c.qmp']
    assert fleet.fleet_list(None) == [] and fleet.fleet_list('') == [] and fleet.fleet_list(['x']) == ['x']


def test_inventory_hosts_become_destinations_with_their_address_and_user():
    hostvars = {'hv2': {'ansible_host': '10.0.0.2', 'ansible_user': 'vmfleet'}, 'hv3': {}}
    assert fleet.fleet_hosts(['hv2', 'hv3', {'name': 'hv4', 'free_mib': 512}], hostvars) == [
        {'name': 'hv2', 'address': '10.0.0.2', 'user': 'vmfleet'},
        {'name': 'hv3', 'address': 'hv3', 'user': None},
        {'name': 'hv4', 'free_mib': 512}]
    assert fleet.fleet_hosts('hv2, hv3', hostvars)[1]['name'] == 'hv3'
