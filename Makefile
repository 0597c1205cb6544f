# The two commands of the README: `make demo` and `make test`. Each installs
# what it needs and is safe to run twice.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
COLL := .collections/ansible_collections/vmfleet/kvm
STAMP := build/stamps
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections
export ANSIBLE_PYTHON_INTERPRETER := $(CURDIR)/$(VENV)/bin/python

.PHONY: demo test setup host venv guest collection unit system molecule sanity lint docs docs-lint ee ee-image bench clean

setup: host venv guest collection

host:
	bash scripts/setup-host.sh

# libvirt-python compiles against libvirt-dev, which `host` installs.
venv: $(STAMP)/venv
$(STAMP)/venv: requirements.txt requirements-dev.txt | host
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -r requirements-dev.txt
	mkdir -p $(STAMP) && touch $@

guest: | host
	bash scripts/build-guest.sh

collection:
	bash scripts/link-collection.sh

unit: venv collection
	$(PY) -m pytest tests/unit

system: setup
	$(PY) -m pytest -n 2 --dist loadgroup tests/system

# every role's scenario on real VMs booted once by the default scenario (shared_state)
molecule: setup
	molecule test --all

sanity: venv collection
	bash scripts/sanity.sh

lint: venv collection
	ansible-lint --profile production

# the docs site (modules, plugins, roles, docs/docsite/rst guides), offline, into build/docs/html
# (they make the venv only if it is missing: no host setup, no libvirtd needed)
docs: collection
	test -x $(PY) || $(MAKE) venv
	bash scripts/docs.sh build

docs-lint: collection
	test -x $(PY) || $(MAKE) venv
	bash scripts/docs.sh lint

# the execution environment's build context in build/ee/context, with the collection tarball in it;
# ee-image builds the image too (needs podman or docker, and the base image's registry). An AWX admin's
# machine is no hypervisor: these use a virtualenv of their own (build/ee/venv: ansible-core and
# ansible-builder) and install nothing else, whether .venv exists or not.
EE_VENV := build/ee/venv
$(EE_VENV)/bin/ansible-builder:
	python3 -m venv $(EE_VENV)
	$(EE_VENV)/bin/python -m pip install -q 'ansible-core>=2.18,<2.20' 'ansible-builder>=3.1,<4' pyyaml

ee: $(EE_VENV)/bin/ansible-builder
	mkdir -p build/ee
	$(EE_VENV)/bin/ansible-galaxy collection build --force --output-path build/ee .
	cp build/ee/vmfleet-kvm-$$($(EE_VENV)/bin/python -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])').tar.gz build/ee/vmfleet-kvm.tar.gz
	$(EE_VENV)/bin/ansible-builder create -f execution-environment.yml -c build/ee/context

ee-image: ee
	$(EE_VENV)/bin/ansible-builder build -f execution-environment.yml -c build/ee/context -t vmfleet-ee:latest

# Two workers: the simulated fleet's files in one, the single-host files spread over both
# (tests/system/conftest.py groups them); the static checks after, on a quiet host.
test: setup
	$(PY) -m pytest -n 2 --dist loadgroup --junitxml=build/test-results.xml tests/unit tests/system
	molecule test --all
	bash scripts/sanity.sh
	bash scripts/docs.sh lint
	ansible-lint --profile production

demo: setup
	PYTHONPATH=$(CURDIR)/tests $(PY) scripts/demo.py

bench: setup
	PYTHONPATH=$(CURDIR)/tests $(PY) bench/run.py

clean:
	-virsh -c qemu:///system list --all --name | grep '^vmfleet-' | xargs -r -n1 virsh -c qemu:///system destroy
	rm -rf build .collections tests/output
