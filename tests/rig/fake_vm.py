"""A VmHandle with given disks and nothing behind it, for unit tests of the pure logic that reads disks."""

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.vm_handle import VmHandle


class FakeVm(VmHandle):
    backend = 'test'

    def __init__(self, disks, aliases=None):
        super(FakeVm, self).__init__(None, 'vm1')
        self._disks = disks
        self._aliases = aliases or {}

    def disks(self):
        return self._disks

    def disk_aliases(self):
        return self._aliases
