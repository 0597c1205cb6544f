"""Run tasks and playbooks through a real ``ansible-playbook`` and hand back
what each task registered. Tasks run with ignore_errors so a test can assert
on failures. Tests, benchmarks and the demo all run playbooks through here."""

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import yaml

from .guest import REPO

VENV_BIN = os.path.dirname(sys.executable)
ANSIBLE_PLAYBOOK = os.path.join(VENV_BIN, 'ansible-playbook')


def ansible_env(collections=None, env=None):
    """The environment of an ansible-playbook run on this checkout's collection (or the
    one under ``collections``, such as another version's, for a benchmark's baseline),
    with ``env`` on top."""
    base, env = env, dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=collections or os.path.join(REPO, '.collections'),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
        ANSIBLE_NOCOLOR='1',
        ANSIBLE_LOCALHOST_WARNING='false',
        ANSIBLE_INVENTORY_UNPARSED_WARNING='false',
        PATH=VENV_BIN + os.pathsep + env.get('PATH', ''),
    )
    env.update(base or {})
    return env


def write_play(tasks, path, hosts='localhost', **play):
    """A one-play playbook running ``tasks`` on ``hosts`` (no facts; local connection unless
    ``connection`` is given, None: the inventory's)."""
    play = dict(dict(connection='local'), **play)
    play.update(hosts=hosts, gather_facts=False, tasks=tasks)
    play = dict((k, v) for k, v in play.items() if v is not None)
    with open(path, 'w') as f:
        yaml.safe_dump([play], f)
    return path


def write_inventory(directory):
    """An inventory whose ``hypervisors`` group is this host, as the fleet playbooks expect."""
    path = os.path.join(str(directory), 'inventory.ini')
    with open(path, 'w') as f:
        f.write('[hypervisors]\nlocalhost ansible_connection=local\n')
    return path


def playbook_argv(playbook, inventory='localhost,', extra_vars=None, check=False, diff=False, extra_args=()):
    argv = [ANSIBLE_PLAYBOOK, '-i', str(inventory), str(playbook)]
    if extra_vars is not None:
        argv += ['-e', json.dumps(extra_vars)]
    if check:
        argv.append('--check')
    if diff:
        argv.append('--diff')
    return argv + list(extra_args)


