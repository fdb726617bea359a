# The README's two commands: `make demo` and `make test`. Everything installs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test lint demo probe-demo bench stress clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build. No -q: pip's bars show the downloads' progress
	$(PY) -m pip install --progress-bar on torch==2.13.0
	$(PY) -m pip install --progress-bar on -e '.[test]'
	touch $@

lint: install
	$(VENV)/bin/ruff check store extract train tests bench

test: lint
	# pytest exits 5 when it collects nothing: that is a broken suite, not a pass
	$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

stress: install
	# the randomized model test (tests/test_stateful_model.py), longer than in `make test`
	DISTILCACHE_STRESS_EXAMPLES=$${EXAMPLES:-60} DISTILCACHE_STRESS_STEPS=$${STEPS:-12} \
		$(PY) -m pytest -q -s -p no:cacheprovider tests/test_stateful_model.py

demo: install
	$(PY) -m train.demo

probe-demo: install
	# teacher vs distilled vs random student, each probed the same way (speaker ID on the demo's voices)
	$(PY) -m train.probe_demo

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) demo-out
