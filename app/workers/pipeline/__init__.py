"""The per-run pipeline: an orchestrator over one module per phase, through the RunBackend port."""

from app.workers.pipeline.context import PipelineConfig
from app.workers.pipeline.orchestrator import RunOrchestrator

__all__ = ["PipelineConfig", "RunOrchestrator"]
