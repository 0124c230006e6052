# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[server,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) ops/demo.py

test: $(STAMP)
	bash ops/run_tests.sh

bench: $(STAMP)
	bash ops/bench/run_all.sh

clean:
	rm -rf $(VENV) runs build *.egg-info
