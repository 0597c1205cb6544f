"""save/save_restore.py: how many channels read a save image back."""

import pytest

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument
from ansible_collections.vmfleet.kvm.plugins.module_utils.save.save_restore import load_channels


def test_load_channels_reads_page_addressable_images_over_at_least_four_but_streams_as_saved():
    assert load_channels({'path_used': 'mapped-ram', 'channels': 1}, None) == 4
    assert load_channels({'path_used': 'mapped-ram', 'channels': 8}, None) == 8
    assert load_channels({'path_used': 'mapped-ram', 'channels': 8}, None, 2) == 2
    with pytest.raises(InvalidArgument):
        load_channels({'path_used': 'mapped-ram', 'channels': 1}, None, 0)
    stream = {'path_used': 'multifd-stream', 'channels': 2}
    assert load_channels(stream, 2) == 2 and load_channels(stream, 2, 2) == 2
    with pytest.raises(InvalidArgument, match='2 stream'):
        load_channels(stream, 2, 4)
