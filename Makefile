# Centralka — quick start: `make demo` and `make test` (each sets up what it needs).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := espeak-ng sox libsox-fmt-mp3 sip-tester kamailio python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup system-deps venv demo test bench clean

all: setup

setup: system-deps venv

# Debian packages: installed only when one is missing, so repeated runs stay fast and offline.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: requirements.txt pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

demo: setup
	$(BIN)/centralka demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/calls.py --over

clean:
	rm -rf $(VENV) var build *.egg-info
