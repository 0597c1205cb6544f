"""common/exceptions.py and common/waiter.py: the error message, the one polling loop."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import DiskNotFound, OperationTimeout
from ansible_collections.vmfleet.kvm.plugins.module_utils.common.waiter import Deadline, poll_until


def test_error_message_joins_hint():
    e = DiskNotFound("VM 'x' has no disk 'vdz'", hint="its disks are: vda")
    assert e.message == "VM 'x' has no disk 'vdz'. Its disks are: vda"


def test_poll_until_returns_the_first_answer_and_waits_between_probes():
    answers = iter([None, None, 'done'])
    waits = []
    assert poll_until(lambda: next(answers), Deadline(10), on_timeout=AssertionError,
                      interval=0.5, wait=waits.append) == 'done'
    assert len(waits) == 2 and all(0 < w <= 0.5 for w in waits)


def test_poll_until_raises_what_on_timeout_builds_after_a_last_probe():
    probes = []

    def probe():
        probes.append(1)
        return None
    with pytest.raises(OperationTimeout, match='still waiting'):
        poll_until(probe, Deadline(0), on_timeout=lambda: OperationTimeout('still waiting'))
    assert probes == [1]
