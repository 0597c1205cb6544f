"""Paths and a checked command runner for the packaging tests (tests/unit). A module
of its own: two conftest.py files share one module name, so tests import nothing
from either."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(cmd, **kw):
    """Run a command, failing the test with its output if it fails."""
    kw.setdefault('cwd', ROOT)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    assert p.returncode == 0, '%s failed (%d):\n%s\n%s' % (' '.join(map(str, cmd)), p.returncode, p.stdout, p.stderr)
    return p.stdout
