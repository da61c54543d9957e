# metaops: two commands on a fresh machine with only Python 3.10+.
#   make demo   meta-trains MAML-TRPO on 2D navigation (the main job), writes runs/maml_trpo_demo/
#   make test   runs the whole test suite, the docs build (strict) and the linters
# Both bootstrap .venv from pyproject.toml on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned here: a bare "torch" requirement could pull a multi-GB
# CUDA build, while torch==2.13.0 is a CPU wheel on our machines. Override to taste, e.g.
#   make test TORCH_SPEC="torch==2.5.1"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
export NO_MKDOCS_2_WARNING := 1

.PHONY: venv demo demo-sine test test-fast docs serve-docs bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,docs,bench,fewshot]"
	touch $@

venv: $(VENV)/.installed

# The MAML-TRPO recipe's defaults are the MAML paper's (hours on a CPU); the demo scales the
# meta-batch and the policy down so that it learns within a couple of minutes.
DEMO_ARGS ?= --env Navigation2D --meta-batch 10 --episodes 10 --hidden 32 32 --iterations 40 \
	--policy bounded --inner-max-kl 0.3 --eval-tasks 20 --out-dir runs/maml_trpo_demo

demo: venv
	$(PY) -m recipes.maml_trpo $(DEMO_ARGS)

demo-sine: venv
	$(PY) -m recipes.maml_sine

# The whole suite: the default tier and the slow learning tests (about a minute more).
test: venv
	$(PY) -m pytest -n 2 -m "slow or not slow" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lint docs

test-fast: venv
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check metaops recipes tests benchmarks
	$(VENV)/bin/lint-imports

docs: venv
	$(VENV)/bin/mkdocs build --strict --quiet

serve-docs: venv
	$(VENV)/bin/mkdocs serve

bench: venv
	$(PY) benchmarks/bench_meta_grad.py

clean:
	rm -rf $(VENV) site runs .pytest_cache
