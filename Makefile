# Two entry points: `make demo` and `make test`. Both create .venv and install OSF first.
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo test install bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,triton]"
	touch $@

demo: install
	$(OFFLINE) $(VENV)/bin/osf demo

test: install
	$(OFFLINE) TRITON_INTERPRET=1 $(PY) -m pytest -q tests

bench: install
	$(OFFLINE) $(PY) benchmarks/ir.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
