# karpalign: `make demo` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.karpalign-installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test bench java clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# METEOR and the PTB tokenizer of pycocoevalcap need a Java runtime.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "Java not found: installing default-jre-headless (needed by METEOR / PTB tokenizer)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; fi; }

test: $(STAMP) java
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP) java
	$(PY) -m karpalign.cli.demo --out $(DEMO_DIR)

clean-demo:
	rm -rf $(DEMO_DIR)
