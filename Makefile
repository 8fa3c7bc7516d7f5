# Centralka — quick start: `make demo` and `make test` (each sets up what it needs).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := espeak-ng sox libsox-fmt-mp3 sip-tester kamailio fluidsynth fluid-soundfont-gm python3-venv fail2ban shellcheck openssl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup system-deps venv demo test bench bench-queue bench-ewt bench-gsm bench-sms bench-screen clean

all: setup

HOLD_MUSIC := appliance/data/hold_music.wav

setup: system-deps venv $(HOLD_MUSIC)

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

$(BIN)/.installed: requirements.txt requirements-test.txt pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

# Default hold music (R11): a public-domain score rendered once with fluidsynth (see README).
$(HOLD_MUSIC): appliance/media/holdmusic.py $(BIN)/.installed | system-deps
	$(BIN)/python -m appliance.media.holdmusic $@

demo: setup
	$(BIN)/centralka demo

# Parallel workers: the tests mostly wait on real peers and audio (about a third of the two cores
# busy with 3 workers). Session 3 saw 4 workers starve the modem library's AT polls; the modem
# tests no longer race the polls, and 5 workers passed the whole suite three times in a row here
# (7 min 42-54 s against 11 min 33 s with 3). The longest tests start first (tests/conftest.py).
TEST_JOBS ?= 5

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(TEST_JOBS)

bench: setup
	$(BIN)/python bench/calls.py --over

# Callers waiting in a queue with hold music and announcements: CPU per caller, latency.
bench-queue: setup
	$(BIN)/python bench/calls.py --queue

# Announced vs actual queue waits, ours against Asterisk's estimator, on replayed queue days.
bench-ewt: setup
	$(BIN)/python bench/ewt.py

# The GSM voice bridge: CPU per GSM call and the delay it adds (emulated modem's voice port).
bench-gsm: setup
	$(BIN)/python bench/gsm_voice.py

# SMS throughput of the outbox through the modem supervisor, against the emulated modem.
bench-sms: setup
	$(BIN)/python bench/sms.py

# What the SIP screen costs per request (docs/SIP_EDGE.md), in-process.
bench-screen: setup
	$(BIN)/python bench/screen.py

clean:
	rm -rf $(VENV) var build *.egg-info
	rm -f appliance/data/hold_music.wav appliance/data/hold_music.json
