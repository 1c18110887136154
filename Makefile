# make demo: set up .venv and run the workflow on the built-in synthetic dataset.
# make demo-tuning: the demo at 32 bits with every method as set and tuned (an equal budget), in demo-tuning/.
# make test: set up .venv and run the test suite.
# make lint: set up .venv, check the Snakefile and rules/ are snakefmt-formatted, and lint the workflow.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := --workflow-profile profiles/demo
export HF_HUB_OFFLINE := 1

.PHONY: demo demo-tuning test lint dry-run clean

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch and torchvision pinned in the same command as the rest, so they install as a pair
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1" -e ".[test,lint]"
	touch $@

demo: $(VENV)/installed
	$(BIN)/snakemake $(DEMO)
	$(MAKE) results/report.html

demo-tuning: $(VENV)/installed
	$(BIN)/snakemake $(DEMO) --configfile configs/demo-tuning.yaml -d demo-tuning

results/report.html: results/tables/map.csv
	$(BIN)/snakemake $(DEMO) --report $@

test: $(VENV)/installed
	$(BIN)/pytest

lint: $(VENV)/installed
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint
	$(BIN)/snakemake --lint $(DEMO)

dry-run: $(VENV)/installed
	$(BIN)/snakemake -n

clean:
	rm -rf results resources logs demo-tuning
