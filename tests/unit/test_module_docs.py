"""Every module's docs, as ansible-doc merges them with the doc fragments: version_added 1.0.0, seealso,
check_mode, diff_mode and platform attributes, and the ``error`` key its failures return, naming the error
classes it can raise or linking the troubleshooting guide's table of them, which lists every class."""

import ast
import json
import os
import re
import subprocess

import pytest
import yaml

from rig.packaging import BIN, ROOT

# error classes only some modules raise; every other class may come from any module (the shared engine).
# VmBusy comes from the per-VM lock, which only modules that change a VM take.
OWNERS = {'FleetFailed': [], 'DestinationProblem': ['vm_migrate'],
          'Untrusted': ['drive_mirror', 'snapshot', 'snapshot_info', 'vm_info', 'vm_restore', 'vm_save']}
MODULES = sorted(p.stem for p in (ROOT / 'plugins' / 'modules').glob('*.py'))


def ansible_doc(modules):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / '.collections'), ANSIBLE_NOCOLOR='1')
    p = subprocess.run([str(BIN / 'ansible-doc'), '--json', '-t', 'module'] + ['vmfleet.kvm.%s' % m for m in modules],
                       capture_output=True, text=True, check=False, env=env, cwd=ROOT)
    if p.returncode:
        return None, p.stderr
    return {k.split('.')[-1]: v for k, v in json.loads(p.stdout).items()}, None


@pytest.fixture(scope='module')
def docs():
    """{module: its docs}, or {module: the error ansible-doc gave}: one broken module fails only its own tests."""
    found, _err = ansible_doc(MODULES)
    if found is None:
        found = {}
        for m in MODULES:
            one, err = ansible_doc([m])
            found[m] = one[m] if one else err
    return found


def merged(docs, module):
    assert isinstance(docs[module], dict), 'ansible-doc cannot read %s: %s' % (module, docs[module])
    return docs[module]


def error_classes():
    tree = ast.parse((ROOT / 'plugins' / 'module_utils' / 'common' / 'exceptions.py').read_text())
    return sorted(c.name for c in tree.body if isinstance(c, ast.ClassDef) and c.name != 'VmfleetError')


@pytest.mark.parametrize('module', MODULES)
def test_module_docs_are_complete(docs, module):
    d = merged(docs, module)['doc']
    # a module the changelog lists in a release (every module of 1.0.0) says that release; one in
    # none yet names a release after the newest there
    released = yaml.safe_load((ROOT / 'changelogs' / 'changelog.yaml').read_text())['releases']
    in_release = [v for v, r in released.items() if module in [m['name'] for m in r.get('modules', [])]]
    assert re.match(r'^\d+\.\d+\.\d+$', d['version_added']), module
    if in_release:
        assert d['version_added'] == in_release[0], module
    else:
        newest = max(released, key=lambda v: tuple(int(x) for x in v.split('.')))
        assert tuple(int(x) for x in d['version_added'].split('.')) > tuple(int(x) for x in newest.split('.')), \
            '%s is in no release of changelogs/changelog.yaml, so it must name a later one than %s' % (module, newest)
    assert d.get('seealso'), module
    attrs = d.get('attributes', {})
    for attr in ('check_mode', 'diff_mode', 'platform'):
        assert attr in attrs and attrs[attr].get('support') in ('full', 'partial', 'none'), (module, attr)
    assert attrs['platform']['platforms'] == 'posix', module


GUIDE = ROOT / 'docs' / 'docsite' / 'rst' / 'troubleshooting.rst'
GUIDE_LABEL = 'ansible_collections.vmfleet.kvm.docsite.error_classes'


@pytest.mark.parametrize('module', [m for m in MODULES if m != 'fleet_progress'])  # raises no error of its own
def test_error_key_names_every_error_class_or_links_the_guide(docs, module):
    err = (merged(docs, module).get('return') or {}).get('error')
    assert err and err['returned'] == 'failed' and err['type'] == 'str', module
    text = ' '.join(err['description']) if isinstance(err['description'], list) else err['description']
    linked = 'R(' in text and GUIDE_LABEL + ')' in text
    if module.startswith('fleet_'):
        wanted = ['FleetFailed'] + ([] if linked else ['InvalidArgument'])
    elif linked:
        wanted = []
    else:
        wanted = [c for c in error_classes() if module in OWNERS.get(c, [module])
                  and not (c == 'VmBusy' and module.endswith('_info'))]
    missing = [c for c in wanted if 'C(%s)' % c not in text]
    assert not missing, '%s: error does not name %s' % (module, missing)


def test_the_troubleshooting_guide_lists_every_error_class():
    text = GUIDE.read_text()
    assert '.. _%s:' % GUIDE_LABEL in text
    table = text[text.index('.. _%s:' % GUIDE_LABEL):]
    missing = [c for c in error_classes() if '``%s``' % c not in table]
    assert not missing, 'the error classes guide does not list %s' % missing
