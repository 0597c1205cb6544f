"""Remove demo domains an interrupted `make demo` left behind."""
from rig.libvirt_guest import virsh

for name in virsh('list', '--all', '--name', check=False).stdout.split():
    if name.startswith('vmfleet-demo-'):
        virsh('destroy', name, check=False)
        virsh('undefine', name, '--snapshots-metadata', check=False)
