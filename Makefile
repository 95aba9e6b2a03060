# napari-mitoseg: `make run` opens napari with the sample and the Segment widget; `make test` runs
# the test suite; `make test-all` adds the tests that start, kill and signal whole processes.
# Each first builds .venv (about 6 GB, a few minutes) and reuses it after that.

PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
# torch and torchvision first, pinned: the releases this machine holds on local disk.
TORCH := torch==2.14.1 torchvision==0.29.1
# What the GUI tests need from Debian: a virtual X server and the xcb libraries Qt 6 loads.
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0

SAMPLE := em_sample
WIDGET := Segment mitochondria

.PHONY: run test test-all demo lint venv system-deps

# The environment, rebuilt when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet $(TORCH) -e ".[pyqt6,testing]"
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -c 'import napari; viewer = napari.Viewer(); \
	viewer.open_sample("napari-mitoseg", "$(SAMPLE)"); \
	viewer.window.add_plugin_dock_widget("napari-mitoseg", "$(WIDGET)"); napari.run()'

# Debian packages for the GUI tests, installed only when missing and only as root.
system-deps:
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	else echo "make: missing some of: $(APT_PACKAGES); install them (as root) for the GUI tests" >&2; fi

# The suite leaves out the tests marked `processes` (dask schedulers and workers started, killed
# and signalled as separate processes: minutes, and at the mercy of the host's process handling);
# `make test-all` runs them too.
test: $(STAMP) system-deps
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -m "not processes"

test-all: $(STAMP) system-deps
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

demo: $(STAMP)
	$(VENV)/bin/mitoseg demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

