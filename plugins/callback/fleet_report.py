# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: fleet_report
type: notification
short_description: One report on the controller for a whole fleet run, every host and VM in it
version_added: 1.0.0
description:
  - Collects what the collection's fleet roles published for each host (the records set_stats carries,
    C(vmfleet_<role>)), each host that was unreachable or failed and why, and each host the run never reached,
    over every play and C(serial) batch of the run.
  - At the end of the run it writes one JSON file and a short human-readable summary next to it
    (for each host what was done and how long it took; for each VM its outcome, its time, and how long the guest was paused),
    and shows the summary.
  - It writes an HTML page next to them as well, one self-contained file that fetches nothing (no network, no CDN) with a table
    of hosts and VMs that sorts and filters (failed and unreachable first), a timeline per host with a bar for each VM's work
    and its guest pause, and the totals (hosts, VMs, outcomes, wall time, sum and longest guest pause).
  - Each hypervisor keeps its own report as well (the roles' C(report_dir)); this one is the fleet's.
  - Enable it with C(ANSIBLE_CALLBACKS_ENABLED=vmfleet.kvm.fleet_report) (or C(callbacks_enabled) in
    C(ansible.cfg)). AWX job templates have no environment field, so under AWX put C(callbacks_enabled) in the
    project's C(ansible.cfg), or the variable in AWX's global "Extra Environment Variables" setting. Its files are
    written inside the job's execution environment and go with it; under AWX read the summary in the job's output
    and each VM's record in the job's artifacts (C(set_stats)).
author:
  - vmfleet.kvm contributors (@vmfleet)
requirements:
  - enabled in C(callbacks_enabled)
options:
  report_dir:
    description:
      - Directory the reports are written to, created with mode 0700; each run writes
        C(<playbook>-<UTC time>.json), C(.txt) and C(.html) there, mode 0600.
    type: path
    default: ~/.ansible/vmfleet/reports
    env:
      - name: VMFLEET_REPORT_DIR
    ini:
      - section: vmfleet
        key: report_dir
'''

import io
import json
import os
import time

from ansible.plugins.callback import CallbackBase
from ansible_collections.vmfleet.kvm.plugins.plugin_utils.fleet_report_html import render as render_html

PREFIX = 'vmfleet_'


def _paused_ms(record):
    """How long the guest was paused, as far as the workflow measured it."""
    for key in ('paused_ms', 'downtime_ms'):
        if record.get(key) is not None:
            return record[key]
    moved = [m.get('paused_ms') for m in record.get('moved') or [] if m.get('paused_ms') is not None]
    return sum(moved) if moved else None


def _vm_line(r):
    bits = ['    %-24s %-8s' % (r.get('vm'), r.get('status'))]
    if r.get('changed'):
        bits.append('changed')
    if r.get('wall_s') is not None:
        bits.append('%.1f s' % r['wall_s'])
    if r.get('paused_ms') is not None:
        bits.append('paused %d ms' % r['paused_ms'])
    if r.get('msg') and r.get('status') != 'ok':
        bits.append('- %s' % r['msg'])
    return ' '.join(bits)


def _write_private(path, text):
    """``text`` to ``path``, mode 0600 from its creation; utf-8 whatever the controller's locale
    (the page says it is, and VM names need not be ASCII)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with io.open(fd, 'w', encoding='utf-8') as f:
        f.write(text)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'notification'
    CALLBACK_NAME = 'vmfleet.kvm.fleet_report'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.playbook = None
        self.started = time.time()
        self.hosts = {}

    def _host(self, name):
        return self.hosts.setdefault(name, dict(status='not run', workflows=[], vms=[]))

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(playbook._file_name)
        self.started = time.time()

    def v2_playbook_on_play_start(self, play):
        # the hosts a play targets, so that a host no batch reached is still in the report
        try:
            # every batch's hosts, not only this batch's (serial restricts the inventory to it)
            for h in play._variable_manager._inventory.get_hosts(play.hosts, ignore_restrictions=True):
                self._host(h.get_name())
        except Exception:  # the inventory's internals are not an API: the report does without
            pass

    def v2_runner_on_ok(self, result):
        host = self._host(result._host.get_name())
        if host['status'] == 'not run':
            host['status'] = 'ok'
        data = (result._result.get('ansible_stats') or {}).get('data') or {}
        for key, per_host in data.items():
            if not key.startswith(PREFIX) or not isinstance(per_host, dict):
                continue
            for name, report in per_host.items():
                self._add(name, key[len(PREFIX):], report)

    def _add(self, name, workflow, report):
        host = self._host(name)
        vms = []
        for r in report.get('vms') or []:
            vm = dict((k, r.get(k)) for k in ('vm', 'backend', 'status', 'changed', 'msg', 'wall_s',
                                              'state_before', 'state_after', 'started_at', 'ended_at'))
            vm['paused_ms'] = _paused_ms(r)
            vm['workflow'] = workflow
            vms.append(vm)
        host['workflows'].append(dict(workflow=workflow, duration_s=report.get('duration_s'),
                                      changed=report.get('changed') or [],
                                      failed=[r.get('vm') for r in report.get('failed') or []]))
        host['vms'].extend(vms)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if ignore_errors:
            return
        host = self._host(result._host.get_name())
        host.update(status='failed', msg=result._result.get('msg', 'failed'), task=result._task.get_name())

    def v2_runner_on_unreachable(self, result):
        host = self._host(result._host.get_name())
        host.update(status='unreachable', msg=result._result.get('msg', 'unreachable'), task=result._task.get_name())

    def v2_playbook_on_stats(self, stats):
        def count(items, key, value):
            return len([i for i in items if i.get(key) == value])

        ended = time.time()
        vms = [v for h in self.hosts.values() for v in h['vms']]
        paused = [v['paused_ms'] for v in vms if v.get('paused_ms') is not None]
        report = dict(
            playbook=self.playbook, started=self.started, ended=ended, duration_s=round(ended - self.started, 3),
            hosts=self.hosts,
            totals=dict(hosts=len(self.hosts),
                        **dict(('hosts_' + s.replace(' ', '_'), count(self.hosts.values(), 'status', s))
                               for s in ('ok', 'failed', 'unreachable', 'not run')),
                        vms=len(vms), vms_ok=count(vms, 'status', 'ok'), vms_failed=count(vms, 'status', 'failed'),
                        vms_skipped=count(vms, 'status', 'skipped'), vms_changed=count(vms, 'changed', True),
                        paused_ms_sum=round(sum(paused), 3) if paused else None,
                        paused_ms_max=max(paused) if paused else None))
        summary = self._summary(report)
        try:
            path, page = self._write(report, summary)
        except (IOError, OSError) as e:
            self._display.warning('vmfleet.kvm.fleet_report: cannot write the report: %s' % e)
            path = page = None
        self._display.display(summary + ('vmfleet report: %s\n' % path if path else '')
                              + ('vmfleet report page: %s\n' % page if page else ''))

    def _summary(self, report):
        t = report['totals']
        started = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(report['started']))
        lines = ['vmfleet report: %s, %s UTC, %.1f s' % (report['playbook'], started, report['duration_s']),
                 'hosts: %d ok, %d failed, %d unreachable, %d not run; VMs: %d ok (%d changed), %d failed, %d skipped'
                 % (t['hosts_ok'], t['hosts_failed'], t['hosts_unreachable'], t['hosts_not_run'],
                    t['vms_ok'], t['vms_changed'], t['vms_failed'], t['vms_skipped'])]
        for name in sorted(report['hosts']):
            h = report['hosts'][name]
            took = ', '.join('%s %.1f s' % (w['workflow'], w['duration_s']) for w in h['workflows']
                             if w.get('duration_s') is not None)
            line = '  %-16s %-11s %s' % (name, h['status'], took)
            if h['status'] != 'ok' and h.get('msg'):
                line += ' - %s' % ' '.join(str(h['msg']).split())[:300]
            lines.append(line.rstrip())
            lines.extend(_vm_line(v) for v in h['vms'])
        return '\n'.join(lines) + '\n'

    def _write(self, report, summary):
        directory = os.path.expanduser(self.get_option('report_dir'))
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        stem = os.path.join(directory, '%s-%s' % (os.path.splitext(report['playbook'] or 'run')[0],
                                                  time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(report['started']))))
        for suffix, text in (('.json', json.dumps(report, indent=1, sort_keys=True) + '\n'), ('.txt', summary)):
            _write_private(stem + suffix, text)
        try:
            _write_private(stem + '.html', render_html(report))
        except (IOError, OSError) as e:
            self._display.warning('vmfleet.kvm.fleet_report: cannot write the HTML report: %s' % e)
            return stem + '.json', None
        return stem + '.json', stem + '.html'
