"""The service's log lines: control characters from user input never reach them raw."""

from __future__ import annotations

import json
import logging
import re

from app.observability import JsonFormatter, TextFormatter, escape_controls

RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
NASTY = "a\x1b[2Jb\r\nFAKE 2026 INFO forged\x7f\x9b\u2028\u202e\tend"


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad {NASTY}")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("taskdeploy.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_escapes_are_readable_and_reversible_by_eye() -> None:
    assert (
        escape_controls("x\x1b[31my\r\n\x7f\x9b\u2028") == "x\\x1b[31my\\x0d\\x0a\\x7f\\x9b\\u2028"
    )
    assert escape_controls("plain text, ünïcode and a \\ backslash") == (
        "plain text, ünïcode and a \\ backslash"
    )


def test_a_text_record_is_one_line_without_control_characters() -> None:
    line = TextFormatter("%(levelname)s %(name)s: %(message)s").format(
        record("run %s: %s", "r1", NASTY)
    )
    assert "\n" not in line and not RAW.search(line)
    assert line.startswith("WARNING taskdeploy.test: run r1: a\\x1b[2Jb\\x0d\\x0aFAKE")


def test_a_traceback_keeps_its_lines_escaped_and_indented() -> None:
    text = TextFormatter("%(levelname)s: %(message)s").format(record("failed", exc=True))
    first, *rest = text.split("\n")
    assert first == "WARNING: failed"
    assert rest and all(line.startswith("    ") for line in rest)
    assert not RAW.search(text)
    # A line break inside the message breaks the traceback there, indented like the rest: a
    # forged record cannot start a line.
    assert "    ValueError: bad a\\x1b[2Jb\\x0d" in rest
    assert "    FAKE 2026 INFO forged\\x7f\\x9b\\u2028\\u202e\\x09end" in rest


def test_a_json_record_has_no_control_characters_even_decoded() -> None:
    line = JsonFormatter().format(record("run %s: %s", "r1", NASTY, exc=True))
    assert "\n" not in line and not RAW.search(line)
    entry = json.loads(line)
    assert not RAW.search(entry["message"])
    assert entry["message"].startswith("run r1: a\\x1b[2Jb")
    assert not RAW.search(entry["exception"].replace("\n", ""))
