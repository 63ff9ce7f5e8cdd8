# Two commands on a fresh machine with only python3:  make demo  /  make test
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-soak ui bench constraints clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)  ## generate sample medical PDFs and run the whole chain on the embedded engine
	$(VENV)/bin/medkg-pdf demo

test: $(STAMP)  ## the full test suite (what CI runs): two workers, a test module each (its fixtures stay together)
	$(PY) -m pytest -n 2 --dist loadfile

ui: $(STAMP)  ## the Dagster UI on the demo's runs and outputs
	mkdir -p .medkg-data/dagster_home && cp dagster.yaml .medkg-data/dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.medkg-data/dagster_home MEDKG_DATA_DIR=$(CURDIR)/.medkg-data $(VENV)/bin/dg dev

bench: $(STAMP)  ## benchmarks against a simulated vLLM server (ratios vs same-run baselines) -> bench/RESULTS.md, ~15 min
	$(PY) -m bench.run_all

constraints: $(STAMP)  ## re-pin deploy/constraints.txt (the image's exact versions) from the installed environment
	{ sed -n 1,2p deploy/constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -iv '^medkg-pdf' | sort -f; } > deploy/constraints.txt.new
	mv deploy/constraints.txt.new deploy/constraints.txt

clean:
	rm -rf .medkg-data
