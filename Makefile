# One command to install and run the main job, one to install and run the tests (see README).
# `make install` installs the exact versions pinned in requirements.lock, then this package without
# dependencies. It is a no-op while .venv is newer than the lock and pyproject.toml; editing either
# reinstalls. `make lock` regenerates the lock from pyproject.toml's direct requirements.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint lock clean

# --no-deps: the lock is already the whole transitive set, and it keeps pip from adding what a package
# declares but the lock leaves out on purpose (AAIT, see lock-overrides.txt).
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --no-deps -r $(LOCK)
	$(VENV)/bin/pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Each demo run gets its own folder, so a second `make demo` never touches the first one's outputs.
DEMO_RUN ?= demo-$(shell date +%Y%m%d-%H%M%S)

demo: install
	$(PY) train.py configs/demo.yaml run_name=$(DEMO_RUN)

test: install
	$(PY) -m pytest -q tests

# The quick tier for the inner loop: everything but the tests marked slow (subprocesses of train.py and the
# scripts, several processes, real trainings to an export; see pytest.ini).
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# ruff with pyproject.toml's rules (E,F,W,I,UP, 120 columns); `ruff check --fix .` applies the safe fixes.
lint: install
	$(VENV)/bin/ruff check .

# Resolve pyproject.toml's dependencies and every extra (the whole transitive set, for every platform
# and Python the package supports) into requirements.lock with uv's resolver, kept in its own venv.
# Existing pins are kept where they still satisfy pyproject.toml; `make lock UPGRADE=1` moves every
# package to its newest allowed version. Review the diff, then `make test` installs it.
UV_VERSION ?= 0.13.8
LOCK_VENV  ?= .venv-lock
lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install uv==$(UV_VERSION); }
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
		--override lock-overrides.txt --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -o $(LOCK)

clean:
	rm -rf experiments/demo-*
