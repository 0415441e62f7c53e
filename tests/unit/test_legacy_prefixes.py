"""Which folders a legacy result prefix could collide with."""

from __future__ import annotations

from app.services.legacy import enclosing_prefixes, folders_of_runs_above


def test_enclosing_prefixes_include_the_prefix_itself() -> None:
    assert enclosing_prefixes("a/") == ["a/"]
    assert enclosing_prefixes("a/b/c/") == ["a/", "a/b/", "a/b/c/"]


def test_folders_of_runs_that_would_hold_a_prefix() -> None:
    # <output prefix><run id>/ holds "out/R/x/" when the output prefix is "out/" and the run R,
    # or the output prefix is "" and the run is called "out", and so on.
    assert folders_of_runs_above("out/R/x/") == [("", "out"), ("out/", "R"), ("out/R/", "x")]
    assert folders_of_runs_above("R/") == [("", "R")]
