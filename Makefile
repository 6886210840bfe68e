# kube-dmvpn: `make lab` runs the lab demo, `make test` runs every check. Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap test lab lint unit crds bench clean

bootstrap:
	@bash tools/bootstrap.sh

test:
	@bash tools/test.sh

lab: bootstrap
	@$(PY) -m dmvpn.lab.guest $(abspath $(PY)) -m dmvpn.lab.demo

lint: bootstrap
	@bash tools/lint.sh

unit: bootstrap
	@$(PY) -m pytest -m "not kernel" -q

crds: bootstrap
	@$(PY) -m dmvpn.api.crdgen crds

bench: bootstrap
	@$(PY) -m dmvpn.lab.guest $(abspath $(PY)) bench/run_all.py

clean:
	rm -rf .lab .pytest_cache .mypy_cache .ruff_cache
