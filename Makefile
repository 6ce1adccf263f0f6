# odesde: two commands on a fresh machine.
#   make book   creates .venv, installs, executes every notebook (paper profile), builds the book
#   make test   creates .venv, installs, runs the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JOBS   ?= 1

.PHONY: install book quick smoke test benchmarks clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(BIN)/odesde run --profile paper --jobs $(JOBS)
	$(BIN)/odesde book

quick: $(STAMP)
	$(BIN)/odesde run --profile quick --jobs $(JOBS)
	$(BIN)/odesde book

smoke: $(STAMP)
	$(BIN)/odesde run --profile smoke --jobs $(JOBS)
	$(BIN)/odesde book

test: $(STAMP)
	$(BIN)/python -m pytest

benchmarks: $(STAMP)
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf _build
