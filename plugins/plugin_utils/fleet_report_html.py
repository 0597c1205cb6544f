# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report as one self-contained HTML page: the run's record as JSON
in a data block, and the CSS and script that draw it (a table that sorts and
filters, a timeline per host, the totals). Nothing is fetched: the page must
open from a file on a machine with no network, so no CDN and no external font.

Every string of the run (VM names, messages) reaches the page only inside the
JSON block, escaped so that it cannot close the block, and the script puts it
in the page with textContent, never as markup. The page's Content Security
Policy allows only this script and this style (by hash) and no load at all,
so a string that got through anyway would still not run."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import base64
import hashlib
import json

CSS = u"""
:root { --ok: #2e7d32; --failed: #c62828; --unreachable: #6a1b9a; --skipped: #757575; --notrun: #9e9e9e;
        --bar: #1565c0; --pause: #ef6c00; --line: #ddd; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 1.5em 0 .5em; }
.sub { color: #555; margin-bottom: 1em; }
#totals { display: flex; flex-wrap: wrap; gap: .6em; }
#totals div { border: 1px solid var(--line); border-radius: 4px; padding: .4em .8em; min-width: 7em; }
#totals b { display: block; font-size: 1.3em; }
#controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin-bottom: .6em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: .25em .5em; text-align: left; vertical-align: top; }
th { cursor: pointer; user-select: none; background: #f5f5f5; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.host td { font-weight: 600; background: #fafafa; }
td.msg { max-width: 40em; overflow-wrap: anywhere; }
.outcome { font-weight: 600; }
.o-ok { color: var(--ok); } .o-failed { color: var(--failed); } .o-unreachable { color: var(--unreachable); }
.o-skipped { color: var(--skipped); } .o-not-run { color: var(--notrun); }
.host-timeline { margin-bottom: 1em; }
.host-timeline summary { cursor: pointer; margin: .3em 0; }
.host-timeline summary .name { font-weight: 600; }
.lane { display: flex; align-items: center; height: 1.5em; }
.lane .label { width: 16em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; padding-right: .5em; }
.track { position: relative; flex: 1; height: 1.1em; background: #f3f3f3; }
.bar { position: absolute; top: 0; height: .75em; min-width: 2px; background: var(--bar); }
.bar.failed { background: var(--failed); } .bar.skipped { background: var(--skipped); }
.bar.untimed { background: repeating-linear-gradient(45deg, #bbb 0 3px, #eee 3px 6px); }
.pause { position: absolute; bottom: 0; height: .3em; min-width: 2px; background: var(--pause); }
.axis { display: flex; flex: 1; justify-content: space-between; color: #666; font-size: .85em; }
.legend span { display: inline-block; width: 1em; height: .7em; margin: 0 .3em 0 1em; vertical-align: middle; }
.legend .k-ok { background: var(--bar); } .legend .k-failed { background: var(--failed); }
.legend .k-pause { background: var(--pause); }
.note { color: #555; }
"""

