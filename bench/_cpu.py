"""Where the machine's CPU went during a window: every thread's user+system time read from /proc each
``interval`` seconds by a thread, and the difference between the samples around the window grouped by host
(a simulated hypervisor's network namespace, else 'root'), process and thread name. A sample costs a few ms
of CPU; it is the same for every tool measured."""

import os
import re
import threading
import time

TICK = float(os.sysconf('SC_CLK_TCK'))
# the kernel's memory work that lands in a faulting thread's system time
VMSTAT = ('pgfault', 'thp_fault_alloc', 'thp_fault_fallback', 'compact_stall', 'compact_fail', 'compact_success',
          'allocstall_normal', 'pgscan_direct', 'pgsteal_direct', 'pgalloc_normal', 'pgfree', 'nr_free_pages',
          'thp_collapse_alloc', 'pgmajfault')


def _threads():
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            net = os.readlink('/proc/%s/ns/net' % pid)
            with open('/proc/%s/comm' % pid) as f:
                comm = f.read().strip()
            tids = os.listdir('/proc/%s/task' % pid)
            with open('/proc/%s/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        # children that exited and were waited for (a module's Python, an ssh) count to their parent
        out[(pid, 'reaped')] = (net, comm, 'reaped', int(fields[13]) + int(fields[14]), int(fields[14]), 0)
        for tid in tids:
            try:
                with open('/proc/%s/task/%s/stat' % (pid, tid)) as f:
                    head, rest = f.read().rsplit(')', 1)
            except OSError:
                continue
            fields = rest.split()
            name = head.split('(', 1)[1]
            try:
                with open('/proc/%s/task/%s/schedstat' % (pid, tid)) as f:
                    waited = int(f.read().split()[1])  # ns runnable but not running
            except (OSError, IndexError, ValueError):
                waited = 0
            out[(pid, tid)] = (net, comm, name, int(fields[11]) + int(fields[12]), int(fields[12]), waited)
    with open('/proc/vmstat') as f:
        out['vmstat'] = dict((k, int(v)) for k, v in (line.split() for line in f))
    return out


class CpuUse:
    """``with CpuUse(hosts) as c: ...`` then ``c.seconds(t0, t1)`` (time.monotonic() of the window):
    {'hv1 qemu-system-x86 CPU N/TCG': s, ...}."""

    def __init__(self, hosts=(), interval=0.5):
        self.names = {}
        for h in hosts:
            try:
                self.names[os.readlink('/proc/%d/ns/net' % h.holder)] = h.name
            except OSError:
                pass
        self.interval = interval
        self.samples = []
        self.stop = threading.Event()

    def _run(self):
        while True:
            self.samples.append((time.monotonic(), _threads()))
            if self.stop.wait(self.interval):
                break
        self.samples.append((time.monotonic(), _threads()))

    def __enter__(self):
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join()

    def seconds(self, t0=None, t1=None, least=0.05):
        """CPU seconds per group from the last sample at or before t0 to the first at or after t1 (the
        whole run without them), as [total, system, waited runnable]; a thread that ended in between
        counts to its last sample. Then the kernel's memory counters' change, and the window covered."""
        first = max([i for i, s in enumerate(self.samples) if t0 is None or s[0] <= t0] or [0])
        last = min([i for i, s in enumerate(self.samples) if t1 is None or s[0] >= t1] or [len(self.samples) - 1])
        window = self.samples[first:last + 1]
        start, seen = window[0][1], {}
        for _t, sample in window:
            seen.update(sample)
        groups = {}
        vm0, vm1 = start['vmstat'], window[-1][1]['vmstat']
        vmstat = dict((k, vm1[k] - vm0.get(k, 0)) for k in VMSTAT if k in vm1)
        for key, val in seen.items():
            if key == 'vmstat':
                continue
            net, comm, name, ticks, sys_ticks, waited = val
            was = start.get(key, (None, None, None, 0, 0, 0))
            used, used_sys, wait = ticks - was[3], sys_ticks - was[4], waited - was[5]
            if used <= 0:
                continue
            thread = re.sub(r'\d+', 'N', name) if name != comm else ''
            label = ' '.join(x for x in (self.names.get(net, 'root'), comm, thread) if x)
            g = groups.setdefault(label, [0.0, 0.0, 0.0])
            g[0] += used / TICK
            g[1] += used_sys / TICK
            g[2] += wait / 1e9
        out = dict(sorted(((k, [round(x, 2) for x in v]) for k, v in groups.items() if v[0] >= least),
                          key=lambda kv: -kv[1][0]))
        return out, vmstat, round(window[-1][0] - window[0][0], 2)
