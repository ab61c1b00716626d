# poseops: `make demo` runs the whole system on the bundled defaults; `make test` runs the tests.
# Both install what they need first (idempotent: a second run reuses what exists).
SHELL := /bin/bash
# Supported Pythons, newest first. Without PYTHON=..., the newest python3.x on PATH that runs.
PYTHONS := 3.13 3.12 3.11
# The first of the versions $(1) whose python3.x runs (a pyenv shim of an inactive version does not)
first_python = $(firstword $(foreach v,$(1),$(shell python$(v) -c '' >/dev/null 2>&1 && echo python$(v))))
# Looked for once, when a recipe needs it.
ifndef PYTHON
PYTHON = $(eval PYTHON := $(call first_python,$(PYTHONS)))$(PYTHON)
endif
# Label Studio's virtualenv: the same Python unless LS_PYTHON=... names another supported one.
LS_PYTHON ?= $(PYTHON)
VENV ?= .venv
LS_VENV ?= .venv-labelstudio
SHARED ?= $(abspath ../shared)
export YOLO_OFFLINE ?= true
# Bundled test assets when this checkout sits beside them; elsewhere Ultralytics downloads as usual.
ifneq ($(wildcard $(SHARED)/weights),)
export POSEOPS_WEIGHTS_DIR ?= $(SHARED)/weights
endif
ifneq ($(wildcard $(SHARED)/datasets),)
export POSEOPS_SAMPLE_IMAGES ?= $(SHARED)/datasets/coco8-pose/images
export POSEOPS_SHARED_DIR ?= $(SHARED)
export POSEOPS_SHARED_DATASETS ?= $(SHARED)/datasets
endif

.PHONY: install install-system demo demo-down test test-unit lint bench load clean
install: $(VENV)/.installed $(LS_VENV)/.installed install-system

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(call check_python,$(PYTHON),$(PYTHONS),PYTHON,$(VENV))
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

# Label Studio pins older prefect and numpy: it lives in a virtualenv of its own.
$(LS_VENV)/.installed: requirements-labelstudio.txt
	@$(call check_python,$(LS_PYTHON),$(PYTHONS),LS_PYTHON,$(LS_VENV))
	test -x $(LS_VENV)/bin/pip || $(LS_PYTHON) -m venv --clear $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-labelstudio.txt
	touch $@

# $(1): the interpreter (PYTHON or LS_PYTHON, $(3)) for the virtualenv $(4); $(2): the versions it may be.
# Stops with what was looked for when there is none or it is another version; says when $(4) is kept on another.
define check_python
if [ -z "$(1)" ]; then \
  echo "make: no supported Python found: looked for $(foreach v,$(2),python$(v)) on PATH." >&2; \
  echo "  Install one (Debian/Ubuntu: apt-get install python3 python3-venv) or name it: make install $(3)=/path/to/python3.x" >&2; \
  exit 1; \
fi; \
have=$$($(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
  echo "make: $(3)=$(1) does not run; supported: $(foreach v,$(2),python$(v))" >&2; exit 1; }; \
case " $(2) " in *" $$have "*) ;; *) \
  echo "make: $(3)=$(1) is Python $$have; supported: $(foreach v,$(2),python$(v))" >&2; exit 1;; esac; \
if [ -x $(4)/bin/python ]; then \
  old=$$($(4)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
  [ "$$old" = "$$have" ] || echo "make: keeping $(4) on Python $$old (not $(1), Python $$have); to rebuild it: rm -rf $(4)"; \
else echo "make: $(4) on $(1) (Python $$have)"; fi
endef

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
