# Quick start: `make run` (demo pipeline) and `make test` (whole suite). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The cluster executor plugins live in an environment of their own (see pyproject.toml's extras).
CLUSTER_VENV := .venv-cluster
CORES ?= all

.PHONY: run test test-services lint bench report clean slurm slurm-stop cluster-env

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The cluster executor plugins are removed should an older .venv still hold them (see cluster-env).
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip uninstall --quiet --yes snakemake-executor-plugin-slurm \
		snakemake-executor-plugin-slurm-jobstep snakemake-executor-plugin-cluster-generic
	$(BIN)/thumbfeat warm
	touch $@

$(CLUSTER_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CLUSTER_VENV)
	$(CLUSTER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLUSTER_VENV)/bin/python -m pip install --quiet -e '.[cluster]'
	touch $@

cluster-env: $(CLUSTER_VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/thumbfeat status

# Pictures from the finished run, then Snakemake's self-contained HTML report of them.
report: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) report_figures
	$(BIN)/snakemake report_figures --report report.html
	@echo "report: report.html"

# What the suite drives for real besides Python packages (Debian packages, as root): headless
# Chromium for the report test, jemalloc for the table's row-scan workers, a single-node SLURM for
# the cluster tests. Both steps do nothing when already done.
test-services:
	bash .ci/install-debian-packages
	scripts/slurm-local.sh install start

# PYTEST_ARGS='-m "not slurm"' leaves out the tests that need the local SLURM cluster.
test: $(VENV)/.installed $(CLUSTER_VENV)/.installed test-services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# A single-node SLURM cluster on this machine (Debian/Ubuntu, as root): see scripts/slurm-local.sh.
slurm:
	scripts/slurm-local.sh install start

slurm-stop:
	scripts/slurm-local.sh stop

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

bench: $(VENV)/.installed
	$(BIN)/python bench/run_bench.py

clean:
	rm -rf results .snakemake report.html
