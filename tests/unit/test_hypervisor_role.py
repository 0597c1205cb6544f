"""The hypervisor role knows each OS family it claims: a package task file per family, package lists the
modules need (qemu-img, libvirt's headers, Python's), and on RHEL-family hosts libvirt-devel from CodeReady
Builder for that transaction only. (Its Debian path runs for real in tests/system; no EL9 host or package
repository is reachable from this machine, so the EL9 path is checked here as far as it can be without one.)"""

from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[2] / 'roles' / 'hypervisor'


def _yaml(*parts):
    return yaml.safe_load(ROLE.joinpath(*parts).read_text())


def test_each_family_has_its_package_tasks_and_lists():
    families = _yaml('vars', 'main.yml')['hypervisor__packages']
    assert set(families) == {'Debian', 'RedHat'}
    for family, lists in families.items():
        tasks = _yaml('tasks', 'packages-%s.yml' % family.lower())
        assert [t['name'] for t in tasks], family
        assert {'build', 'virt'} <= set(lists)
    assert {'libvirt-dev', 'qemu-utils', 'python3-venv'} <= set(families['Debian']['build'])
    assert {'libvirt-devel', 'qemu-img', 'python3-devel', 'gcc'} <= set(families['RedHat']['build'])
    assert {'qemu-kvm', 'libvirt-daemon-kvm'} <= set(families['RedHat']['virt'])


def test_el_build_packages_take_crb_for_their_transaction_only():
    tasks = _yaml('tasks', 'packages-redhat.yml')
    build = next(t for t in tasks if 'build' in t['name'] or 'libvirt-python' in t['name'])
    assert 'ansible.builtin.dnf' in build and 'enablerepo' in build['ansible.builtin.dnf']
    assert not any('config-manager' in str(t) for t in tasks), 'the host repos must stay as they are'
    assert _yaml('defaults', 'main.yml')['hypervisor_el_crb_repo'] == 'crb'


def test_another_family_is_refused_before_anything_is_installed():
    tasks = _yaml('tasks', 'main.yml')
    names = [t['name'] for t in tasks]
    refuse = names.index('Refuse an OS family the role does not know')
    first_install = min(i for i, t in enumerate(tasks) if 'include_tasks' in str(t) or 'pip' in str(t))
    assert refuse < first_install
