# pretrain: `make demo` runs the whole job end to end, `make test` the whole suite.
# Both create and reuse .venv, installing everything in the order it needs:
# torch (pinned CPU build) first, then DeepSpeed without build isolation
# (its build imports torch), then the project and the rest.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Exact versions have one source, constraints.txt (pyproject.toml states the ranges that work).
PINS      := -c constraints.txt
TORCH     := $(shell grep -E '^torch==' constraints.txt)
DEEPSPEED := $(shell grep -E '^deepspeed==' constraints.txt)
DEMO_RUN  := demo-$(shell date +%Y%m%d-%H%M%S)
DEMO      := --config configs/demo.yaml tracking.run_name=$(DEMO_RUN)

.DEFAULT_GOAL := help
.PHONY: help install demo test mlflow-ui clean slurm

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH)
	$(PIP) install -q --no-build-isolation $(PINS) $(DEEPSPEED)
	$(PIP) install -q --no-build-isolation $(PINS) -e ".[test]"
	# DeepSpeed compiles its shared-memory collective for CPU ranks the first time a rank needs it (49 CPU-s
	# here, cached in a folder of this venv's own under ~/.cache/torch_extensions): done at install, as a rank
	# does it, not in the first job or test. No-op on GPUs.
	$(PY) -c "from pretrain.train.engine import build_cpu_collective; build_cpu_collective()"
	touch $@

install: $(STAMP) ## create .venv and install everything (skipped when up to date)

demo: $(STAMP) ## the main job end to end on the embedded corpus: data, 2-process training, export, generate
	$(VENV)/bin/pretrain data build $(DEMO)
	$(VENV)/bin/pretrain data cloze $(DEMO) --examples 300
	$(VENV)/bin/pretrain train $(DEMO)
	$(VENV)/bin/pretrain export $(DEMO)
	$(VENV)/bin/pretrain eval $(DEMO) --out outputs/runs/$(DEMO_RUN)-eval.json
	$(VENV)/bin/pretrain generate $(DEMO) --prompt "Return the" --max-new-tokens 48
	@echo
	@echo "Outputs of this demo:"
	@echo "  shards and manifest:  outputs/data/stdlib/"
	@echo "  run folder:           outputs/runs/$(DEMO_RUN)/  (checkpoints/, config.yaml, summary.json)"
	@echo "  exported model:       outputs/runs/$(DEMO_RUN)/export/  (a Hugging Face folder: docs/export.md)"
	@echo "  held-out cloze task:  outputs/data/stdlib/cloze.jsonl, scored as eval/cloze/acc (docs/evaluation.md)"
	@echo "  evaluation:           outputs/runs/$(DEMO_RUN)-eval.json  (each example's log-likelihoods)"
	@echo "  MLflow run '$(DEMO_RUN)' in experiment 'demo' (mlflow.db): make mlflow-ui, then open the link it prints"

test: $(STAMP) ## the whole test suite (installs a local Slurm first where it can: make slurm)
	@$(MAKE) --no-print-directory slurm || echo "make test: no Slurm here; the Slurm tests will say so"
	$(PY) -m pytest -n 3 --durations=15

slurm: ## install a local Slurm (slurm-wlm, munge) for the Slurm tests; quick when already there
	@if command -v sbatch >/dev/null 2>&1 && command -v slurmctld >/dev/null 2>&1 \
	    && command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then \
	    echo "slurm: already installed ($$(slurmd -V))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "slurm: installing slurm-wlm and munge with apt-get"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null && \
	    echo "slurm: installed ($$(slurmd -V))"; \
	else \
	    echo "slurm: sbatch/slurmctld/slurmd/munged not found; install them as root, e.g." \
	         "'apt-get install slurm-wlm munge' (Debian/Ubuntu), then rerun make slurm" >&2; \
	    exit 1; \
	fi

mlflow-ui: $(STAMP) ## open the MLflow UI on the local store (mlflow.db); prints the link to the demo's runs
	@$(PY) -c 'from mlflow import MlflowClient; e = MlflowClient("sqlite:///mlflow.db").get_experiment_by_name("demo"); \
	print(f"the demo runs: http://127.0.0.1:5000/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning" if e else \
	"no demo runs yet (make demo); the UI: http://127.0.0.1:5000")' 2>/dev/null
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean: ## remove outputs and the local MLflow store (keeps .venv)
	rm -rf outputs mlflow.db mlruns
