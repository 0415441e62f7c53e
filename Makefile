# Developer entry points. `make bench` brings up what the e2e tests use (venv, Docker engine,
# base images, moto's S3) exactly as scripts/test does, and its own PostgreSQL cluster at the
# default durability (fsync=on, synchronous_commit=on; the tests' runs with fsync=off), then
# runs the benchmarks.
# BENCH_ARGS go to bench.run_all: --quick, --scenario NAME (repeatable), --profile.

BENCH_ARGS ?=

.PHONY: bench
bench:
	scripts/ensure-venv.sh
	scripts/ensure-docker.sh
	scripts/ensure-images.sh
	@set -e; \
	db=$$(scripts/ensure-postgres.sh --durable); db=$$(printf '%s\n' "$$db" | tail -n 1); \
	s3=$$(scripts/ensure-moto.sh); s3=$$(printf '%s\n' "$$s3" | tail -n 1); \
	echo "TASKDEPLOY_TEST_DATABASE_URL=$$db TASKDEPLOY_TEST_S3_ENDPOINT=$$s3"; \
	TASKDEPLOY_TEST_DATABASE_URL=$$db TASKDEPLOY_TEST_S3_ENDPOINT=$$s3 \
		.venv/bin/python -m bench.run_all $(BENCH_ARGS)
