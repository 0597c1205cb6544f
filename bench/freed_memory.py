"""Freed memory touched again: what the machine itself costs a destination QEMU (run by ``make bench``).

A migration's destination QEMU spends most of its time in the kernel zeroing the guest's new memory
(perf: clear_page_erms). These machines are VMs whose kernel hands freed memory back to the outer
hypervisor (free page reporting, from 2 s after the free on), and memory handed back costs far more to
touch again. This measures it: 2 GiB of anonymous memory (THP advised, as QEMU's guest RAM) touched once
per 2 MiB, freed, then touched again at once (the baseline: memory still held) and after waits of 1 to
16 s. bench/migrate.py starts each tool's migration equally long after the guest's last move because of it.

Usage: python bench/freed_memory.py [--gib 2] [--waits 0,1,2,4,8,16]
Writes bench/results/freed_memory.json and .md."""

import argparse
import mmap
import os
import sys
import time

import _results

HERE = os.path.dirname(os.path.abspath(__file__))


def touch(size):
    """Seconds to touch ``size`` bytes of fresh anonymous memory once per 2 MiB; the memory is freed after."""
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)
    t0 = time.monotonic()
    for off in range(0, size, 2 << 20):
        m[off] = 1
    took = time.monotonic() - t0
    m.close()
    return round(took, 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--gib', type=int, default=2)
    ap.add_argument('--waits', default='0,1,2,4,8,16', help='seconds between the free and the next touch')
    args = ap.parse_args()
    waits = [float(w) for w in args.waits.split(',') if w]
    size = args.gib << 30
    result = _results.header('freed_memory', gib=args.gib)
    rows = []
    with _results.recorded(result):
        rows.append(dict(wait_s=None, touch_s=touch(size)))  # whatever the memory was before the run
        for wait in waits:
            touch(size)  # this is the free the wait counts from
            time.sleep(wait)
            rows.append(dict(wait_s=wait, touch_s=touch(size)))
    result['rows'] = rows
    md = ['# Freed memory touched again', '', 'Run %s on %s (%d CPUs); %d GiB touched once per 2 MiB.' % (
        result['date'], result['host'], result['cpus'], args.gib), '',
        '| seconds after the free | touch s | GiB/s |', '|---|---|---|']
    for r in rows:
        when = 'first (before the run)' if r['wait_s'] is None else '%g' % r['wait_s']
        md.append('| %s | %.2f | %.1f |' % (when, r['touch_s'], args.gib / max(r['touch_s'], 0.001)))
    md += ['', __doc__.split('\n\n')[1].replace('\n', ' '), '']
    _results.write(os.path.join(HERE, 'results'), 'freed_memory', result, '\n'.join(md))
    print('\n'.join(md))
    return 1 if result['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
