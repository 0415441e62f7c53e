"""The wrapper's files in a workspace and how much of each is read back: part of the port's
contract, the caps every backend reads within (all of it was written by the job)."""

from __future__ import annotations

from app.adapters.ports import META_DIR, Capture

META_PATH = META_DIR
LOG_FILES = ("stdout.log", "stderr.log")
TOTAL_FILES = ("stdout.total", "stderr.total")
METRICS_FILE = "metrics.tsv"
WRAPPER_FILES = (*LOG_FILES, *TOTAL_FILES, METRICS_FILE)
# Present (empty) when the output folder was empty as the command ended: its read is skipped.
# Only ever taken from the folder's one archive, never looked for file by file.
OUTPUT_EMPTY_FILE = "output.empty"

# A *.total holds one decimal number: anything longer is not the wrapper's.
MAX_TOTAL_BYTES = 32
# metrics.tsv: its first and last bytes are kept (the start line is at the head, the final
# sample and the exit line at the tail); the file is read through at most METRICS_READ_BYTES.
METRICS_HEAD_BYTES = 2 * 1024 * 1024
METRICS_TAIL_BYTES = 2 * 1024 * 1024
METRICS_READ_BYTES = 64 * 1024 * 1024
# The wrapper's folder holds a dozen entries; a job may fill it with more.
MAX_META_ENTRIES = 64


BodyCapture = Capture


def capture_for(name: str, size: int, log_limit: int) -> BodyCapture | None:
    """How much of each of the wrapper's files is kept; None for any other file."""
    if name in LOG_FILES:
        return BodyCapture(size, log_limit)
    if name in TOTAL_FILES:
        return BodyCapture(size, MAX_TOTAL_BYTES)
    if name == METRICS_FILE:
        return BodyCapture(size, METRICS_HEAD_BYTES, METRICS_TAIL_BYTES)
    if name == OUTPUT_EMPTY_FILE:
        return BodyCapture(size, 0)
    return None
