# Two commands on a fresh machine: `make run` starts the whole stack, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test faults lint typecheck pytest install browser bench clean

$(STAMP): pyproject.toml client/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' -e ./client
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py prepare_databases
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python manage.py prepare_queues
	$(BIN)/python manage.py runstack

# Debian's chromium and chromedriver, for the operations page's browser test (run as root; CI does).
browser:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

# The benchmark (the Benchmark section of README.md): its own databases, queues and port; about 12 minutes.
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS="--duration 10 --scenarios batched,copy_limit".
BENCH_ARGS ?= --update-readme
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python manage.py bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

# Fault tests under load (worker/API SIGKILL, broker restart, shard outage, poison, and on private clusters:
# a broker node SIGKILL, broker quorum loss, a shard failover to its synchronous standby): a few minutes,
# so not part of `make test`; CI runs them after it. Figures land in var/faults/*.json, and the table
# drawn from them is printed (`python -m tests.faults.report --update-readme` puts it in the README).
faults: $(STAMP)
	$(BIN)/python -m pytest -m faults
	$(BIN)/python -m tests.faults.report

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
