"""playbooks/surveys/<playbook>.json: an AWX survey per playbook, in AWX's survey_spec format,
asking for exactly the extra vars the playbook reads, and for every one it cannot run without."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from rig.packaging import BIN, run

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted(p.stem for p in (ROOT / 'playbooks').glob('*.yml'))
# AWX's question types (awx/main/models/mixins.py, SurveyJobTemplateMixin)
AWX_TYPES = {'text', 'textarea', 'password', 'integer', 'float', 'multiplechoice', 'multiselect'}
# the extra vars the playbooks split with vmfleet.kvm.fleet_list: one per line in a textarea
LISTS = {'vmfleet_vms', 'vmfleet_exclude', 'vmfleet_qmp_sockets'}
# `vmfleet_x`, and whether the use gives it a real default or asks whether it is defined
# (`| default(undef(...))` is no default: the run fails)
USE = re.compile(r'\b(vmfleet_[a-z0-9_]+)\b(\s*\|\s*default\((?!\s*undef)|\s+is\s+(?:not\s+)?defined)?')


def _strings(node):
    """Every string in the loaded playbook (values, so YAML comments do not count as reads)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def playbook_vars(playbook):
    """{var: required} for the vmfleet_* extra vars the playbook reads."""
    found = {}
    with open(ROOT / 'playbooks' / ('%s.yml' % playbook)) as f:
        plays = yaml.safe_load(f)
    for text in _strings(plays):
        # a string literal (an undef hint's advice) names vars it does not read
        text = re.sub(r"'[^']*'|\"[^\"]*\"", "''", text)
        for m in USE.finditer(text):
            found[m.group(1)] = found.get(m.group(1), False) or not m.group(2)
    return found


def survey(playbook):
    with open(ROOT / 'playbooks' / 'surveys' / ('%s.json' % playbook)) as f:
        return json.load(f)


def extra_vars_spec():
    """The options of fleet_common's extra_vars entry point, which the playbooks check the extra vars with."""
    with open(ROOT / 'roles' / 'fleet_common' / 'meta' / 'argument_specs.yml') as f:
        specs = yaml.safe_load(f)['argument_specs']
    return (specs.get('extra_vars') or {}).get('options') or {}


def test_every_playbook_has_a_survey_and_every_survey_a_playbook():
    assert PLAYBOOKS, 'no playbooks found'
    surveys = sorted(p.stem for p in (ROOT / 'playbooks' / 'surveys').glob('*.json'))
    assert surveys == PLAYBOOKS


@pytest.mark.parametrize('playbook', PLAYBOOKS)
def test_survey_is_a_valid_awx_survey_spec(playbook):
    s = survey(playbook)
    assert isinstance(s.get('name'), str) and s['name']
    assert isinstance(s.get('description'), str)
    assert isinstance(s.get('spec'), list) and s['spec']
    variables = [q.get('variable') for q in s['spec']]
    assert len(variables) == len(set(variables)), 'a variable asked twice'
    for q in s['spec']:
        where = '%s: %s' % (playbook, q.get('variable'))
        for key in ('question_name', 'variable', 'type', 'required', 'default'):
            assert key in q, '%s lacks %s' % (where, key)
        assert isinstance(q['question_name'], str) and q['question_name'], where
        assert re.match(r'^[a-zA-Z_][a-zA-Z0-9_]*$', q['variable']), where
        assert q['type'] in AWX_TYPES, where
        assert isinstance(q['required'], bool), where
        if q['type'] in ('multiplechoice', 'multiselect'):
            assert isinstance(q.get('choices'), list) and q['choices'], '%s: no choices' % where
            assert all(isinstance(c, str) and c for c in q['choices']), where
            assert q['default'] == '' or q['default'] in q['choices'], '%s: default not a choice' % where
        else:
            assert 'choices' not in q, where
        if q['type'] == 'integer':
            assert isinstance(q['default'], int) and not isinstance(q['default'], bool), where
            lo, hi = q.get('min', q['default']), q.get('max', q['default'])
            assert lo <= q['default'] <= hi, '%s: default outside min/max' % where
        if q['type'] in ('text', 'textarea'):
            assert isinstance(q['default'], str), where
            if 'min' in q and q['default']:
                assert q['min'] <= len(q['default']) <= q.get('max', 1024), where
        if q['variable'] in LISTS:
            assert q['type'] == 'textarea', '%s: a list is a textarea (one per line)' % where


@pytest.mark.parametrize('playbook', PLAYBOOKS)
def test_survey_asks_what_the_playbook_reads_and_all_it_requires(playbook):
    reads = playbook_vars(playbook)
    assert reads, 'found no vmfleet_* var in %s' % playbook
    asked = {q['variable']: q for q in survey(playbook)['spec']}
    assert not set(asked) - set(reads), 'asked but never read by the playbook'
    required = sorted(v for v, req in reads.items() if req)
    for var in required:
        # AWX sends a question's default whenever it passes the question's own rules: that supplies the var too
        supplied = var in asked and (asked[var]['required'] or not awx_errors(asked[var], {var: asked[var]['default']}))
        assert supplied, '%s needs %s: the survey must require it or always send it' % (playbook, var)


