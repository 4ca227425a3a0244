# Two entry points: `make demo` and `make test`. Both create .venv and install OSF first,
# with every dependency at the versions locked in constraints.txt.
# `make test-latest` runs the suite against the newest releases setup.cfg allows (only torch's
# CPU pin kept); `make lock` then moves constraints.txt forward to what that run installed.
VENV ?= .venv
PY := $(VENV)/bin/python
LATEST ?= .venv-latest
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
TEST_ENV := $(OFFLINE) TRITON_INTERPRET=1

.PHONY: demo test install bench clean test-latest lock

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,triton]"
	touch $@

demo: install
	$(OFFLINE) $(VENV)/bin/osf demo

test: install
	$(TEST_ENV) $(PY) -m pytest -q tests

# A fresh venv each time, so nothing locked lingers.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	grep -E '^torch==' constraints.txt > $(LATEST)/torch-pin.txt
	$(LATEST)/bin/python -m pip install -q --upgrade -c $(LATEST)/torch-pin.txt -e ".[dev,triton]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/freeze.txt
	$(LATEST)/bin/python -c "import transformers, optuna, lm_eval, torch; print('test-latest:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'optuna', optuna.__version__, 'lm-eval', lm_eval.__version__)"
	$(TEST_ENV) $(LATEST)/bin/python -m pytest -q tests

# Keeps the header comments and torch's pin; every other line comes from the test-latest venv.
lock: $(LATEST)/freeze.txt
	{ grep -E '^#' constraints.txt; grep -E '^torch==' constraints.txt; \
	  grep -v -E '^(torch==|#|-e )' $(LATEST)/freeze.txt; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

bench: install
	$(OFFLINE) $(PY) benchmarks/ir.py

clean:
	rm -rf $(VENV) $(LATEST) *.egg-info .pytest_cache
