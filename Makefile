# Two commands on a fresh machine: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
RUNS   ?= runs

.PHONY: install demo demo-text debian-descriptions debian-lm findings test test-random fashion-mnist chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch/torchvision pinned to the wheels on this machine's disk; pyproject admits a range.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST: Debian's package where apt and root are there, else torchvision's download.
fashion-mnist: install
	@if $(BIN)/kdx data >/dev/null 2>&1; then echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	else \
	  $(BIN)/kdx data data.download=true || { echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or go online so torchvision can download it, or pass --data-root DIR (a folder with the IDX files) to kdx."; exit 1; }; \
	fi

# The default job: the fastest study that still says something: six sources x 3 seeds on MNIST-1D
# (generated locally, no download), the teacher trained and cached on first use; prints summary.md and
# writes report.html under $(RUNS)/studies/sources_mnist1d/. A second `make demo` reuses everything.
demo: install
	$(BIN)/kdx study configs/studies/sources_mnist1d.yaml --runs-dir $(RUNS)

# Text: Debian package descriptions -> Section, built offline from apt's lists (fetching the English
# Translation files first when they are absent), then the sources_text study (7 sources x 3 seeds, BERT
# teacher). One thread a process: on the shared 2-core CPU two-thread torch ran BERT training 15x slower.
# configs/text_debian.yaml's data.path; a build without the `unlabeled` split (before 2026-12-02) is rebuilt.
# debian-lm: every English description as a language-model corpus (configs/lm_debian.yaml's data.path).
DEBIAN = data/debian-descriptions
DEBIAN_LM = data/debian-lm
APT_EN = if ! ls /var/lib/apt/lists/*_i18n_Translation-en* >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get -o Acquire::Languages=en update -q; \
	    else sudo apt-get -o Acquire::Languages=en update -q; fi; \
	  fi
debian-descriptions: install
	@if [ ! -d $(DEBIAN)/unlabeled ]; then \
	  $(APT_EN); \
	  $(BIN)/kdx data build debian-descriptions --out $(DEBIAN); \
	fi
debian-lm: install
	@if [ ! -f $(DEBIAN_LM)/dataset_info.json ] && [ ! -f $(DEBIAN_LM)/state.json ]; then \
	  $(APT_EN); \
	  $(BIN)/kdx data build debian-lm --out $(DEBIAN_LM); \
	fi
demo-text: debian-descriptions
	OMP_NUM_THREADS=1 $(BIN)/kdx study configs/studies/sources_text.yaml --runs-dir $(RUNS) --workers 2

# docs/findings.md: the studies of configs/findings.yaml (self-distillation at convergence, budgets, the
# noise-share puzzle, the difficulty map on MNIST-1D, Fashion-MNIST and text, the LM token slopes) and the
# eigen simulation, each resumed where it stopped, then the page and docs/findings/*.png. Many hours on
# the 2-core CPU (each study's wall time is on the page), one thread a process.
findings: install fashion-mnist debian-descriptions debian-lm
	OMP_NUM_THREADS=1 $(BIN)/kdx findings --run --workers 2 --runs-dir $(RUNS)

# Chromium for the explorer's browser tests (playwright drives /usr/bin/chromium; its own browser
# download is not used). Without root or apt those tests skip, saying why.
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium); \
	else echo "chromium: missing (sudo apt-get install chromium); the explorer's browser tests will skip"; fi

# the ray, tracker, ONNX and timm extras too, so that CI runs their tests (`kdx study --executor ray`, every
# tracker read back with its own reader, the ONNX export, a timm teacher); FiftyOne stays out (its database
# package downloads MongoDB when it installs: README), and its test skips saying so
TEST_EXTRAS = dev,ray,trackers,onnx,timm
test: install chromium
	$(BIN)/pip install -q -e '.[$(TEST_EXTRAS)]'
	$(BIN)/python -m pytest

# the same suite in a random order (pytest-randomly); the seed is printed first: `make test-random SEED=N` replays it
test-random: install chromium
	$(BIN)/pip install -q -e '.[$(TEST_EXTRAS)]'
	@seed=$${SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; echo "pytest-randomly seed $$seed (replay: make test-random SEED=$$seed)"; \
	$(BIN)/python -m pytest -p randomly --randomly-seed=$$seed

clean:
	rm -rf $(VENV) $(RUNS)
