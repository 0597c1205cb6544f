"""Run tasks through a real ``ansible-playbook`` and hand back what each
registered. Tasks run with ignore_errors so a test can assert on failures."""

import json
import os
import subprocess
import sys
import tempfile

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)


def ansible_env():
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.collections'),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
        ANSIBLE_NOCOLOR='1',
        ANSIBLE_LOCALHOST_WARNING='false',
        ANSIBLE_INVENTORY_UNPARSED_WARNING='false',
        PATH=VENV_BIN + os.pathsep + env.get('PATH', ''),
    )
    return env


def run_tasks(tasks, check=False, diff=False, extra_args=(), timeout=900):
    """Run ``tasks`` (list of task dicts) on localhost; return (results, proc).

    ``results`` is a list: what each task registered, in order."""
    with tempfile.TemporaryDirectory(prefix='vmfleet-play-') as tmp:
        out = os.path.join(tmp, 'results.json')
        body = []
        for i, t in enumerate(tasks):
            t = dict(t)
            t.setdefault('name', 'task %d' % i)
            t['register'] = 'r%d' % i
            t['ignore_errors'] = True
            body.append(t)
        collect = '{{ [%s] | to_json }}' % ', '.join('r%d' % i for i in range(len(tasks)))
        body.append({'name': 'collect results', 'ansible.builtin.copy': {'content': collect, 'dest': out},
                     'check_mode': False, 'diff': False})
        play = [{'hosts': 'localhost', 'connection': 'local', 'gather_facts': False, 'tasks': body}]
        path = os.path.join(tmp, 'play.yml')
        with open(path, 'w') as f:
            yaml.safe_dump(play, f)
        argv = [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', 'localhost,', path]
        if check:
            argv.append('--check')
        if diff:
            argv.append('--diff')
        argv.extend(extra_args)
        proc = subprocess.run(argv, env=ansible_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
        if not os.path.exists(out):
            raise AssertionError('ansible-playbook did not finish:\n%s\n%s' % (proc.stdout[-4000:], proc.stderr[-4000:]))
        with open(out) as f:
            return json.load(f), proc


def run_one(task, **kw):
    results, proc = run_tasks([task], **kw)
    return results[0]


def ok(r):
    """The task succeeded; hand its result on."""
    assert not r.get('failed'), r.get('msg', r)
    return r


def failed(r, *words):
    """The task failed with a message naming every one of ``words``, and no traceback.
    (ansible-core 2.19 stamps '(traceback unavailable)' on any failure; ours must carry none.)"""
    assert r.get('failed') is True, r
    assert 'Traceback' not in str(r.get('exception', '')), r['exception']
    for w in words:
        assert w.lower() in r['msg'].lower(), (w, r['msg'])
    return r
