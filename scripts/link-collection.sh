#!/usr/bin/env bash
# Presents this repo as an installed collection (for ansible-playbook, molecule
# and pytest) at .collections/ansible_collections/vmfleet/kvm.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest="$repo/.collections/ansible_collections/vmfleet/kvm"
mkdir -p "$(dirname "$dest")"
[ -d "$dest" ] && [ ! -L "$dest" ] && rm -rf "$dest"
ln -sfn ../../.. "$dest"
