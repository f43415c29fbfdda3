# Developer entry points. `make test` is what CI runs (see .ci/run).

PYTHON_BOOT := $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow

# Test processes (pytest-xdist). One TensorFlow process keeps about one core busy on the
# suite's small networks, so 2 processes nearly halve its time on a 2-core machine;
# `make test PYTEST_WORKERS=0` runs it in this process.
PYTEST_WORKERS ?= 2

venv: $(STAMP)

# Reinstalls only when pyproject.toml is newer than the stamp. An existing
# .venv made by hand (no stamp) is reused: `pip install -e` is idempotent.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[cpu,test]"
	touch $(STAMP)

demo: venv
	$(PY) examples/demo.py

test: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS)

test-slow: venv
	$(PY) -m pytest -m slow -n $(PYTEST_WORKERS)