SCRIPT = u"""
(function () {
  'use strict';
  var report = JSON.parse(document.getElementById('fleet-data').textContent);
  var hosts = report.hosts || {};
  var names = Object.keys(hosts).sort();

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function num(v, digits) { return (v === null || v === undefined) ? '' : Number(v).toFixed(digits); }
  function slug(s) { return String(s).replace(/[^a-z]+/g, '-'); }
  var RANK = {'failed': 0, 'unreachable': 0, 'not run': 1, 'skipped': 2, 'ok': 3};
  function failedRank(o) { return RANK.hasOwnProperty(o) ? RANK[o] : 1; }

  // -- header and totals --
  var started = new Date(report.started * 1000);
  document.getElementById('title').textContent = 'vmfleet report: ' + (report.playbook || 'run');
  document.getElementById('when').textContent = 'started ' + started.toISOString().replace('T', ' ').slice(0, 19) +
      ' UTC, ' + num(report.duration_s, 1) + ' s';
  var t = report.totals || {};
  var TOTALS = [
    ['hosts', 'hosts', t.hosts], ['hosts-ok', 'hosts ok', t.hosts_ok], ['hosts-failed', 'hosts failed', t.hosts_failed],
    ['hosts-unreachable', 'hosts unreachable', t.hosts_unreachable], ['hosts-not-run', 'hosts not run', t.hosts_not_run],
    ['vms', 'VMs', t.vms], ['vms-ok', 'VMs ok', t.vms_ok], ['vms-failed', 'VMs failed', t.vms_failed],
    ['vms-skipped', 'VMs skipped', t.vms_skipped], ['vms-changed', 'VMs changed', t.vms_changed],
    ['wall', 'total wall time (s)', num(report.duration_s, 1)],
    ['pause-sum', 'guest pause, sum (ms)', num(t.paused_ms_sum, 1)],
    ['pause-max', 'guest pause, max (ms)', num(t.paused_ms_max, 1)]];
  var box = document.getElementById('totals');
  TOTALS.forEach(function (x) {
    var d = el('div');
    d.setAttribute('data-total', x[0]);
    var b = el('b', (x[2] === undefined || x[2] === null || x[2] === '') ? '-' : x[2]);
    d.appendChild(b);
    d.appendChild(el('span', x[1]));
    box.appendChild(d);
  });

  // -- the table: a row per host, a row per VM --
  var rows = [];
  names.forEach(function (name) {
    var h = hosts[name];
    var took = null;
    (h.workflows || []).forEach(function (w) {
      if (w.duration_s !== null && w.duration_s !== undefined) { took = (took || 0) + Number(w.duration_s); }
    });
    rows.push({kind: 'host', host: name, vm: '', workflow: (h.workflows || []).map(function (w) {
      return w.workflow; }).join(', '), outcome: h.status, changed: '', time: took, pause: null,
      msg: h.status !== 'ok' ? (h.msg || '') + (h.task ? ' (task: ' + h.task + ')' : '') : ''});
    (h.vms || []).forEach(function (v) {
      rows.push({kind: 'vm', host: name, vm: v.vm, workflow: v.workflow || '', outcome: v.status || '',
        changed: v.changed ? 'yes' : '', time: v.wall_s, pause: v.paused_ms, msg: v.msg || ''});
    });
  });
  var COLUMNS = [['host', 'Host'], ['vm', 'VM'], ['workflow', 'Workflow'], ['outcome', 'Outcome'],
    ['changed', 'Changed'], ['time', 'Time (s)'], ['pause', 'Guest pause (ms)'], ['msg', 'Message']];
  var NUMERIC = {time: 1, pause: 1};
  var sortKey = null, sortDir = 1;
  // a fleet of a thousand hosts has tens of thousands of rows: draw the first ones, the rest on demand
  var ROW_LIMIT = 1000, showAll = false;

  function cmpValues(a, b, key) {
    var x = a[key], y = b[key];
    if (NUMERIC[key]) {
      x = (x === null || x === undefined) ? -Infinity : Number(x);
      y = (y === null || y === undefined) ? -Infinity : Number(y);
      return x < y ? -1 : x > y ? 1 : 0;
    }
    // plain comparison, not localeCompare: tens of thousands of rows are sorted at each click
    x = String(x); y = String(y);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  function defaultOrder(a, b) {
    // failed first, then by outcome, the longest time, the longest pause; the host row before its VMs
    return (failedRank(a.outcome) - failedRank(b.outcome)) || cmpValues(a, b, 'outcome') ||
        -cmpValues(a, b, 'time') || -cmpValues(a, b, 'pause') || cmpValues(a, b, 'host') ||
        (a.kind === b.kind ? 0 : a.kind === 'host' ? -1 : 1) || cmpValues(a, b, 'vm');
  }

  var thead = document.querySelector('#rows thead tr');
  COLUMNS.forEach(function (c) {
    var th = el('th', c[1]);
    th.setAttribute('data-key', c[0]);
    th.setAttribute('title', 'sort by ' + c[1].toLowerCase());
    th.addEventListener('click', function () {
      if (sortKey === c[0]) { sortDir = -sortDir; } else { sortKey = c[0]; sortDir = 1; }
      draw();
    });
    thead.appendChild(th);
  });

  var outcomes = {};
  rows.forEach(function (r) { outcomes[r.outcome] = 1; });
  var select = document.getElementById('outcome');
  Object.keys(outcomes).sort().forEach(function (o) {
    var opt = el('option', o);
    opt.value = o;
    select.appendChild(opt);
  });
  var failedOnly = document.getElementById('failed-only');
  var text = document.getElementById('text');
  [failedOnly, select, text].forEach(function (c) {
    c.addEventListener('input', draw);
    c.addEventListener('change', draw);
  });

  function shown(r) {
    if (failedOnly.checked && failedRank(r.outcome) !== 0) { return false; }
    if (select.value && r.outcome !== select.value) { return false; }
    var q = text.value.trim().toLowerCase();
    if (q && [r.host, r.vm, r.workflow, r.outcome, r.msg].join(' ').toLowerCase().indexOf(q) < 0) { return false; }
    return true;
  }

  function draw() {
    var list = rows.filter(shown);
    list.sort(sortKey ? function (a, b) { return sortDir * cmpValues(a, b, sortKey) || defaultOrder(a, b); }
                      : defaultOrder);
    Array.prototype.forEach.call(thead.children, function (th) {
      if (th.getAttribute('data-key') === sortKey) {
        th.setAttribute('aria-sort', sortDir > 0 ? 'ascending' : 'descending');
      } else {
        th.removeAttribute('aria-sort');
      }
    });
    var body = document.querySelector('#rows tbody');
    while (body.firstChild) { body.removeChild(body.firstChild); }
    list.slice(0, showAll ? list.length : ROW_LIMIT).forEach(function (r) {
      var tr = el('tr', null, r.kind);
      tr.setAttribute('data-kind', r.kind);
      tr.setAttribute('data-host', r.host);
      tr.setAttribute('data-vm', r.vm);
      tr.setAttribute('data-outcome', r.outcome);
      tr.appendChild(el('td', r.host));
      tr.appendChild(el('td', r.kind === 'host' ? '(host)' : r.vm));
      tr.appendChild(el('td', r.workflow));
      tr.appendChild(el('td', r.outcome, 'outcome o-' + slug(r.outcome)));
      tr.appendChild(el('td', r.changed));
      tr.appendChild(el('td', num(r.time, 1), 'num'));
      tr.appendChild(el('td', num(r.pause, 1), 'num'));
      tr.appendChild(el('td', r.msg, 'msg'));
      body.appendChild(tr);
    });
    document.getElementById('count').textContent = list.length + ' of ' + rows.length + ' rows' +
        (list.length > ROW_LIMIT && !showAll ? ', the first ' + ROW_LIMIT + ' shown' : '');
    document.getElementById('show-all').hidden = showAll || list.length <= ROW_LIMIT;
  }
  document.getElementById('show-all').addEventListener('click', function () { showAll = true; draw(); });
  draw();

  // -- the timeline: a lane per VM under its host, on the run's time scale --
  var t0 = report.started, t1 = report.ended;
  names.forEach(function (name) {
    (hosts[name].vms || []).forEach(function (v) {
      if (v.started_at) { t0 = Math.min(t0, v.started_at); }
      if (v.ended_at) { t1 = Math.max(t1, v.ended_at); }
    });
  });
  var span = Math.max(t1 - t0, 0.001);
  function pct(x) { return Math.max(0, Math.min(100, x * 100)) + '%'; }
  var timeline = document.getElementById('timeline');
  var ruler = el('div', null, 'lane');
  var axis = el('div', null, 'axis');
  axis.appendChild(el('span', '0 s'));
  axis.appendChild(el('span', num(span / 2, 1) + ' s'));
  axis.appendChild(el('span', num(span, 1) + ' s'));
  ruler.appendChild(el('div', null, 'label'));
  ruler.appendChild(axis);
  timeline.appendChild(ruler);
  // every host's lanes drawn at once for a small fleet; for a large one, those of the hosts that failed,
  // the others when opened (a lane per VM of a thousand hosts is more than a browser lays out quickly)
  var vmCount = 0;
  names.forEach(function (name) { vmCount += (hosts[name].vms || []).length; });
  names.forEach(function (name) {
    var h = hosts[name];
    var sec = el('details', null, 'host-timeline');
    sec.setAttribute('data-host', name);
    var head = el('summary');
    head.appendChild(el('span', name, 'name'));
    head.appendChild(el('span', ' - ' + h.status, 'outcome o-' + slug(h.status)));
    head.appendChild(el('span', ' (' + (h.vms || []).length + ' VMs)', 'note'));
    sec.appendChild(head);
    var drawn = false;
    var lanes = function () {
      if (drawn) { return; }
      drawn = true;
      if (!(h.vms || []).length) {
        sec.appendChild(el('div', 'no VM work recorded' + (h.msg ? ': ' + h.msg : ''), 'note'));
      }
      (h.vms || []).forEach(function (v) { sec.appendChild(lane(v)); });
    };
    sec.addEventListener('toggle', function () { if (sec.open) { lanes(); } });
    if (vmCount <= 2000 || h.status !== 'ok') {
      sec.open = true;
      lanes();
    }
    timeline.appendChild(sec);
  });

  // one VM's lane: its name, the bar of its work, the bar of its guest pause
  function lane(v) {
    var row = el('div', null, 'lane');
    row.setAttribute('data-vm', v.vm);
    var label = el('div', v.vm, 'label');
    label.setAttribute('title', String(v.vm));
    row.appendChild(label);
    var track = el('div', null, 'track');
    var bar = el('div', null, 'bar ' + slug(v.status || ''));
    var tip = v.vm + ': ' + (v.workflow || '') + ' ' + (v.status || '');
    if (v.started_at && v.ended_at) {
      bar.style.left = pct((v.started_at - t0) / span);
      bar.style.width = pct((v.ended_at - v.started_at) / span);
      tip += ', ' + num(v.ended_at - v.started_at, 2) + ' s from ' + num(v.started_at - t0, 2) + ' s';
    } else {
      // an older record, or one an earlier run settled: no times, so a marker at the start
      bar.className += ' untimed';
      bar.style.left = '0';
      bar.style.width = '4px';
      tip += ', no start and end recorded';
    }
    if (v.paused_ms !== null && v.paused_ms !== undefined) {
      tip += ', guest paused ' + num(v.paused_ms, 1) + ' ms';
      var pause = el('div', null, 'pause');
      pause.style.left = bar.style.left;
      pause.style.width = pct(v.paused_ms / 1000 / span);
      pause.setAttribute('title', 'guest paused ' + num(v.paused_ms, 1) + ' ms');
      track.appendChild(pause);
    }
    bar.setAttribute('title', tip);
    track.appendChild(bar);
    row.appendChild(track);
    return row;
  }
}());
"""

