"""execution-environment.yml builds: `ansible-builder create` makes a context holding the collection, and its
galaxy and Python steps succeed here, without a container engine (no base image can be pulled on this
machine): the collection installs from the context's galaxy requirements, the Python requirements
(ansible-builder's introspection of the installed collection plus the user's files) install into a fresh
virtualenv, and there `ansible-doc vmfleet.kvm.snapshot` works. The EE is the controller: nothing of the
hypervisors' libraries (libvirt-python, qemu.qmp, libvirt's packages, a compiler) goes into it. `make ee` on a
machine that is no hypervisor (no .venv) installs nothing outside the repo's build/ee."""

import os
import re
import shutil
import sys

import pytest
import yaml

from rig.packaging import BIN, ROOT, run


@pytest.fixture(scope='module')
def context(collection_tarball, tmp_path_factory):
    """A copy of the EE definition with the tarball where `make ee` puts it, and the context it creates."""
    top = tmp_path_factory.mktemp('ee')
    shutil.copy(ROOT / 'execution-environment.yml', top / 'execution-environment.yml')
    (top / 'build' / 'ee').mkdir(parents=True)
    shutil.copy(collection_tarball, top / 'build' / 'ee' / 'vmfleet-kvm.tar.gz')
    run([BIN / 'ansible-builder', 'create', '-f', top / 'execution-environment.yml', '-c', top / 'context'], cwd=top)
    return top


def build_arg(ctx, name):
    containerfile = next(p for p in (ctx / 'Containerfile', ctx / 'Dockerfile') if p.exists()).read_text()
    return re.search(r'^ARG %s="(.*)"$' % name, containerfile, re.M).group(1)


def test_context_holds_the_collection_and_no_source_tree(context):
    build = context / 'context' / '_build'
    reqs = yaml.safe_load((build / 'requirements.yml').read_text())
    (coll,) = reqs['collections']
    assert coll['type'] == 'file' and (build / coll['name']).is_file()
    assert not (build / 'galaxy.yml').exists() and not (context / 'context' / 'galaxy.yml').exists()
    # the controller's EE: no hypervisor library or package is asked for, nothing to compile
    assert not (build / 'requirements.txt').exists() and not (build / 'bindep.txt').exists()
    # the base image's own Python 3.11, not EL9's /usr/bin/python3 (3.9)
    assert build_arg(context / 'context', 'PYCMD') == '/usr/bin/python3.11'
    assert 'awx-ee:latest' not in (context / 'execution-environment.yml').read_text()


def test_galaxy_and_python_steps_succeed(context, tmp_path):
    build = context / 'context' / '_build'
    colls = tmp_path / 'collections'
    # only the target path is configured, as in the fresh image: a vmfleet.kvm installed elsewhere on this
    # machine (~/.ansible/collections) would otherwise count as installed and nothing would be
    env = dict(os.environ, ANSIBLE_GALAXY_DISABLE_GPG_VERIFY='1', ANSIBLE_NOCOLOR='1',
               ANSIBLE_COLLECTIONS_PATH=str(colls))
    # the galaxy stage: WORKDIR /build, then the two installs from requirements.yml
    run([BIN / 'ansible-galaxy', 'role', 'install', '-r', 'requirements.yml', '--roles-path', tmp_path / 'roles'],
        cwd=build, env=env)
    run([BIN / 'ansible-galaxy', 'collection', 'install', '-r', 'requirements.yml', '--collections-path', colls],
        cwd=build, env=env)
    installed = colls / 'ansible_collections' / 'vmfleet' / 'kvm'
    assert (installed / 'MANIFEST.json').is_file()
    # the builder stage: introspection of the installed collections with the user's files
    run([sys.executable, build / 'scripts' / 'introspect.py', 'introspect', colls,
         '--write-pip', tmp_path / 'pip.txt', '--write-bindep', tmp_path / 'bindep.txt'], cwd=build)
    for name in ('pip.txt', 'bindep.txt'):
        wanted = tmp_path / name
        assert not wanted.exists() or not wanted.read_text().strip(), '%s: %s' % (name, wanted.read_text())
    # the Python the final image gets: ansible itself, then the requirements, into a fresh virtualenv
    venv = tmp_path / 'venv'
    run([sys.executable, '-m', 'venv', venv])
    py = venv / 'bin' / 'python'
    pip = [py, '-m', 'pip', 'install', '-q', '--disable-pip-version-check']
    run(pip + build_arg(context / 'context', 'ANSIBLE_INSTALL_REFS').split())
    env.pop('ANSIBLE_CONFIG', None)  # run in tmp_path: the repo's ansible.cfg points elsewhere
    doc = run([venv / 'bin' / 'ansible-doc', 'vmfleet.kvm.snapshot'], cwd=tmp_path, env=env)
    assert 'vmfleet.kvm.snapshot' in doc and 'qmp_socket' in doc


def test_make_ee_sets_up_no_hypervisor(tmp_path):
    """An AWX admin's machine is no hypervisor: `make ee` in a checkout with no .venv builds the context from a
    virtualenv of its own and runs no package manager, no host setup, and changes no system Python."""
    repo = tmp_path / 'repo'
    files = run(['git', 'ls-files', '-co', '--exclude-standard']).split('\n')
    for name in filter(None, files):
        if (ROOT / name).is_file() and not name.startswith(('.venv/', '.collections/', 'build/')):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    marks = tmp_path / 'ran'
    trap = tmp_path / 'trap'
    trap.mkdir()
    for cmd in ('apt-get', 'apt', 'dpkg', 'dnf', 'yum', 'rpm', 'sudo', 'systemctl', 'service', 'libvirtd', 'virtlogd'):
        (trap / cmd).write_text('#!/bin/sh\necho "%s $*" >> %s\nexit 1\n' % (cmd, marks))
        (trap / cmd).chmod(0o755)
    (repo / 'scripts' / 'setup-host.sh').write_text('#!/bin/sh\necho "setup-host.sh" >> %s\nexit 1\n' % marks)
    system_py = shutil.which('python3')
    before = run([system_py, '-m', 'pip', 'freeze'])
    env = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'VIRTUAL_ENV', 'MAKE'))}
    env['PATH'] = '%s:%s' % (trap, ':'.join(p for p in env['PATH'].split(':') if '.venv' not in p))
    run(['make', 'ee'], cwd=repo, env=env)
    assert not marks.exists(), 'make ee ran: %s' % marks.read_text()
    assert not (repo / '.venv').exists()
    assert (repo / 'build' / 'ee' / 'context' / '_build' / 'requirements.yml').is_file()
    assert run([system_py, '-m', 'pip', 'freeze']) == before
