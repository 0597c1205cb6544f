"""Remove demo domains an interrupted `make demo` left behind."""
import subprocess

URI = 'qemu:///system'
out = subprocess.run(['virsh', '-c', URI, 'list', '--all', '--name'], capture_output=True, text=True, check=False)
for name in out.stdout.split():
    if name.startswith('vmfleet-demo-'):
        subprocess.run(['virsh', '-c', URI, 'destroy', name], capture_output=True, check=False)
        subprocess.run(['virsh', '-c', URI, 'undefine', name, '--snapshots-metadata'], capture_output=True, check=False)
