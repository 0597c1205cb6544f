"""Fixtures of the packaging tests: the collection tarball, built once per session."""

import os

import pytest

from rig.packaging import BIN, ROOT, run


@pytest.fixture(scope='session')
def collection_tarball(tmp_path_factory):
    """`ansible-galaxy collection build` of the working tree, as a user would get it."""
    out = tmp_path_factory.mktemp('tarball')
    env = dict(os.environ, ANSIBLE_NOCOLOR='1')
    run([BIN / 'ansible-galaxy', 'collection', 'build', '--force', '--output-path', out, ROOT], env=env)
    (tarball,) = out.glob('vmfleet-kvm-*.tar.gz')
    return tarball
