# netd's tasks. `make run` and `make test` set up everything themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
TRIAL_ARGS ?= -j2

# Real peers that the tests drive: packages of the system, installed by
# `make sysdeps` (as root, with apt-get) when any command is missing.
SYSTEM_COMMANDS := nc openssl rdate haproxy systemd-socket-activate systemd-analyze \
	ntpdig ntpdate xinetd unshare nsenter ip socat
SYSTEM_PACKAGES := netcat-openbsd openssl rdate haproxy systemd \
	ntpsec-ntpdate xinetd util-linux iproute2 socat

.PHONY: run test trial lint lock man sysdeps python2 bench-deps bench bench-quick bench-echo bench-workers bench-objects bench-getfile clean

# Installed with the versions CI tested (constraints.txt; `make lock` renews it).
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,lint,bench]'
	touch $@

## lock: renew constraints.txt: the newest versions setup.cfg allows, installed
## in a fresh environment (then `make test`, and commit both if it passes)
lock:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install -q --upgrade pip
	$(VENV)-lock/bin/python -m pip install -q '.[test,lint,bench]'
	{ echo "# The versions CI tested: make run and make test install with -c constraints.txt."; \
	  echo "# Made by make lock with $$($(VENV)-lock/bin/python --version); do not edit by hand."; \
	  $(VENV)-lock/bin/python -m pip freeze --exclude-editable | grep -viE '^netd([-_ =@]|$$)'; \
	} > constraints.txt
	rm -rf $(VENV)-lock build *.egg-info

# The third-party service example, installed as a package of its own (not
# editable): the tests prove that netd serves it with no change to netd.
EXAMPLES := $(wildcard examples/qotd/pyproject.toml examples/qotd/netd_qotd/*.py examples/qotd/twisted/plugins/*.py)
$(VENV)/.examples: $(VENV)/.installed $(EXAMPLES)
	$(BIN)/python -m pip install -q --force-reinstall --no-deps ./examples/qotd
	touch $@

## run: netd in the foreground with its defaults (extra options in ARGS=...)
run: $(VENV)/.installed
	$(BIN)/python -m netd.devrun --getfile-root examples/files $(ARGS)

## test: lint, then the whole trial suite
test: $(VENV)/.installed $(VENV)/.examples sysdeps python2 lint trial

# Twice: the tests on Twisted's epoll reactor with netd (as a subprocess)
# on its own, then the other way round (see netd/reactor.py).
trial: $(VENV)/.installed $(VENV)/.examples
	$(BIN)/python -m twisted.trial $(TRIAL_ARGS) tests
	NETD_TEST_TWISTD_REACTOR=epoll $(BIN)/python -m twisted.trial --reactor=netd $(TRIAL_ARGS) tests

lint: $(VENV)/.installed
	$(BIN)/ruff check netd tests bench twisted examples
	$(BIN)/ruff format --check netd tests bench twisted examples
	$(BIN)/mypy

## man: write man/netd.8 again from the options of `twistd netd --help`
man: $(VENV)/.installed
	$(BIN)/python -m netd.manpage man/netd.8

sysdeps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing commands:$$missing (install: $(SYSTEM_PACKAGES))" >&2; exit 1; \
	  fi; \
	fi

# The benchmark's peers from the system (xinetd's internal services), and the
# C compiler for bench/echoload.
BENCH_COMMANDS := xinetd cc taskset
BENCH_PACKAGES := xinetd gcc libc6-dev util-linux

# Without root (or apt-get) it names what is missing, and the suite skips
# xinetd's row.
bench-deps:
	-@$(MAKE) --no-print-directory sysdeps SYSTEM_COMMANDS="$(BENCH_COMMANDS)" \
	  SYSTEM_PACKAGES="$(BENCH_PACKAGES)"
# Python 2.7, whose multiprocessing client the objects tests drive: pyenv's,
# or python2.7 on PATH, or installed with pyenv (Debian 12 has no python2.7).
PYENV_ROOT ?= $(HOME)/.pyenv
PYENV := $(or $(shell command -v pyenv),$(wildcard $(PYENV_ROOT)/bin/pyenv))

python2:
	@if ls $(PYENV_ROOT)/versions/2.7.*/bin/python2.7 >/dev/null 2>&1 || command -v python2.7 >/dev/null; then :; \
	elif [ -n "$(PYENV)" ]; then \
	  echo "installing Python 2.7.18 with pyenv, for the Python 2 client tests"; \
	  PYENV_ROOT=$(PYENV_ROOT) $(PYENV) install -s 2.7.18 \
	    || echo "*** NO PYTHON 2.7: pyenv could not build it; the Python 2 client tests will be SKIPPED ***" >&2; \
	else \
	  echo "*** NO PYTHON 2.7 and no pyenv to build it: the Python 2 client tests will be SKIPPED ***" >&2; \
	fi

bench/echoload: bench/echoload.c
	$(CC) -O2 -Wall -o $@ $<

## bench: netd beside bare Twisted, asyncio, uvloop, xinetd and the stdlib on
## every load, one markdown table (~8 min; ARGS=... e.g. --netd 'w2=--workers 2')
bench: $(VENV)/.installed bench-deps bench/echoload
	$(BIN)/python bench/suite.py $(ARGS)
	$(BIN)/python bench/isolation.py

## bench-quick: the same, shorter runs (~3 min)
bench-quick: $(VENV)/.installed bench-deps bench/echoload
	$(BIN)/python bench/suite.py --quick $(ARGS)

## bench-echo: echo only (C=1, C=64, bulk) against Twisted and asyncio peers
bench-echo: $(VENV)/.installed bench/echoload
	$(BIN)/python bench/echo_bench.py $(ARGS)

## bench-objects: objects round trips/s, netd against the stdlib's Listener
bench-objects: $(VENV)/.installed
	$(BIN)/python bench/objects_bench.py $(ARGS)

## bench-getfile: getfile (1 and 4 clients, 256 MiB) against FileSender and os.sendfile servers
bench-getfile: $(VENV)/.installed
	$(BIN)/python bench/getfile_bench.py $(ARGS)

## bench-workers: --workers 1 beside --workers 2 (echo C=64, daytime connect rate)
bench-workers: $(VENV)/.installed bench/echoload
	$(BIN)/python bench/workers_bench.py $(ARGS)

clean:
	rm -rf $(VENV) $(VENV)-lock _trial_temp* build dist *.egg-info bench/echoload bench/results-latest.md
	find . -name dropin.cache -delete
