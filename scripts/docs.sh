#!/usr/bin/env bash
# The collection's docs site (antsibull-docs + Sphinx), built offline.
#   bash scripts/docs.sh build   -> build/docs/html/index.html   (make docs)
#   bash scripts/docs.sh lint    -> module, plugin, role and guide docs checked (part of make test)
# Offline: the generated conf.py loses its intersphinx mappings (they fetch inventories from the web);
# Sphinx runs with -W (warnings are errors) and nitpicky, so every reference must resolve in the site.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$repo/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$repo/.collections"
coll="$repo/.collections/ansible_collections/vmfleet/kvm"
out="$repo/build/docs"

case "${1:-build}" in
lint)
    antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs \
        --validate-collection-refs all --disallow-unknown-collection-refs "$coll"
    ;;
build)
    rm -rf "$out"
    mkdir -p "$out"
    mkdir -m 0700 "$out/src"   # antsibull-docs wants directories only its owner may write
    antsibull-docs sphinx-init --use-current --dest-dir "$out/src" --fail-on-error \
        --project vmfleet.kvm --copyright 'vmfleet.kvm contributors' \
        --title 'vmfleet.kvm documentation' --html-short-title vmfleet.kvm vmfleet.kvm >/dev/null
    "$repo/.venv/bin/python" - "$out/src/conf.py" <<'PY'
import re, sys
path = sys.argv[1]
conf = open(path).read()
conf = conf.replace("'sphinx.ext.intersphinx', ", "")
conf = re.sub(r"^intersphinx_mapping = \{.*?^\}\n", "intersphinx_mapping = {}\n", conf, flags=re.M | re.S)
assert 'sphinx.ext.intersphinx' not in conf and 'https://docs.python.org' not in conf, 'intersphinx left in conf.py'
# The pages antsibull-docs writes refer to a few labels of Ansible's own docs, which intersphinx would have
# fetched: they become plain links to those pages. Any other unresolved reference still fails the build.
conf += '''

ANSIBLE_DOCS = 'https://docs.ansible.com/projects/ansible/latest/'
ANSIBLE_LABELS = {
    'common_return_values': 'reference_appendices/common_return_values.html',
    'ansible_configuration_settings': 'reference_appendices/config.html',
    'callback_plugins': 'plugins/callback.html',
}


def _ansible_label(app, env, node, contnode):
    if node.get('refdomain') == 'std' and node.get('reftype') == 'ref' and node.get('reftarget') in ANSIBLE_LABELS:
        from docutils import nodes
        ref = nodes.reference('', '', internal=False, refuri=ANSIBLE_DOCS + ANSIBLE_LABELS[node['reftarget']])
        ref.append(contnode)
        return ref
    return None


def setup(app):
    app.connect('missing-reference', _ansible_label)
'''
open(path, 'w').write(conf)
PY
    chmod 0700 "$out/src/rst"   # sphinx-init made it
    antsibull-docs --config-file "$out/src/antsibull-docs.cfg" collection --use-current --fail-on-error \
        --cleanup everything --dest-dir "$out/src/rst" vmfleet.kvm
    sphinx-build -q -b html -W --keep-going -c "$out/src" "$out/src/rst" "$out/html"
    echo "docs site: $out/html/index.html"
    ;;
*)
    echo "usage: $0 build|lint" >&2
    exit 2
    ;;
esac
