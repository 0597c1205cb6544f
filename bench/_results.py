"""What every benchmark's results share (not a benchmark: run.py skips names starting with _): the
facts of the machine a run starts on, and its figures written under bench/results/, also when it
failed half-way."""

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback

from rig.accel import detect_accel


def header(benchmark, **more):
    """The start of a result: what ran, when, where, on which QEMU, the load it started under."""
    qemu = subprocess.run(['qemu-system-x86_64', '--version'], check=False, capture_output=True, text=True)
    return dict(benchmark=benchmark, date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), host=platform.node(),
                cpus=os.cpu_count(), accel=detect_accel(), load_avg_start=[round(x, 2) for x in os.getloadavg()],
                qemu=qemu.stdout.splitlines()[0], **more)


def write(directory, name, result, markdown=None):
    """``<directory>/<name>.json`` (and ``.md`` when given its text); the path without its suffix."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path + '.json', 'w') as f:
        json.dump(result, f, indent=1)
        f.write('\n')
    if markdown is not None:
        with open(path + '.md', 'w') as f:
            f.write(markdown)
    return path


@contextlib.contextmanager
def recorded(result):
    """Run the benchmark's body: what stopped it (an error, or Ctrl-C) goes into ``result['failed']``
    and is printed instead of raised, so that the figures measured so far are still written; the
    run's wall time and the load at its end are added."""
    t0 = time.monotonic()
    result['failed'] = None
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:  # write what was measured, then fail
        result['failed'] = '%s: %s' % (type(e).__name__, e)
        print('FAILED: ' + result['failed'], file=sys.stderr)
    finally:
        result.update(load_avg_end=[round(x, 2) for x in os.getloadavg()], wall_s=round(time.monotonic() - t0, 1))


@contextlib.contextmanager
def row_of(rows, row):
    """The body measures ``row``: what it raises is recorded in the row, not raised (a benchmark
    reports what it could measure); the row then joins ``rows`` and is printed."""
    try:
        yield row
    except Exception as e:  # record it and go on
        row['error'] = '%s: %s' % (type(e).__name__, str(e)[-1500:])
        print(traceback.format_exc(), file=sys.stderr)
    finally:
        rows.append(row)
        print('  %s' % json.dumps(row), flush=True)
