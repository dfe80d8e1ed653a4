# Two commands on a fresh machine: `make demo` (the main job on Fashion-MNIST) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned as a pair (torchvision must match torch); timm comes from setup.cfg.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test lint demo env fashion-mnist clean docs

env: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC) -e '.[test]'
	touch $@

# two processes (pytest-xdist): the suite's subprocess and torchrun tests spend much of their time
# starting Python and waiting; `-p no:xdist` runs it in one
test: env
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 tests

# ruff's linter and formatter (pyproject.toml): lines under 100 columns, prose included
lint: env
	$(VENV)/bin/ruff check timm_kd tests benchmarks train_kd.py
	$(VENV)/bin/ruff format --check timm_kd tests benchmarks train_kd.py

# the documentation's generated parts, from the parsers: docs/flags.md and the flags a
# teacher-output cache's identity holds (docs/teacher-cache.md); tests/test_docs.py checks them
docs: env
	$(PY) -c "from timm_kd.cli.reference import main; main()"

demo: env fashion-mnist
	HF_HUB_OFFLINE=1 $(PY) -m timm_kd.demo --output demo_output

# Debian ships the full Fashion-MNIST as a package; where it can't be installed the demo downloads it.
fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist \
	  || ( [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) ) \
	  || echo "dataset-fashion-mnist is not installable here: the demo will download Fashion-MNIST with torchvision"

clean:
	rm -rf $(VENV) demo_output output
