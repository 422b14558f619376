# The two set-up commands of the README: `make demo` and `make test`. Both create or reuse .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,integrations]'
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

clean:
	rm -rf $(VENV) gradaudit-out
