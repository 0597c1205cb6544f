"""make test's premise: pytest-xdist keeps the tests of one xdist_group on one worker (the
simulated fleet is host-wide: two workers bringing it up at once fail; pytest 9.2 broke this
with xdist 3.8, hence the pin in requirements-dev.txt)."""

import re
import subprocess
import sys


def test_a_group_runs_on_one_worker(tmp_path):
    (tmp_path / 'pytest.ini').write_text('[pytest]\n')
    (tmp_path / 'test_grouped.py').write_text(
        'import pytest\n'
        'pytestmark = pytest.mark.xdist_group("fleet")\n'
        '@pytest.mark.parametrize("i", range(6))\n'
        'def test_one(i):\n'
        '    pass\n')
    r = subprocess.run([sys.executable, '-m', 'pytest', '-n', '2', '--dist', 'loadgroup', '-v', '-p', 'no:cacheprovider'],
                       cwd=str(tmp_path), capture_output=True, text=True, check=False, timeout=120)
    workers = re.findall(r'\[(gw\d+)\].*PASSED', r.stdout)
    assert r.returncode == 0 and len(workers) == 6, r.stdout[-3000:]
    assert len(set(workers)) == 1, r.stdout[-3000:]
