# octoconn — common tasks. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
UV ?= uv
PYTEST_ARGS ?=

.PHONY: help setup setup-demo test test-unit test-cluster test-faults lint fmt crds cluster demo image audit bench bench-paced clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

setup: ## install Debian packages, uv, Python deps, every Go-built binary and the image base (idempotent)
	@bash hack/setup.sh

setup-demo: ## install only what the demo needs: uv, Python deps, etcd, kube-apiserver, kubectl (idempotent)
	@bash hack/setup.sh --demo

test: setup ## run every test tier (unit, contract, test servers, cluster, faults, packaging)
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: ## fast tiers only: no control plane
	$(UV) run --frozen pytest -m "not cluster and not faults" $(PYTEST_ARGS)

test-cluster: setup-demo ## the cluster tier only (real kube-apiserver + etcd)
	$(UV) run --frozen pytest -m cluster $(PYTEST_ARGS)

test-faults: setup ## the fault tier only: API server restarts, a hanging Infisical, SIGKILLs (docs/reliability.md)
	$(UV) run --frozen pytest -m faults $(PYTEST_ARGS)

lint: ## ruff, formatting, mypy --strict and the import contract (.importlinter)
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy
	$(UV) run --frozen lint-imports

fmt: ## format and auto-fix
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

crds: ## regenerate crds/ and the chart's copy from operator/octoconn/models.py and sync_models.py
	$(UV) run --frozen python -m octoconn.crd --write crds helm/octoconn/crds

cluster: setup-demo ## start a local control plane (etcd + kube-apiserver) and print its KUBECONFIG; Ctrl-C stops it
	$(UV) run --frozen python -m tests.envtest

demo: setup-demo ## the operator's main job end to end on a local control plane and test servers
	$(UV) run --frozen python hack/demo.py

image: ## build the operator image with podman and its CycloneDX SBOM (IMAGE=..., PYTHON_IMAGE=...)
	@bash hack/image.sh build

audit: ## known vulnerabilities in uv.lock with osv-scanner: online, or offline with OCTOCONN_ADVISORY_DB=<folder>
	@bash hack/audit.sh

bench: setup ## the scale benchmark: 1 and 1000 resources beside the floor, 200 secret syncs (bench/README.md)
	$(UV) run --frozen python bench/operator_scale.py --resources 1
	$(UV) run --frozen python bench/operator_scale.py --resources 1000 --samples 0
	$(UV) run --frozen python bench/operator_scale.py --syncs 200

bench-paced: setup ## 500 creates with the default paces against Infisical Cloud's limits (takes about 5 minutes)
	$(UV) run --frozen python bench/operator_scale.py --resources 500 --paced

clean: ## remove local state (not the binary cache)
	rm -rf .cluster .pytest_cache .mypy_cache .ruff_cache
