# kotune: `make test` and `make repro` are all a user needs; both build .venv from the lock first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
export PATH := $(BIN):$(PATH)

.PHONY: venv test repro lint lock clean docker-build docker-repro docker-repro-cpu

venv: $(VENV)/.installed

# Rebuilt when the lock or the package metadata changes; the stamp is written last, so an
# interrupted install is retried instead of trusted.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps -e .
	touch $@

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

repro: venv
	dvc repro

lint: venv
	ruff check src tests scripts bench
	hadolint docker/Dockerfile
	actionlint

# The CUDA image (needs a Docker engine; `docker-repro` also the NVIDIA container toolkit).
docker-build:
	docker build -f docker/Dockerfile -t kotune:latest .

docker-repro: docker-build
	docker compose -f docker/compose.yaml run --rm kotune dvc repro

docker-repro-cpu: docker-build
	docker compose -f docker/compose.yaml run --rm kotune-cpu dvc repro

# Re-resolve every dependency named in pyproject.toml (+dev) and pin the result. torch is pinned
# by hand: 2.13.0 is the release whose CPU build installs here; `+cpu` is stripped so the same
# line resolves to the CUDA build in the Docker image.
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install -q torch==2.13.0 && .lockvenv/bin/pip install -q -e '.[dev]'
	{ head -n 3 requirements.lock; .lockvenv/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > .lock.tmp
	mv .lock.tmp requirements.lock && rm -rf .lockvenv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
