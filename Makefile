# milvus-backfill: build, demo and tests. Everything a fresh machine needs is
# installed by these targets (into $(MB_HOME), outside the repo).
SHELL := /bin/bash
MB_HOME ?= $(HOME)/.cache/milvus-backfill
export MB_HOME
E2E_STATE := $(MB_HOME)/e2e
BIN := target/release/milvus-backfill
DATA := target/e2e-data

.PHONY: build demo test unit-test e2e-test env-up env-down lint bench clean-env

build:
	cargo build --release --workspace --locked

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

unit-test:
	cargo test --release --workspace --locked

# Real environment: starts Milvus + S3 (kept running if they were already up),
# builds the dataset, runs the integration tests, and stops what it started.
e2e-test: build
	e2e/run-e2e.sh

test: lint unit-test e2e-test

bench: build
	bench/run.sh
