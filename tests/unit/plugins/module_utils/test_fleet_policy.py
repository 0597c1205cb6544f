"""The fleet workflows' policy: which VMs, which disks, which snapshots may go."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import policy as fleet
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument


def _vm(name, backend='libvirt', state='running', disks=None):
    conn = {'domain': name, 'uri': 'qemu:///system'} if backend == 'libvirt' else {'qmp_socket': '/run/%s.qmp' % name}
    return dict(name=name, backend=backend, state=state, connection=conn, snapshots=[],
                disks=disks if disks is not None else [
                    dict(name='vda', format='qcow2', file='/img/%s-root.qcow2' % name, read_only=False),
                    dict(name='vdb', format='raw', file='/img/%s-vars.raw' % name, read_only=False),
                    dict(name='sr0', format='raw', file='/iso/x.iso', read_only=True)])


def test_select_every_running_vm_with_its_snapshot_disks_and_what_was_left_out():
    sel = fleet.fleet_select([[_vm('web01'), _vm('db01', state='shutoff')], [_vm('raw1', 'qemu')]])
    assert [t['name'] for t in sel['targets']] == ['web01', 'raw1']
    web = sel['targets'][0]
    assert web['disks'] == ['vda'] and web['vmstate_disk'] == 'vda'
    assert [x['disk'] for x in web['left_out']] == ['vdb', 'sr0']
    assert 'raw' in web['left_out'][0]['reason'] and 'read-only' in web['left_out'][1]['reason']
    assert sel['missing'] == [] and sel['skipped'] == []


def test_select_by_name_socket_pattern_and_exclude_reports_what_it_did_not_find():
    found = [[_vm('web01'), _vm('web02'), _vm('db01', state='shutoff')], [_vm('raw1', 'qemu')]]
    sel = fleet.fleet_select(found, ['web01', '/run/raw1.qmp', 'db01', 'nope'], ['web0*'])
    assert [t['name'] for t in sel['targets']] == ['raw1']
    assert {s['vm']: s['reason'] for s in sel['skipped']} == {'web01': 'excluded', 'db01': 'state is shutoff, not running'}
    assert [m['vm'] for m in sel['missing']] == ['nope']
    sel = fleet.fleet_select(found, pattern='^web0[2-9]$')
    assert [t['name'] for t in sel['targets']] == ['web02']


def test_an_unreachable_socket_is_missing_with_the_module_s_reason():
    sel = fleet.fleet_select([], [], unreachable=[{'item': '/run/x.qmp', 'msg': 'QMP socket /run/x.qmp does not exist'}])
    assert sel['missing'] == [{'vm': '/run/x.qmp', 'msg': 'QMP socket /run/x.qmp does not exist'}]


def test_a_bad_pattern_is_a_clear_error():
    with pytest.raises(InvalidArgument, match='regular expression'):
        fleet.fleet_select([[_vm('a')]], pattern='(')


def test_retention_keeps_the_newest_and_never_touches_names_without_the_prefix():
    snaps = [dict(name='vmfleet-a', date='2026-01-01T00:00:00'), dict(name='manual', date='2026-01-02T00:00:00'),
             dict(name='vmfleet-b', date='2026-01-03T00:00:00'), dict(name='vmfleet-c', date='2026-01-04T00:00:00'),
             dict(name='vmfleet-a', date='2026-01-01T00:00:00')]  # same snapshot seen on a second disk
    assert fleet.fleet_retention(snaps, 'vmfleet-', 2) == ['vmfleet-a']
    assert fleet.fleet_retention(snaps, 'vmfleet-', 1) == ['vmfleet-b', 'vmfleet-a']
    assert fleet.fleet_retention(snaps, 'vmfleet-', 0) == []
    assert 'manual' not in fleet.fleet_retention(snaps, 'vmfleet-', 1)
    with pytest.raises(InvalidArgument, match='prefix'):
        fleet.fleet_retention(snaps, '', 1)


def test_the_prefix_is_added_once():
    assert fleet.prefixed('pre-upgrade', 'vmfleet-') == 'vmfleet-pre-upgrade'
    assert fleet.prefixed('vmfleet-pre-upgrade', 'vmfleet-') == 'vmfleet-pre-upgrade'


def test_plan_moves_writable_disks_not_yet_moved_and_refuses_colliding_targets():
    a = dict(_vm('a'), disks_all=_vm('a')['disks'] + [dict(name='vdc', format='qcow2', file='/new/a/c.qcow2')])
    plan = fleet.fleet_plan([a], '/new', per_vm_dir=True)
    assert [(m['disk'], m['target']) for m in plan[0]['moves']] == [
        ('vda', '/new/a/a-root.qcow2'), ('vdb', '/new/a/a-vars.raw')]
    clash = [dict(_vm('x'), disks_all=[dict(name='vda', format='qcow2', file='/p/x/root.qcow2')]),
             dict(_vm('y'), disks_all=[dict(name='vda', format='qcow2', file='/p/y/root.qcow2')])]
    plan = fleet.fleet_plan(clash, '/new')
    assert all('per_vm_dir' in p['error'] for p in plan)
    assert not any('error' in p for p in fleet.fleet_plan(clash, '/new', per_vm_dir=True))
    with pytest.raises(InvalidArgument, match='absolute'):
        fleet.fleet_plan(clash, 'relative')


# -- host_maintenance evacuate: where each VM goes --
def _dests(**free):
    return [dict(name=n, free_mib=f) for n, f in free.items()]


def test_spread_puts_the_largest_vm_first_on_the_destination_with_most_memory_left():
    vms = [dict(name='small', memory_mib=256), dict(name='big', memory_mib=2048), dict(name='mid', memory_mib=1024)]
    plan = fleet.fleet_spread(vms, _dests(hv2=3000, hv3=2500))
    # big -> hv2 (3000 -> 952); mid -> hv3 (2500 -> 1476); small -> hv3 (1476 > 952)
    assert plan['placed'] == {'big': 'hv2', 'mid': 'hv3', 'small': 'hv3'}
    assert plan['unplaced'] == [] and plan['free_mib'] == {'hv2': 952, 'hv3': 1220}


def test_spread_alternates_equal_vms_over_equal_destinations_ties_to_the_first_named():
    vms = [dict(name='a', memory_mib=256), dict(name='b', memory_mib=256)]
    plan = fleet.fleet_spread(vms, _dests(hv2=4000, hv3=4000))
    assert plan['placed'] == {'a': 'hv2', 'b': 'hv3'}


def test_spread_leaves_out_what_fits_nowhere_and_destinations_that_cannot_take_vms():
    vms = [dict(name='huge', memory_mib=8192), dict(name='ok', memory_mib=512)]
    dests = _dests(hv2=1000, hv3=None) + [dict(name='hv4', free_mib=9000, error='unreachable over SSH')]
    plan = fleet.fleet_spread(vms, dests, reserve_mib=256)
    assert plan['placed'] == {'ok': 'hv2'}
    assert plan['unplaced'] == [dict(vm='huge', reason='no destination has 8192 MiB free (the most: 744 MiB at hv2)')]
    nothing = fleet.fleet_spread(vms, dests[1:])
    assert nothing['placed'] == {} and all('no destination can take VMs (hv3, hv4)' == u['reason']
                                           for u in nothing['unplaced'])


def test_spread_refuses_a_destination_named_twice():
    with pytest.raises(InvalidArgument, match="'hv2' is named twice"):
        fleet.fleet_spread([], _dests(hv2=1) + _dests(hv2=2))
