# One command to install and run the main job, one to install and run the tests (see README).
# Installing is a no-op when .venv is already up to date with requirements.txt and setup.py.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test bench clean

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.txt
	$(VENV)/bin/pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Each demo run gets its own folder, so a second `make demo` never touches the first one's outputs.
DEMO_RUN ?= demo-$(shell date +%Y%m%d-%H%M%S)

demo: install
	$(PY) train.py configs/demo.yaml run_name=$(DEMO_RUN)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf experiments/demo-*
