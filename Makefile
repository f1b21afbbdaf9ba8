# karpalign: `make demo` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# `make demo` installs what a user's `pip install .` installs; `make test` adds the test extra.
STAMP      := $(VENV)/.karpalign-installed
TEST_STAMP := $(VENV)/.karpalign-test-installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test bench java chromium clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

# METEOR and the PTB tokenizer of pycocoevalcap need a Java runtime.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "Java not found: installing default-jre-headless (needed by METEOR / PTB tokenizer)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; fi; }

# The report test renders an HTML report in headless Chromium (tests/report/).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Chromium not found: installing chromium (needed by the HTML report test)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

test: $(TEST_STAMP) java chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# End to end on synthetic scenes (~15 min on 2 cores); re-running reuses finished steps,
# `make demo DEMO_ARGS=--fresh` starts over, DEMO_ARGS=--quick runs tiny sizes.
demo: $(STAMP) java
	$(PY) -m karpalign.cli.demo --out $(DEMO_DIR) $(DEMO_ARGS)

# Every script in benchmarks/ (quick settings) -> BENCHMARKS.md; not part of `make test`.
bench: $(STAMP) java
	$(PY) benchmarks/run_all.py --out BENCHMARKS.md $(BENCH_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
