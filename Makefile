# The two commands of the README: `make demo` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xaicxr run --out runs/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup -q

clean:
	rm -rf runs/ .pytest_cache
