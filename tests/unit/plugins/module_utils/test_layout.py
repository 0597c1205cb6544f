"""The house rules of module_utils (issue 28), read off the tree: every libvirt / raw QEMU difference behind
``backends/``, files small enough to read, and a README code map that names every file."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
MU = ROOT / 'plugins' / 'module_utils'
MAX_LINES = 550
MAX_TOP_LEVEL = 12


def _sources():
    return sorted(p for p in MU.rglob('*.py') if p.name != '__init__.py')


def test_no_module_utils_file_is_over_the_limit():
    long = ['%s: %d lines' % (p.relative_to(MU), n) for p, n in
            ((p, len(p.read_text().splitlines())) for p in _sources()) if n > MAX_LINES]
    assert not long, 'split these by concept (at most %d lines each): %s' % (MAX_LINES, long)


def test_few_files_sit_directly_in_module_utils():
    top = [p.name for p in MU.glob('*.py') if p.name != '__init__.py']
    assert len(top) <= MAX_TOP_LEVEL, top


def test_outside_backends_nothing_asks_which_backend():
    found = []
    for p in _sources():
        rel = p.relative_to(MU)
        if rel.parts[0] == 'backends':
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if (re.match(r'\s*(import libvirt|from libvirt )', line) or re.search(r'backend\s*[!=]=', line)
                    or re.match(r'\s*class (Libvirt|Qemu|Qmp)\w*\((?!.*(Error|Exception|Failed|Problem))', line)):
                found.append('%s:%d: %s' % (rel, i, line.strip()))
    assert not found, 'move these behind the backends (VmHandle): %s' % found


def test_the_readme_code_map_names_every_module_utils_file():
    readme = (ROOT / 'README.md').read_text()
    named = set()
    for row in re.findall(r'^\| (`[^|]*) \|', readme, re.M):
        ticks = re.findall(r'`([^`]+)`', row)
        # a row may name its siblings by file name alone after the first path: `backends/qemu/x.py`, `y.py`
        base = ''
        for t in ticks:
            if '/' in t:
                base = t.rsplit('/', 1)[0] + '/'
                named.add(t)
            else:
                named.add(base + t)
    for row in re.findall(r'^\| `common/` \|(.*)$', readme, re.M):
        named.update('common/' + t for t in re.findall(r'`([a-z_]+\.py)`', row))
    missing = [str(p.relative_to(MU)) for p in _sources() if str(p.relative_to(MU)) not in named]
    assert not missing, 'the README code map leaves out %s' % missing
