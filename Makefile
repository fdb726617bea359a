# The README's two commands: `make demo` and `make test`. Everything installs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test lint demo probe-demo bench stress quality espeak clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build. No -q: pip's bars show the downloads' progress
	$(PY) -m pip install --progress-bar on torch==2.13.0
	$(PY) -m pip install --progress-bar on -e '.[test]'
	# s3prl's distiller upstream, for the s3prl export test (issue 36): --no-deps, because s3prl requires torchaudio,
	# which has no build for torch 2.13; the distiller upstream does not import it (its needs are in .[s3prl])
	$(PY) -m pip install --progress-bar on --no-deps s3prl==0.4.18
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
	$(PY) -m train.probe.demo

bench: install
	$(PY) -m bench.run_all

espeak:
	# speech for the demo and the quality benchmark; Debian's lists first, or the install fails quietly (and you get chirps)
	@command -v espeak-ng >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q espeak-ng) >/dev/null \
		|| echo "make: could not install espeak-ng (not root? run: apt-get update && apt-get install -y espeak-ng)" >&2

quality: install espeak
	# the quality benchmark: a teacher pretrained here, students from every storage mode and the controls, SUPERB-style
	# probes over 3 seeds, paired comparisons (hours on 2 CPU cores; every stage is kept in quality-out/ and reused;
	# the table: quality-out/quality.md; python -m bench.quality --quick smoke-tests every stage in minutes)
	$(PY) -m bench.quality

clean:
	rm -rf $(VENV) demo-out