PAGE = u"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'sha256-{css_hash}'; \
script-src 'sha256-{script_hash}'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vmfleet report</title>
<style>{css}</style>
</head>
<body>
<h1 id="title">vmfleet report</h1>
<div class="sub" id="when"></div>
<h2>Totals</h2>
<div id="totals"></div>
<h2>Hosts and VMs</h2>
<div id="controls">
<label><input type="checkbox" id="failed-only"> failed and unreachable only</label>
<label>outcome <select id="outcome"><option value="">any</option></select></label>
<label>filter <input type="search" id="text" placeholder="host, VM or message"></label>
<span id="count"></span> <button type="button" id="show-all" hidden>show all rows</button>
</div>
<table id="rows"><thead><tr></tr></thead><tbody></tbody></table>
<h2>Timeline</h2>
<div class="legend note">each VM's work:<span class="k-ok"></span>ok<span class="k-failed"></span>failed
<span class="k-pause"></span>its guest pause, drawn to scale from the start of the VM's work (the record
keeps how long the guest was paused, not when)</div>
<div id="timeline"></div>
<script type="application/json" id="fleet-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""


def _sha256(text):
    return base64.b64encode(hashlib.sha256(text.encode('utf-8')).digest()).decode('ascii')


def embed_json(data):
    """``data`` as JSON that is inert inside an HTML <script> block: no ``<``, ``>`` or ``&`` can
    close the block or open a comment, and the two line separators JavaScript once refused are escaped."""
    text = json.dumps(data, sort_keys=True, default=str)
    for raw, escaped in ((u'<', u'\\u003c'), (u'>', u'\\u003e'), (u'&', u'\\u0026'),
                         (u'\u2028', u'\\u2028'), (u'\u2029', u'\\u2029')):
        text = text.replace(raw, escaped)
    return text


def render(report):
    """The whole page for one run's report (the dict the callback writes as JSON)."""
    return PAGE.format(css=CSS, script=SCRIPT, data=embed_json(report), css_hash=_sha256(CSS),
                       script_hash=_sha256(SCRIPT))
