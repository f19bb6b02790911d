# Everyday verbs. `make up` runs the whole system locally, `make test` tests it.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BRANCH ?= *
ROLE ?= admin
ORG ?= demo

.PHONY: install up down logs token dlq test test-unit lint format infra-up infra-down infra-reset status bench bench-profile

$(VENV)/.installed: pyproject.toml uv.lock deploy/versions.env deploy/local/bootstrap.sh
	PYTHON=$(PYTHON) bash deploy/local/bootstrap.sh
	@touch $@

install: $(VENV)/.installed  ## virtualenv with the locked dependencies

infra-up:  ## local Kafka (KRaft) and SecantusDB, installed on first use
	bash deploy/local/infra.sh up

infra-down:
	bash deploy/local/infra.sh down

infra-reset:  ## stop the local infrastructure and delete its data (fresh start for make bench)
	bash deploy/local/infra.sh reset

up: install infra-up  ## everything: infrastructure, demo data, the four services
	bash deploy/local/services.sh up
	@echo
	@echo "intake    http://127.0.0.1:8001/docs"
	@echo "routing   http://127.0.0.1:8002/docs"
	@echo "followup  http://127.0.0.1:8003/docs"
	@echo "webhooks  http://127.0.0.1:8004/docs"
	@echo "token:    export TOKEN=\$$(make -s token)   (narrower: make -s token BRANCH=LZ ROLE=agent)"

down:  ## stop the services, then the infrastructure
	bash deploy/local/services.sh down
	bash deploy/local/infra.sh down

status:
	@bash deploy/local/services.sh status; bash deploy/local/infra.sh status || true

logs:  ## follow the services' and infrastructure's logs
	tail -n 40 -F .local/logs/*.log

token: install  ## a demo bearer token: make -s token BRANCH=LZ ROLE=agent
	@bash deploy/local/services.sh exec $(VENV)/bin/complaints-token --org '$(ORG)' --branches '$(BRANCH)' --roles '$(ROLE)'

dlq: install  ## dead letters: make dlq ARGS="list" (list --summary, inspect, replay --complaint-id ..., dismiss; docs/operations.md)
	bash deploy/local/services.sh exec $(VENV)/bin/complaints-dlq $(ARGS)

test: install  ## the whole suite against real Kafka and MongoDB (started if needed)
	$(VENV)/bin/pytest

test-unit: install  ## pure-logic tests (the API fuzz builds its cases while collected: left out)
	$(VENV)/bin/pytest -m "not integration" --ignore=tests/test_api_fuzz.py

bench: install infra-up  ## throughput/latency figures (docs/performance.md); BENCH_ARGS="--backlog 2000"
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

bench-profile: install infra-up  ## py-spy profile of intake and the database under POST load
	$(VENV)/bin/python -m bench.profile $(BENCH_ARGS)

bench-webhooks: install infra-up  ## webhook deliveries/s and event-to-2xx latency, 1 and 50 subscriptions
	$(VENV)/bin/python -m bench.webhooks $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
