"""API fuzzing with schemathesis against the running service's own OpenAPI document: every
operation, authenticated, must never answer 5xx nor anything its schema does not describe.

CI runs a bounded number of examples per operation (TASKDEPLOY_FUZZ_EXAMPLES, default 20);
a release check runs more: TASKDEPLOY_FUZZ_EXAMPLES=500 ./scripts/test tests/e2e/test_fuzz.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import create_database, new_key, pg_s3_env


@pytest.mark.slow
async def test_every_operation_survives_fuzzing(
    service_factory: Any, postgres_url: str, s3_endpoint: str
) -> None:
    database = await create_database(postgres_url)
    # Workers off: fuzzed runs stay queued instead of starting thousands of containers.
    service = service_factory(
        {
            **pg_s3_env(database, s3_endpoint),
            "TASKDEPLOY_WORKERS_ENABLED": "false",
            "TASKDEPLOY_FOLLOW_MAX_SECONDS": "0.2",  # queued runs never end here
            "TASKDEPLOY_WAIT_MAX_SECONDS": "0.2",  # nor do their waits
            "TASKDEPLOY_ALLOWED_BUCKETS": "*",  # the fuzzer's key may name any bucket
        }
    )
    token = new_key(service, "fuzzer", admin=True)
    examples = os.environ.get("TASKDEPLOY_FUZZ_EXAMPLES", "20")
    schemathesis = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{service.base_url}/openapi.json",
            "--max-examples",
            examples,
            "--seed",
            "1",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--generation-database",
            "none",
            "--header",
            f"Authorization: Bearer {token}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "No issues found" in done.stdout or " passed" in done.stdout, report
