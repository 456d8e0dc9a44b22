# Quick start: `make run`, then `make test`. Every install step lives here: CI starts from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Harmless values for the local sandbox; real deployments set real secrets in the environment.
SANDBOX_ENV := TYPEFORM_SECRET=$${TYPEFORM_SECRET:-dev-typeform-secret} GOOGLE_ADS_KEY=$${GOOGLE_ADS_KEY:-configured-secret-7f3c2a} WORDPRESS_SECRET=$${WORDPRESS_SECRET:-dev-wordpress-secret} HUBSPOT_TOKEN=$${HUBSPOT_TOKEN:-sandbox-token} SLACK_BOT_TOKEN=$${SLACK_BOT_TOKEN:-xoxb-sandbox}

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: install
	$(SANDBOX_ENV) $(BIN)/leadbridge run --sandbox --config config.example.yaml

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check bridge connectors tests bench
	$(BIN)/mypy bridge connectors

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
