# Lock Reaper. A new user needs only: `make demo` and `make test`.
# Every target installs what it needs (venv, pip requirements, CDK CLI, Terraform 1.0.3).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TF_DIR := .cache/terraform-1.0.3
# jsii silences its node end-of-life banner only for the major versions listed (a bare 1 does nothing).
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 18,20,22
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1
export JSII_DEPRECATED := quiet
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TERRAFORM_1_0_3 := $(CURDIR)/$(TF_DIR)/terraform

.PHONY: help deps demo test test-fast synth bench lint clean

help:
	@echo "make demo   - run Lock Reaper against a local AWS emulator with realistic locks"
	@echo "make test   - run the whole test suite"
	@echo "make synth  - synthesize the CDK app offline (cdk.out/)"
	@echo "make bench  - benchmarks, writes bench/results.json"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

$(TF_DIR)/terraform: $(VENV)/.installed
	$(PY) scripts/fetch_terraform.py $(TF_DIR)

deps: $(VENV)/.installed node_modules/.installed $(TF_DIR)/terraform

demo: $(VENV)/.installed
	$(PY) -m devtools.demo

test: deps
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not terraform and not cdk"

synth: $(VENV)/.installed node_modules/.installed
	npx --no-install cdk synth --quiet

bench: deps
	$(PY) bench/run.py

clean:
	rm -rf cdk.out .pytest_cache .demo bench/results.json
