# Two commands set everything up on a fresh machine:
#   make book   create .venv if absent, install pinned deps, build the HTML book into _build/html
#   make test   same environment, run the test suite
# Both are idempotent: the environment is rebuilt only when its inputs change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: book test clean-book clean env notebooks browser-test

env: $(STAMP)

$(STAMP): pyproject.toml requirements/book.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -r requirements/book.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo "Open the book: file://$(CURDIR)/_build/html/index.html"

notebooks: $(STAMP)
	$(PY) tools/sync_notebooks.py

# the built book in headless Debian chromium (apt-get install chromium), network off; after `make book`
browser-test: $(STAMP)
	SFS_BROWSER_TEST=1 $(PY) -m pytest -q tests/browser

clean-book:
	rm -rf _build

clean: clean-book
	rm -rf $(VENV)
