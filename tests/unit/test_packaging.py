"""The collection tarball holds what a user runs and reads, and nothing that only develops it."""

import json
import re
import tarfile

import yaml

from rig.packaging import ROOT

WANTED = [
    'MANIFEST.json', 'FILES.json', 'README.md', 'LICENSE', 'CHANGELOG.rst', 'changelogs/changelog.yaml',
    'meta/runtime.yml', 'meta/execution-environment.yml', 'requirements.txt', 'bindep.txt',
    'docs/docsite/links.yml', 'docs/docsite/extra-docs.yml',
    'plugins/doc_fragments/connection.py', 'plugins/doc_fragments/fleet.py', 'plugins/filter/fleet.py',
    'plugins/module_utils/common/runner.py', 'plugins/module_utils/backends/__init__.py',
]
# developer-only: none of these may be in the tarball, whatever the working tree holds
UNWANTED = re.compile(r'''^(
    \.ci/ | \.git | \.ansible-lint$ | \.ansible/ | \.pytest_cache/ | \.venv/ | \.collections/ | \.tox/
  | Makefile$ | ansible\.cfg$ | pytest\.ini$ | requirements-dev\.txt$ | execution-environment\.yml$
  | scripts/ | bench/ | build/ | tests/ | extensions/ | ee/
  | changelogs/fragments/ | changelogs/config\.yaml$ | changelogs/\.plugin-cache\.yaml$
  | docs/docsite/build/ | .*__pycache__/ | .*\.pyc$ | .*\.tar\.gz$
)''', re.X)


def names(tarball):
    with tarfile.open(tarball) as t:
        return {m.name.rstrip('/') for m in t.getmembers()}, json.load(t.extractfile('MANIFEST.json'))


def test_tarball_holds_what_a_user_needs(collection_tarball):
    files, manifest = names(collection_tarball)
    with open(ROOT / 'galaxy.yml') as f:
        galaxy = yaml.safe_load(f)
    assert manifest['collection_info']['version'] == galaxy['version']
    assert manifest['collection_info']['license'] == ['GPL-3.0-or-later']
    missing = [w for w in WANTED if w not in files]
    assert not missing, 'missing from the tarball: %s' % missing
    for kind, where in (('modules', 'plugins/modules'), ('playbooks', 'playbooks')):
        src = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / where).glob('*.py' if kind == 'modules' else '*.yml'))
        assert src and all(s in files for s in src), kind
    surveys = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / 'playbooks' / 'surveys').glob('*.json'))
    assert surveys and all(s in files for s in surveys)
    for role in sorted(p.name for p in (ROOT / 'roles').iterdir() if p.is_dir()):
        assert 'roles/%s/meta/argument_specs.yml' % role in files, role
        assert 'roles/%s/tasks/main.yml' % role in files, role
    assert any(f.startswith('docs/docsite/rst/') and f.endswith('.rst') for f in files)


def test_tarball_holds_nothing_developer_only(collection_tarball):
    files = names(collection_tarball)[0]
    leaked = sorted(f for f in files if UNWANTED.match(f))
    assert not leaked, 'developer files in the tarball: %s' % leaked


def test_every_test_file_has_a_name_of_its_own():
    """pytest imports test files by their base name: two of one name (a unit and a system test of one feature)
    stop the whole run at collection."""
    names = {}
    for path in sorted((ROOT / 'tests').rglob('test_*.py')):
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {n: p for n, p in names.items() if len(p) > 1}
