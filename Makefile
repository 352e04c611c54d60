# Two user-facing commands (see README):
#   make book   install into .venv if needed, execute every notebook with papermill, build the HTML book
#   make test   install into .venv if needed, run the test suite (CI runs exactly this)
#   make models retrain every shipped model in data/models from its recipe, gate it, rewrite its card
#               (maintainers only: ~1 h on 2 CPU cores; the book and the tests load the committed ones)
# Everything else here is a helper of those two.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Executed notebooks and their metrics/figures land in book/_generated; the book reads them.
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: book test notebooks html venv clean models

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (equidiff)" >/dev/null
	touch $(STAMP)

notebooks: $(STAMP)
	$(PY) -m equidiff.build notebooks --book book

html: $(STAMP)
	$(PY) -m equidiff.build html --book book

book: notebooks html

models: $(STAMP)
	$(PY) -m equidiff.worlds.digits.ship --retrain

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf book/_generated book/_build book/_extra
