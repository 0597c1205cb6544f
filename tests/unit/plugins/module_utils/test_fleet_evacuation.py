"""The pure parts of the evacuation: how hosts are reached, what a re-run counts as done, what
the return reports of a VM its holder did not send back."""

import threading

from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet import evacuation as ev
from ansible_collections.vmfleet.kvm.plugins.module_utils.fleet.workflows import VmsAway


def test_a_host_is_reached_over_ssh_and_qemu_ssh_with_its_user_unless_uris_are_given():
    h = ev.host_address({'name': 'hv2', 'address': '10.0.0.2', 'user': 'vmfleet'})
    assert h['libvirt_uri'] == 'qemu+ssh://vmfleet@10.0.0.2/system' and h['ssh_uri'] == 'ssh://vmfleet@10.0.0.2'
    h = ev.host_address({'name': 'hv3', 'libvirt_uri': 'qemu+tcp://hv3/system', 'free_mib': 4096})
    assert h['libvirt_uri'] == 'qemu+tcp://hv3/system' and h['ssh_uri'] == 'ssh://hv3' and h['free_mib'] == 4096


def test_given_free_memory_is_not_read_over_ssh():
    measured = ev.start_measuring([{'name': 'hv2', 'free_mib': 2048}])()
    assert measured[0]['free_mib'] == 2048 and 'error' not in measured[0]


def test_the_destinations_are_read_at_once_each_with_its_own_answer(monkeypatch):
    """Each read waits for the other at a barrier: read one after the other, the first would wait
    out the barrier's timeout and fail."""
    barrier = threading.Barrier(2, timeout=10)
    answers = {'ssh://hv2': 3 << 30, 'ssh://hv3': None}

    def available(uri, deadline):
        barrier.wait()
        return answers[uri]

    monkeypatch.setattr(ev, 'available_memory', available)
    measured = ev.start_measuring([{'name': 'hv2'}, {'name': 'hv3'}, {'name': 'hv4', 'free_mib': 512}])()
    assert [d['name'] for d in measured] == ['hv2', 'hv3', 'hv4']
    assert measured[0]['free_mib'] == 3072 and 'error' not in measured[0]
    assert measured[1]['free_mib'] is None and 'MemAvailable' in measured[1]['error']
    assert measured[2]['free_mib'] == 512 and 'error' not in measured[2]


def _record(tmp_path, name, vms):
    r = VmsAway(str(tmp_path), threading.Lock(), name)
    for v in vms:
        r.put(v)
    return r


def test_a_rerun_counts_moved_and_saved_vms_as_done_and_their_dead_sockets_are_not_failures(tmp_path):
    moved = dict(vm='raw1', backend='qemu', connection=dict(qmp_socket='/run/raw1.qmp'),
                 destination=dict(name='hv2'), destination_qmp_socket='/run/raw1.qmp', home=dict(name='hv1'))
    saved = dict(vm='web', backend='libvirt', connection=dict(domain='web'), image='/s/web.vmstate')
    evacuated = _record(tmp_path, ev.EVACUATED_VMS, [moved])
    saves = _record(tmp_path, 'saved-vms.json', [saved])
    missing = [dict(vm='/run/raw1.qmp', status='failed', msg='no QEMU answers'),
               dict(vm='/run/other.qmp', status='failed', msg='no QEMU answers')]
    records = ev.earlier_evacuations(evacuated, saves, [dict(name='db')], missing)
    by_vm = dict((r['vm'], r) for r in records)
    assert by_vm['raw1']['status'] == 'ok' and 'hv2' in by_vm['raw1']['msg'] and not by_vm['raw1']['changed']
    assert by_vm['web']['status'] == 'ok' and 'saved' in by_vm['web']['msg']
    assert '/run/raw1.qmp' not in by_vm and by_vm['/run/other.qmp']['status'] == 'failed'


def test_what_each_holder_said_reaches_the_return_report():
    results = [{'item': 'hv2', 'vms': [{'vm': 'web', 'status': 'failed', 'msg': 'destination unreachable'}]},
               {'item': 'hv3', 'failed': True, 'msg': 'hv3: unreachable over SSH'}]
    said = ev.sent_back_outcomes(results)
    assert said['web'] == 'failed at hv2: destination unreachable'
    assert said['@hv3'] == 'hv3: unreachable over SSH'


def test_the_entries_a_holder_sends_back_are_reached_where_they_run_now():
    entries = [dict(vm='raw1', backend='qemu', connection=dict(qmp_socket='/run/raw1.qmp'),
                    destination_qmp_socket='/var/lib/vmfleet/raw1.qmp'),
               dict(vm='web', backend='libvirt', connection=dict(domain='web', uri='qemu:///system'))]
    raw, web = ev.evacuated_as_targets(entries)
    assert raw['connection'] == {'qmp_socket': '/var/lib/vmfleet/raw1.qmp'} and raw['entry'] is entries[0]
    assert web['connection'] == {'domain': 'web'}
