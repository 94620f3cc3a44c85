# netd's tasks. `make run` and `make test` set up everything themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
TRIAL_ARGS ?= -j2

# Real peers that the tests drive: packages of the system, installed by
# `make sysdeps` (as root, with apt-get) when any command is missing.
SYSTEM_COMMANDS := nc openssl rdate haproxy systemd-socket-activate systemd-analyze
SYSTEM_PACKAGES := netcat-openbsd openssl rdate haproxy systemd

.PHONY: run test trial lint sysdeps bench bench-echo bench-objects bench-getfile clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint,bench]' --config-settings editable_mode=compat
	touch $@

## run: netd in the foreground with its defaults (extra options in ARGS=...)
run: $(VENV)/.installed
	$(BIN)/twistd --nodaemon --pidfile= netd $(ARGS)

## test: lint, then the whole trial suite
test: $(VENV)/.installed sysdeps lint trial

# Twice: the tests on Twisted's epoll reactor with netd (as a subprocess)
# on its own, then the other way round (see netd/reactor.py).
trial: $(VENV)/.installed
	$(BIN)/python -m twisted.trial $(TRIAL_ARGS) tests
	NETD_TEST_TWISTD_REACTOR=epoll $(BIN)/python -m twisted.trial --reactor=netd $(TRIAL_ARGS) tests

lint: $(VENV)/.installed
	$(BIN)/ruff check netd tests bench twisted
	$(BIN)/ruff format --check netd tests bench twisted
	$(BIN)/mypy

sysdeps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing commands the tests need:$$missing (install: $(SYSTEM_PACKAGES))" >&2; exit 1; \
	  fi; \
	fi

bench/echoload: bench/echoload.c
	$(CC) -O2 -Wall -o $@ $<

## bench: netd against its peers, side by side
bench: $(VENV)/.installed bench/echoload
	$(BIN)/python bench/echo_bench.py
	$(BIN)/python bench/getfile_bench.py
	$(BIN)/python bench/objects_bench.py

## bench-echo: echo only (C=1, C=64, bulk) against Twisted and asyncio peers
bench-echo: $(VENV)/.installed bench/echoload
	$(BIN)/python bench/echo_bench.py $(ARGS)

## bench-objects: objects round trips/s, netd against the stdlib's Listener
bench-objects: $(VENV)/.installed
	$(BIN)/python bench/objects_bench.py $(ARGS)

## bench-getfile: getfile (1 and 4 clients, 256 MiB) against FileSender and os.sendfile servers
bench-getfile: $(VENV)/.installed
	$(BIN)/python bench/getfile_bench.py $(ARGS)

clean:
	rm -rf $(VENV) _trial_temp* build dist *.egg-info bench/echoload
	find . -name dropin.cache -delete
