# One command builds the book, one runs the tests; each creates .venv from requirements.txt first.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
SMOKE := _build/smoke
# Data search path for the image chapters and tests (a user may point it elsewhere).
export MIMLIB_DATA ?= $(abspath ../shared/data)
export MIMLIB_PROGRESS ?= 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1

CHAPTERS := $(sort $(wildcard book/[0-9][0-9]_*.py))
# Chapters whose committed outputs nbval re-checks directly (exact, fast); the others train models
# and are checked through their smoke runs.
THEORY := $(filter book/01_% book/02_% book/03_%,$(CHAPTERS))
EXPERIMENTS := $(filter-out $(THEORY),$(CHAPTERS))

.PHONY: FORCE help venv book test unit smoke nbval book-strict browser-check notebooks runs-images runs-pixelhvae clean

help:
	@echo "make book   - render the book from the committed notebooks into _build/html"
	@echo "make test   - unit tests, every chapter via papermill (smoke preset), nbval, strict book build, browser check"
	@echo "make browser-check - open every built page in headless Chromium (math typeset, images, links)"
	@echo "make notebooks - re-execute every chapter with its committed (book) preset (long)"
	@echo "make runs-images DATASET=mnist    - the book runs of chapter 05 for one dataset, JOBS=2 at a time (hours)"
	@echo "make runs-pixelhvae DATASET=mnist - the book runs of chapter 06 for one dataset (hours)"

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

book: venv
	$(BIN)/jupyter-book build . --builder html
	@echo "Open _build/html/index.html"

test: unit smoke nbval book-strict browser-check

unit: venv
	$(BIN)/pytest tests -q -n auto

# Every chapter, executed from its .py source with the fast preset; outputs go to _build/smoke.
# SMOKE_JOBS chapters run side by side (default: one per core, at most 2), each kernel with
# SMOKE_JOBS-th of the cores' torch threads; the slowest chapters start first.
NCPU := $(shell nproc 2>/dev/null || echo 1)
SMOKE_JOBS ?= $(shell n=$(NCPU); echo $$(( n < 2 ? 1 : 2 )))
SMOKE_THREADS ?= $(shell echo $$(( $(NCPU) / $(SMOKE_JOBS) > 0 ? $(NCPU) / $(SMOKE_JOBS) : 1 )))
SLOWEST_FIRST := $(filter book/05_% book/06_% book/07_%,$(CHAPTERS))
SMOKE_NBS := $(patsubst book/%.py,$(SMOKE)/%.ipynb,$(SLOWEST_FIRST) $(filter-out $(SLOWEST_FIRST),$(CHAPTERS)))

smoke: venv
	@mkdir -p $(SMOKE)/results $(SMOKE)/runs
	@echo "smoke: $(words $(SMOKE_NBS)) chapters, $(SMOKE_JOBS) at a time, $(SMOKE_THREADS) torch thread(s) each"
	@$(MAKE) --no-print-directory -j $(SMOKE_JOBS) $(SMOKE_NBS)

# One chapter's smoke run (always re-run: FORCE); its own temporary source, so chapters can run in parallel.
$(SMOKE)/%.ipynb: book/%.py FORCE
	@echo "papermill (smoke): $<"
	@$(BIN)/jupytext --quiet --to ipynb --output $(SMOKE)/$*.src.ipynb $<
	@dirs=""; grep -q '^results_dir' $< && dirs="-p results_dir $(abspath $(SMOKE)/results)"; \
	  grep -q '^runs_dir' $< && dirs="$$dirs -p runs_dir $(abspath $(SMOKE)/runs)"; \
	  OMP_NUM_THREADS=$(SMOKE_THREADS) $(BIN)/papermill --log-level WARNING -k python3 --cwd book \
	    $(SMOKE)/$*.src.ipynb $(SMOKE)/$*.part.ipynb -p preset smoke $$dirs \
	  || { echo "papermill (smoke) FAILED: $< (executed notebook: $(SMOKE)/$*.part.ipynb)"; exit 1; }
	@mv $(SMOKE)/$*.part.ipynb $@ && rm -f $(SMOKE)/$*.src.ipynb

FORCE:

# The committed theory notebooks are re-executed and their checked outputs compared;
# the experiment chapters' smoke outputs are re-executed (loading their runs) and compared.
nbval: venv smoke
	$(BIN)/pytest -q -p no:cacheprovider -n $(SMOKE_JOBS) --dist loadfile --nbval-lax --nbval-current-env \
	  book/index.ipynb $(THEORY:.py=.ipynb) $(patsubst book/%.py,$(SMOKE)/%.ipynb,$(EXPERIMENTS))

book-strict: venv
	$(BIN)/jupyter-book build . --builder html -W -n --keep-going --all

# The built pages of the toc as a reader sees them: headless Chromium, after MathJax (no raw TeX, no
# MathJax errors, no formula wider than its column, every image, script and internal link present).
# Run after a book build; prints "skipped" and passes where no Chromium is installed.
browser-check: venv
	$(PY) tests/browser/check_pages.py _build/html

# Re-run every chapter with its book preset and write the executed notebook back (long; see README).
# Only chapters that have a committed notebook (drafts without one are run by `make smoke` alone).
notebooks: venv
	@for py in $(patsubst %.ipynb,%.py,$(wildcard book/[0-9][0-9]_*.ipynb)) book/index.py; do \
	  echo "executing $$py"; \
	  $(BIN)/jupytext --quiet --to ipynb --set-kernel python3 $$py && \
	  (cd book && ../$(BIN)/jupyter execute --inplace --timeout=-1 $$(basename $${py%.py}).ipynb) || exit 1; \
	done

# The book runs of the image chapters for one DATASET (mnist or fashion-mnist) through mimlib.sweep: JOBS
# worker processes with one torch thread each, longest first; resumable: re-running continues unfinished
# runs and loads finished ones.
DATASET ?= mnist
JOBS ?= 2
RUNS_DIR ?= runs
SWEEP := MIMLIB_PROGRESS=0 $(PY) -m mimlib.sweep --preset book --workers $(JOBS) --runs-dir $(RUNS_DIR)

runs-images: venv
	@mkdir -p $(RUNS_DIR)
	$(SWEEP) --study images --grid "dataset=[$(DATASET)] prior=[vampprior,standard] objective=[mim,vae]"

runs-pixelhvae: venv
	@mkdir -p $(RUNS_DIR)
	$(SWEEP) --study pixelhvae --grid "dataset=[$(DATASET)] objective=[vae,amim]"

clean:
	rm -rf _build
