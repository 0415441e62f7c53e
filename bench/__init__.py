"""Benchmarks: the service against a raw-Docker floor and the old per-run-build design."""
