# milvus-backfill: build, demo and tests. Everything a fresh machine needs is
# installed by these targets (into $(MB_HOME), outside the repo).
SHELL := /bin/bash
MB_HOME ?= $(HOME)/.cache/milvus-backfill
export MB_HOME
E2E_STATE := $(MB_HOME)/e2e
BIN := target/release/milvus-backfill
DATA := target/e2e-data

.PHONY: build test-build demo test unit-test gitops-test e2e-test v3-test env-up env-down reset-env lint bench bench-scale bench-plan crds k8s-test operator-e2e

# The same build as test-build: one feature set, so `make demo` after `make test` (or the other
# way round) rebuilds nothing.
build:
	cargo build --release --workspace --all-targets --locked

# What the suites run: every target of the workspace, with the features `cargo test --workspace`
# resolves, so that no suite rebuilds the dependencies with another feature set (a `-p` build
# or a build without the dev-dependencies would, several minutes each).
test-build:
	cargo build --release --workspace --all-targets --locked

env-up:
	e2e/env-up.sh

env-down:
	e2e/env-down.sh

# The demo: real Milvus 2.3.5 + S3 on loopback, a demo collection, then `milvus-backfill run`.
demo: build env-up
	e2e/demo.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets --locked -- -D warnings
	charts/milvus-backfill/sync-crds.sh --check

# Regenerates the CRD from the Rust types (a test fails while it is stale) and the chart's copy.
crds:
	cargo run --release --locked -p milvus-backfill-operator -- crd > crds/backfills.milvusbackfill.io.yaml
	charts/milvus-backfill/sync-crds.sh

unit-test:
	cargo test --release --workspace --locked

# Real environment: starts Milvus + S3 (kept running if they were already up),
# builds the dataset, runs the integration tests, and stops what it started.
e2e-test: test-build
	e2e/run-e2e.sh

# What Argo CD (its Lua health check) and Flux (kstatus) conclude of the sample statuses.
gitops-test:
	docs/argocd/test.sh

# Milvus 3.0 StorageV3 against the official milvus-storage library (PyPI wheel, installed into
# $(MB_HOME)/v3-venv): its writer makes segments, `milvus-backfill run` plans from the snapshot
# alone, its transaction commits our ops as DataCoord does, its reader reads every row back.
# A local root and an S3 leg (moto_server on 127.0.0.1).
v3-test: test-build
	e2e/v3/run.sh

# Stops a test bed an interrupted earlier run left behind, and starts the control plane with
# empty etcd data: no server, Pod or object of another run takes part in this one.
reset-env:
	e2e/reset.sh

test: reset-env lint unit-test gitops-test v3-test e2e-test k8s-test

bench: build
	bench/run.sh

# The same job over many segments (BENCH_SEGMENTS, default 200) against DuckDB and PySpark.
bench-scale: build
	bench/scale.sh

# Planning time of 10,000 segments (a stand-in Milvus over gRPC, binlogs in a local directory).
bench-plan:
	cargo run --release --locked --example plan_bench -- $(MB_HOME)/plan-bench 10000

# The Kubernetes suites (part of `make test`): builds etcd, kube-apiserver,
# kube-controller-manager, kubectl and helm from Go modules into $(MB_HOME)/k8s (about 15 min
# the first time, cached after), then the control-plane smoke test, the pod runner smoke test,
# the chart tests (lint/template, then install/upgrade/uninstall on the real API server), the
# operator's control-plane check, and the operator end to end with the real Milvus and S3.
k8s-test: test-build
	e2e/k8s/build.sh
	e2e/k8s/smoke.sh
	e2e/pod-runner/smoke.sh
	e2e/k8s/with-control-plane.sh charts/milvus-backfill/test.sh --server
	operator/e2e/control-plane-check.sh
	e2e/operator-e2e.sh
	e2e/operator-scenarios.sh

# Operator end to end: control plane + pod runner + Helm chart + real Milvus and S3.
operator-e2e: test-build
	e2e/operator-e2e.sh
	e2e/operator-scenarios.sh