@pytest.mark.parametrize('playbook', PLAYBOOKS)
def test_survey_types_agree_with_the_extra_vars_check(playbook):
    spec = extra_vars_spec()
    for q in survey(playbook)['spec']:
        opt = spec.get(q['variable'])
        if opt is None:
            continue
        if q['type'] == 'multiplechoice' and opt.get('type') == 'bool':
            assert sorted(q['choices']) == ['false', 'true'], q['variable']
        elif q['type'] == 'multiplechoice':
            assert sorted(q['choices']) == sorted(opt.get('choices', [])), q['variable']
        if q['type'] == 'integer':
            assert opt.get('type') == 'int', q['variable']


def test_rollback_and_cleanup_require_the_snapshot_name():
    for playbook in ('snapshot_rollback', 'snapshot_cleanup'):
        assert playbook_vars(playbook).get('vmfleet_snapshot_name') is True, playbook
    q = {q['variable']: q for q in survey('snapshot_rollback')['spec']}['vmfleet_snapshot_name']
    assert q['required'] and q['default'] == ''


# AWX's rules for an answer (awx/main/models/mixins.py, SurveyJobTemplateMixin._survey_element_validation),
# restated: a launch whose answers break one is refused with HTTP 400, and a default that breaks one is not sent.
def awx_errors(q, data):
    var, kind = q['variable'], q['type']
    if var not in data:
        return ['%s missing' % var] if q['required'] else []
    value = data[var]

    def bound(key):
        return q.get(key) not in ('', None)
    if kind in ('text', 'textarea', 'password'):
        if not isinstance(value, str):
            return ['%s: not a string' % var]
        if bound('min') and len(value) < int(q['min']):
            return ['%s: %r is too small (length at least %s)' % (var, value, q['min'])]
        if bound('max') and len(value) > int(q['max']):
            return ['%s: %r is too large' % (var, value)]
    elif kind == 'integer':
        if type(value) is not int:  # pylint: disable=unidiomatic-typecheck
            return ['%s: not an integer' % var]
        if (bound('min') and value < int(q['min'])) or (bound('max') and value > int(q['max'])):
            return ['%s: %r out of range' % (var, value)]
    elif kind == 'multiplechoice':
        if value not in q['choices']:
            return ['%s: %r is no choice' % (var, value)]
    elif kind == 'multiselect':
        if not isinstance(value, list) or any(v not in q['choices'] for v in value):
            return ['%s: %r is no list of choices' % (var, value)]
    return []


def awx_launch(playbook, answers):
    """The errors AWX answers a launch with, and the extra vars the job gets: the defaults that pass their
    question's rules (AWX drops the others silently), then the answers."""
    spec = survey(playbook)['spec']
    extra = {q['variable']: q['default'] for q in spec
             if q.get('default') is not None and not awx_errors(q, {q['variable']: q['default']})}
    extra.update(answers)
    return [e for q in spec for e in awx_errors(q, extra)], extra


def _an_answer(q):
    return {'integer': 1, 'multiplechoice': q.get('choices', [''])[0]}.get(q['type'], 'x')


@pytest.mark.parametrize('playbook', PLAYBOOKS)
def test_awx_accepts_the_defaults_and_every_cleared_optional_answer(playbook):
    spec = survey(playbook)['spec']
    for q in spec:
        if q.get('default') not in (None, ''):
            assert not awx_errors(q, {q['variable']: q['default']}), '%s: AWX would drop the default of %s' % (
                playbook, q['variable'])
    required = {q['variable']: _an_answer(q) for q in spec if q['required']}
    errors = awx_launch(playbook, required)[0]
    assert not errors, errors
    # a field the operator clears in AWX's form is sent as an empty string
    for q in spec:
        if not q['required'] and q['type'] in ('text', 'textarea'):
            errors = awx_launch(playbook, dict(required, **{q['variable']: ''}))[0]
            assert not errors, '%s: clearing %s is refused: %s' % (playbook, q['variable'], errors)


def test_awx_launches_retention_only_cleanup_and_a_dated_pre_upgrade_snapshot():
    errors, extra = awx_launch('snapshot_cleanup', {'vmfleet_snapshot_name': '', 'vmfleet_snapshot_keep': 3})
    assert not errors and extra['vmfleet_snapshot_name'] == ''
    errors, extra = awx_launch('pre_upgrade_snapshot', {})
    # no name: the role names the snapshot for this job, never a fixed name a later job would find again
    assert not errors and extra.get('vmfleet_snapshot_name', '') == ''


@pytest.mark.parametrize('playbook', PLAYBOOKS)
def test_a_cleared_hosts_answer_still_means_the_hypervisors_group(playbook, tmp_path):
    inventory = tmp_path / 'hosts.ini'
    inventory.write_text('[hypervisors]\nhv-a ansible_connection=local\n[others]\nnot-me ansible_connection=local\n')
    out = run([BIN / 'ansible-playbook', '--list-hosts', '-i', inventory, '-e', 'vmfleet_hosts=',
               ROOT / 'playbooks' / ('%s.yml' % playbook)],
              env=dict(os.environ, ANSIBLE_NOCOLOR='1'))
    assert 'hv-a' in out and 'not-me' not in out, out
