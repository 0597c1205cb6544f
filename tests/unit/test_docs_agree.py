"""The docs say what the code does, on the facts that drifted before: the README's table of shared extra vars
against the playbooks and their extra-vars check, each role's argument spec against its defaults and against
the module options it passes them to, and which backends instant snapshots work on."""

import re
from pathlib import Path

import pytest
import yaml

from test_surveys import PLAYBOOKS, extra_vars_spec, playbook_vars

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / 'roles').iterdir() if (p / 'meta' / 'argument_specs.yml').is_file())


def readme_extra_vars():
    """{var: (what, default, playbooks)} of the README's table of shared extra vars."""
    rows = {}
    for line in (ROOT / 'README.md').read_text().splitlines():
        m = re.match(r'^\| `(vmfleet_[a-z_]+)` \| (.*) \| (.*) \| (.*) \|$', line)
        if m:
            rows[m.group(1)] = m.group(2), m.group(3), m.group(4)
    return rows


def playbooks_named(column):
    """The playbooks a row's last column names: all, all but X, or a list; and those it says refuse the var."""
    refused = set(re.findall(r'all but ([a-z_]+) \(refused there', column))
    column = re.sub(r'\(.*?\)', '', column).strip()
    if column == 'all':
        named = set(PLAYBOOKS)
    elif column.startswith('all but '):
        named = set(PLAYBOOKS) - {column[len('all but '):].strip()}
    else:
        named = {p.strip() for p in column.split(',')}
    return named, refused


def test_readme_lists_every_shared_extra_var_and_no_other():
    assert set(readme_extra_vars()) == set(extra_vars_spec())


@pytest.mark.parametrize('var', sorted(extra_vars_spec()))
def test_readme_says_which_playbooks_read_each_extra_var_and_its_choices(var):
    what, _default, column = readme_extra_vars()[var]
    named, refused = playbooks_named(column)
    assert named <= set(PLAYBOOKS), named - set(PLAYBOOKS)
    reads = {p for p in PLAYBOOKS if var in playbook_vars(p)}
    assert reads == named | refused, 'README says %s, the playbooks that read %s are %s' % (
        sorted(named), var, sorted(reads))
    for choice in extra_vars_spec()[var].get('choices', []):
        assert '`%s`' % choice in what, (var, choice)


def role_spec(role):
    with open(ROOT / 'roles' / role / 'meta' / 'argument_specs.yml') as f:
        return yaml.safe_load(f)['argument_specs']['main']


def role_defaults(role):
    path = ROOT / 'roles' / role / 'defaults' / 'main.yml'
    return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}


@pytest.mark.parametrize('role', ROLES)
def test_role_defaults_are_the_ones_its_spec_documents(role):
    options = role_spec(role).get('options') or {}
    defaults = role_defaults(role)
    undocumented = sorted(k for k in defaults if k not in options and not k.startswith(role + '__'))
    assert not undocumented, undocumented
    for name, opt in options.items():
        if 'default' in opt:
            assert name in defaults, '%s documents a default the role does not set' % name
            assert defaults[name] == opt['default'], (name, defaults[name], opt['default'])
        elif name in defaults and '{{' not in str(defaults[name]):
            pytest.fail('%s has a default (%r) its spec does not document' % (name, defaults[name]))


def module_options(module):
    source = (ROOT / 'plugins' / 'modules' / ('%s.py' % module)).read_text()
    doc = yaml.safe_load(re.search(r"DOCUMENTATION = r'''(.*?)'''", source, re.S).group(1))
    return doc.get('options') or {}


@pytest.mark.parametrize('role', ROLES)
def test_role_choices_are_the_choices_of_the_module_option_they_feed(role):
    options = role_spec(role).get('options') or {}
    tasks = yaml.safe_load((ROOT / 'roles' / role / 'tasks' / 'main.yml').read_text()) or []
    checked = 0
    for task in tasks:
        for key, args in task.items():
            if not key.startswith('vmfleet.kvm.') or not isinstance(args, dict):
                continue
            mod_opts = module_options(key.split('.')[-1])
            for arg, value in args.items():
                m = re.match(r'^\{\{ (%s_[a-z_]+) \}\}$' % role, str(value))
                if not m or m.group(1) not in options or 'choices' not in options[m.group(1)]:
                    continue
                # a role may offer fewer (host_maintenance keeps the module's internal send_back to itself)
                assert set(options[m.group(1)]['choices']) <= set(mod_opts[arg]['choices']), (m.group(1), key, arg)
                checked += 1
    if role == 'pre_upgrade_snapshot':
        assert checked, 'the snapshot mode was not found in the role task'


def test_no_role_says_instant_snapshots_are_raw_qemu_only():
    """The module takes instant snapshots of libvirt domains too (libvirt 8.2+, a local uri)."""
    doc = str(module_options('snapshot')['mode'])
    assert 'libvirt' in doc
    for role in ROLES:
        for name, opt in (role_spec(role).get('options') or {}).items():
            text = ' '.join(opt.get('description') or [])
            if 'instant' in text:
                assert not re.search(r'raw QEMU( VMs)? only', text, re.I), (role, name, text)


@pytest.mark.parametrize('role', ROLES)
def test_every_role_description_line_is_text(role):
    """A line with ': ' in it silently becomes a mapping, which ansible-doc shows as garbage."""
    with open(ROOT / 'roles' / role / 'meta' / 'argument_specs.yml') as f:
        specs = yaml.safe_load(f)['argument_specs']
    for entry, spec in specs.items():
        lines = list(spec.get('description') or [])
        for opt in (spec.get('options') or {}).values():
            lines += opt.get('description') or []
        assert all(isinstance(x, str) for x in lines), (entry, [x for x in lines if not isinstance(x, str)])
