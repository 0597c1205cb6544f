"""``make bench``: run every benchmark in bench/ (each writes bench/results/<name>.json).

Benchmarks are never part of the tests. Run one alone with ``python bench/<name>.py``;
``python bench/run.py NAME ...`` runs only those."""

import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(names):
    scripts = sorted(p for p in glob.glob(os.path.join(HERE, '*.py')) if os.path.basename(p) != 'run.py' and not os.path.basename(p).startswith('_'))
    if names:
        scripts = [p for p in scripts if os.path.splitext(os.path.basename(p))[0] in names]
    failed = []
    for path in scripts:
        print('== %s' % os.path.basename(path), flush=True)
        if subprocess.run([sys.executable, path], check=False).returncode:
            failed.append(os.path.basename(path))
    if failed:
        sys.exit('benchmarks failed: %s' % ', '.join(failed))


if __name__ == '__main__':
    main(sys.argv[1:])
