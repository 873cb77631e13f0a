# `make test` and `make demo` set everything up in .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TF_PACKAGE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'tensorflow[and-cuda]>=2.16' || echo 'tensorflow-cpu>=2.16')
PYTEST_ARGS ?=
# test processes (pytest-xdist); a test file stays in one process, so its shared fixtures are made once
TEST_WORKERS ?= 2

.PHONY: test test-fast demo install clean bench

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade setuptools wheel
	$(PY) -m pip install --quiet "$(TF_PACKAGE)"
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $@

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

# the developers' inner loop: everything but the tests marked slow (training, processes); its
# fixtures are cheap, so tests spread one by one
test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist load -m "not slow" $(PYTEST_ARGS) tests

demo: install
	$(PY) demo.py

bench: install
	$(PY) bench/input_pipeline.py
	$(PY) bench/train_step.py
	$(PY) bench/host_overhead.py
	$(PY) bench/predict.py
	$(PY) bench/voc_eval.py
	$(PY) bench/model_size.py
	$(PY) bench/tflite_latency.py

clean:
	rm -rf $(VENV) *.egg-info demo_output
