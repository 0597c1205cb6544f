#!/usr/bin/env bash
# ansible-test sanity, locally (no containers). ansible-test only runs from
# inside ansible_collections/<ns>/<name>/, which .collections links to us.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py="$repo/.venv/bin/python"

# --venv bootstraps pip by downloading get-pip.py, which this network forbids.
# ansible-test looks in its cache first: leave a stand-in there that uses ensurepip.
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
for v in 24_2 24_3 25_0 25_1; do
    cat > "$cache/get_pip_$v.py" <<'PY'
import subprocess, sys
args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade'])
if args:
    subprocess.check_call([sys.executable, '-m', 'pip', 'install'] + args)
PY
done

# ansible-test refuses a cwd reached through a symlink and does not follow
# linked directories, and reads the enclosing git repo: so it checks a copy,
# outside the repo, of the files git would commit.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/vmfleet-sanity.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
tree="$scratch/ansible_collections/vmfleet/kvm"
mkdir -p "$tree"
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$tree")
cd "$tree"
pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$repo/.venv/bin/ansible-test" sanity --venv --python "$pyver" --color no "$@"
