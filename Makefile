# poseops: `make demo` runs the whole system on the bundled defaults; `make test` runs the tests.
# Both install what they need first (idempotent: a second run reuses what exists).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
LS_VENV := .venv-labelstudio
SHARED ?= $(abspath ../shared)
export YOLO_OFFLINE ?= true
# Bundled test assets when this checkout sits beside them; elsewhere Ultralytics downloads as usual.
ifneq ($(wildcard $(SHARED)/weights),)
export POSEOPS_WEIGHTS_DIR ?= $(SHARED)/weights
endif
ifneq ($(wildcard $(SHARED)/datasets),)
export POSEOPS_SAMPLE_IMAGES ?= $(SHARED)/datasets/coco8-pose/images
endif

.PHONY: install install-system demo demo-down test test-unit lint bench load clean
install: $(VENV)/.installed $(LS_VENV)/.installed install-system

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

# Label Studio pins older prefect and numpy: it lives in a virtualenv of its own.
$(LS_VENV)/.installed: requirements-labelstudio.txt
	test -x $(LS_VENV)/bin/pip || $(PYTHON) -m venv --clear $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-labelstudio.txt
	touch $@

# Debian packages: Chromium for the browser tests, Tesseract for OCR, a font for plots.
install-system:
	@missing=$$(for p in $$(grep -v '^#' packages-apt.txt); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: install
	$(VENV)/bin/poseops demo

demo-down:
	$(VENV)/bin/poseops demo-down

test: install
	$(VENV)/bin/pytest

test-unit: install
	$(VENV)/bin/pytest -m "not integration"

# Benchmarks (minutes; not part of `make test`): figures to docs/benchmarks.md
bench: install
	$(VENV)/bin/python -m benchmarks.run_all

# The long load test alone: 4 clients for 60 s against the service (loopback), p50/p99, RSS before/after
load: install
	$(VENV)/bin/python -m benchmarks.load

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf .pytest_cache .ruff_cache
