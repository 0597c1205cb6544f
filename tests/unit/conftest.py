"""Fixtures of the packaging tests: the collection tarball, built once per session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(cmd, **kw):
    """Run a command, failing the test with its output if it fails."""
    kw.setdefault('cwd', ROOT)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    assert p.returncode == 0, '%s failed (%d):\n%s\n%s' % (' '.join(map(str, cmd)), p.returncode, p.stdout, p.stderr)
    return p.stdout


@pytest.fixture(scope='session')
def collection_tarball(tmp_path_factory):
    """`ansible-galaxy collection build` of the working tree, as a user would get it."""
    out = tmp_path_factory.mktemp('tarball')
    env = dict(os.environ, ANSIBLE_NOCOLOR='1')
    run([BIN / 'ansible-galaxy', 'collection', 'build', '--force', '--output-path', out, ROOT], env=env)
    (tarball,) = out.glob('vmfleet-kvm-*.tar.gz')
    return tarball