def run_playbook(playbook, cwd=REPO, timeout=900, collections=None, env=None, **kw):
    """Run ``ansible-playbook`` to its end; the CompletedProcess (text output, not checked).
    ``kw`` as for playbook_argv."""
    return subprocess.run(playbook_argv(playbook, **kw), env=ansible_env(collections, env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_playbook(playbook, cwd=REPO, env=None, **kw):
    """Start ``ansible-playbook`` in its own session and return at once: the Popen,
    stdout and stderr together on ``proc.stdout``."""
    return subprocess.Popen(playbook_argv(playbook, **kw), env=ansible_env(env=env), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def write_task_play(tasks, directory, hosts='localhost'):
    """A play of ``tasks`` (list of task dicts) on ``hosts`` that registers what each task
    returns (with ignore_errors, so that a test asserts on failures) and hands the list to
    the controller in a file: (the play's path, the results' path) under ``directory``.
    Read the results with read_results once the play ended."""
    out = os.path.join(str(directory), 'results.json')
    if os.path.exists(out):
        os.unlink(out)
    body = []
    for i, t in enumerate(tasks):
        t = dict(t)
        t.setdefault('name', 'task %d' % i)
        t['register'] = 'r%d' % i
        t['ignore_errors'] = True
        body.append(t)
    collect = '{{ [%s] | to_json }}' % ', '.join('r%d' % i for i in range(len(tasks)))
    body.append({'name': 'collect results', 'ansible.builtin.copy': {'content': collect, 'dest': out, 'mode': '0600'},
                 'check_mode': False, 'diff': False})
    remote = hosts != 'localhost'
    if remote:  # the results file is the controller's
        body[-1].update(delegate_to='localhost', become=False, vars={'ansible_connection': 'local'})
    path = write_play(body, os.path.join(str(directory), 'play.yml'), hosts=hosts,
                      connection=None if remote else 'local')
    return path, out


def read_results(out, log=''):
    """What each task of a write_task_play play registered, in order (``log``: the run's
    output, shown if the play never got to hand them over)."""
    if not os.path.exists(out):
        raise AssertionError('ansible-playbook did not finish:\n%s' % log[-8000:])
    with open(out) as f:
        return json.load(f)


def run_tasks(tasks, check=False, diff=False, extra_args=(), timeout=900, inventory='localhost,', hosts='localhost'):
    """Run ``tasks`` (list of task dicts) on localhost, or on ``hosts`` of ``inventory`` as it
    connects to them; return (results, proc). The one way the tests run a play of tasks.

    ``results`` is a list: what each task registered, in order."""
    with tempfile.TemporaryDirectory(prefix='vmfleet-play-') as tmp:
        path, out = write_task_play(tasks, tmp, hosts)
        proc = run_playbook(path, inventory=inventory, check=check, diff=diff, extra_args=extra_args,
                            timeout=timeout)
        return read_results(out, proc.stdout + proc.stderr), proc


def start_tasks(tasks, directory, inventory='localhost,', hosts='localhost', **kw):
    """run_tasks started in the background (start_playbook): (the Popen, the results' path for
    read_results once it ended). The play lives in ``directory``."""
    path, out = write_task_play(tasks, directory, hosts)
    return start_playbook(path, inventory=inventory, **kw), out


def run_one(task, **kw):
    results, proc = run_tasks([task], **kw)
    return results[0]


def run_alone(task, directory, inventory, hosts, timeout=900, collections=None, env=None):
    """``task`` alone on ``hosts`` of ``inventory``, for a benchmark: (what it registered on the first
    host, the wall seconds of the whole ansible-playbook run). run_tasks hands results over with a
    task of its own (a module run on the controller, a second of wall time on a loaded host); here a
    debug task, which connects nowhere, prints them and the default callback's JSON is read back.
    Each run opens its own SSH connection (a control path directory of its own), as a playbook run
    now and then does: one within a minute of another would reuse that one's (ControlPersist), about
    1.5 s less on a loaded host, and runs measured side by side would differ by their order."""
    task = dict(task, register='alone', ignore_errors=True)
    play = write_play([task, {'name': 'show it', 'ansible.builtin.debug': {'var': 'alone'}}],
                      os.path.join(str(directory), 'alone.yml'), hosts=hosts, connection=None)
    env = dict(env or {}, ANSIBLE_STDOUT_CALLBACK='ansible.builtin.default', ANSIBLE_CALLBACK_RESULT_FORMAT='json')
    control = tempfile.mkdtemp(prefix='cp-', dir=str(directory))
    t0 = time.monotonic()
    proc = run_playbook(play, inventory=inventory, timeout=timeout, collections=collections, env=env,
                        extra_vars={'ansible_control_path_dir': control})
    wall = time.monotonic() - t0
    out = proc.stdout
    at = out.find('TASK [show it]')
    start = out.find('=> ', at) if at >= 0 else -1
    if start < 0:
        raise AssertionError('ansible-playbook did not show the result:\n%s' % (out + proc.stderr)[-8000:])
    shown, _end = json.JSONDecoder().raw_decode(out[start + 3:])
    return shown['alone'], wall


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


def descendants(pid):
    """PIDs below ``pid`` (the module runs in processes ansible may move to
    their own session, so killing the play's group is not enough)."""
    children = {}
    for st in glob.glob('/proc/[0-9]*/stat'):
        try:
            with open(st) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(st.split('/')[2]))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_play(proc):
    """SIGKILL the play and everything it started, the module first."""
    for pid in reversed(descendants(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
