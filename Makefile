# The two set-up commands of the README: `make demo` and `make test`. Both create or reuse .venv themselves,
# installing exactly the versions (and hashes) locked in requirements.lock, then gradaudit itself (editable).
# `make lock` refreshes the lock from pyproject.toml's ranges, constraints.txt and requirements-tools.in.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
UV_VERSION := 0.13.9
# the local wheel folders pip is configured with (here: the CPU build of torch) are offered to uv too
FIND_LINKS := $(PIP_FIND_LINKS)

.PHONY: demo test venv lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/gradaudit demo $(ARGS)

# As root with apt, install Debian's chromium for the report's headless-browser test (skipped without it).
test: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the HTML report's browser test"; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ) >/dev/null 2>&1 \
			|| echo "could not install chromium; its test will be skipped"; \
	fi
	$(BIN)/python -m pytest -q $(ARGS)

# Refresh requirements.lock (needs the package index). uv resolves one lock for every platform and Python
# >= 3.11 (the integrations need 3.11), with the hash of every file; review the diff, then run `make test`.
lock:
	test -x .lock-venv/bin/uv || ( $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install -q uv==$(UV_VERSION) )
	.lock-venv/bin/uv pip compile pyproject.toml requirements-tools.in --extra dev --extra integrations \
		-c constraints.txt --universal --python-version 3.11 --generate-hashes \
		$(foreach d,$(FIND_LINKS),--find-links $(d)) --custom-compile-command "make lock" -o $(LOCK) $(LOCK_ARGS)

clean:
	rm -rf $(VENV) .lock-venv gradaudit-out
