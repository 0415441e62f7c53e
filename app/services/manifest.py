"""run.json: what a run asked for, how it went and what it left, as a pure function."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.adapters.ports import AttemptExit
from app.models import Run, RunEvent, RunState
from app.services.outputs import OutputPlan


def build_manifest(
    run: Run,
    *,
    final: RunState,
    reason: str | None,
    exit: AttemptExit,
    events: list[RunEvent],
    now: datetime,
    instance_id: str,
    artifacts: list[dict[str, Any]],
    plan: OutputPlan,
    logs: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    states = [{"state": e.to_state, "at": e.at.isoformat(), "detail": e.detail} for e in events]
    states.append({"state": final.value, "at": now.isoformat(), "detail": reason})
    return {
        "run_id": run.id,
        "request": {
            "command": run.command,
            "packages": run.packages,
            "image": run.image,
            "input": run.input_uri,
            "output": run.output_uri,
            "resources": {"cpus": run.cpus, "memory_mb": run.memory_mb},
            "timeout_seconds": run.timeout_seconds,
            "env": run.env,
            "network": run.network,
        },
        "state": final.value,
        "status_reason": reason,
        "states": states,
        "exit_code": exit.code,
        "oom_killed": exit.oom_killed,
        "image": {"base": run.image, "environment_image_id": run.image_id, "key": run.env_key},
        "instance_id": instance_id,
        "logs": logs,
        "artifacts": list(artifacts),
        "skipped_outputs": [
            {"path": s.path, "kind": s.kind, "reason": s.reason} for s in plan.skipped
        ],
        "skipped_outputs_count": plan.skipped_count,
        "harvest_notes": notes,
    }
