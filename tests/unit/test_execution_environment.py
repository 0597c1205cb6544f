"""execution-environment.yml builds: `ansible-builder create` makes a context holding the collection, and its
galaxy and Python steps succeed here, without a container engine (no base image can be pulled on this
machine): the collection installs from the context's galaxy requirements, the Python requirements
(ansible-builder's introspection of the installed collection plus the user's files) install into a fresh
virtualenv, and there `ansible-doc vmfleet.kvm.snapshot` and `import libvirt, qemu.qmp` work.
pip may take libvirt-python from its wheel cache; the first run compiles it against libvirt-dev."""

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
    for name in ('execution-environment.yml', 'requirements.txt', 'bindep.txt'):
        shutil.copy(ROOT / name, top / name)
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
    bindep = (build / 'bindep.txt').read_text()
    for runtime in ('libvirt0 [platform:dpkg]', 'libvirt-libs [platform:rpm]', 'qemu-img [platform:rpm]'):
        assert runtime in bindep, runtime


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
         '--user-pip', build / 'requirements.txt', '--user-bindep', build / 'bindep.txt',
         '--write-pip', tmp_path / 'pip.txt', '--write-bindep', tmp_path / 'bindep.txt'], cwd=build)
    pip_reqs = (tmp_path / 'pip.txt').read_text()
    assert 'libvirt-python' in pip_reqs and 'qemu.qmp' in pip_reqs
    assert 'libvirt0 [platform:dpkg]' in (tmp_path / 'bindep.txt').read_text()
    # the Python the final image gets: ansible itself, then the requirements, into a fresh virtualenv
    venv = tmp_path / 'venv'
    run([sys.executable, '-m', 'venv', venv])
    py = venv / 'bin' / 'python'
    pip = [py, '-m', 'pip', 'install', '-q', '--disable-pip-version-check']
    run(pip + build_arg(context / 'context', 'ANSIBLE_INSTALL_REFS').split())
    run(pip + ['-r', tmp_path / 'pip.txt'])
    run([py, '-c', 'import libvirt, qemu.qmp'])
    env.pop('ANSIBLE_CONFIG', None)  # run in tmp_path: the repo's ansible.cfg points elsewhere
    doc = run([venv / 'bin' / 'ansible-doc', 'vmfleet.kvm.snapshot'], cwd=tmp_path, env=env)
    assert 'vmfleet.kvm.snapshot' in doc and 'qmp_socket' in doc
