# The two commands of the README: `make repro` and `make test`. Both bootstrap a fresh machine.
SHELL := /bin/bash
UV := python3 -m uv
RUN := $(UV) run --locked
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export HF_HUB_OFFLINE ?= 1

.PHONY: bootstrap repro metaworld test test-slow test-all lint format bench

bootstrap:
	@scripts/bootstrap.sh

## Run the whole pipeline on the embedded default (dvc repro, the run matrix on every core).
repro: bootstrap
	@scripts/repro.sh

## The Meta-World experiment (experiments/metaworld.yaml): its own pipeline, not part of `make repro`.
## Its summary is copied to paper/metaworld_summary.json, which the paper's appendix reads (a test holds
## the two equal), so that the default pipeline never reruns this one.
metaworld: bootstrap
	cd experiments/metaworld && $(RUN) dvc repro
	cp experiments/metaworld/results/summary.json paper/metaworld_summary.json

## Fast tests (the default CI run). Slow tests: `make test-slow`.
test: bootstrap
	$(RUN) pytest -m "not slow" $(PYTEST_ARGS)

test-slow: bootstrap
	$(RUN) pytest -m slow $(PYTEST_ARGS)

test-all: bootstrap
	$(RUN) pytest $(PYTEST_ARGS)

lint: bootstrap
	$(RUN) ruff check src tests benchmarks
	$(RUN) ruff format --check src tests benchmarks

format: bootstrap
	$(RUN) ruff format src tests benchmarks
	$(RUN) ruff check --fix src tests benchmarks

## Side-by-side benchmarks; each prints its ratio.
bench: bootstrap
	@set -e; for f in benchmarks/*.py; do echo "== $$f"; $(RUN) python "$$f"; done
