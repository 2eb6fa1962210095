# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STAMP_TEST := $(VENV)/.installed-test
STAMP_DEMO := $(VENV)/.installed-export

.PHONY: demo test clean bench tables

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

# the demo's report times the compressed model in onnxruntime as well (the fastest runtime for small models here)
$(STAMP_DEMO): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[export]'
	touch $@ $(STAMP)

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(STAMP)

# Without a local copy (../shared/data, --data-dir or $$BAYESCOMP_DATA) MNIST is fetched into ~/.cache/bayescomp/data
# first (mirror: $$BAYESCOMP_MIRROR, else the canonical one); with a local copy nothing is downloaded.
demo: $(STAMP_DEMO)
	$(VENV)/bin/bayescomp data download mnist
	$(VENV)/bin/bayescomp run --model lenet300 --data mnist --method gnj --run-dir runs/demo

test: $(STAMP_TEST)
	$(PY) -m pytest -q

bench: $(STAMP_TEST)
	$(PY) -m benchmarks.gnj_mnist
	$(PY) benchmarks/epoch_cost.py
	$(PY) -m benchmarks.make_tables

tables: $(STAMP)
	$(PY) -m benchmarks.make_tables

clean:
	rm -rf $(VENV) runs .pytest_cache
