"""Which entries of the output folder's archive are uploaded: regular files within the caps."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.adapters.tarstream import TarEntry, TarStreamParser

MAX_SKIPPED_LISTED = 1000
# How many entries of the output archive are read at most (or twice the file cap, if larger):
# 200 000 empty files make a 100 MB archive in which every header costs Python work.
MAX_OUTPUT_ENTRIES = 100_000


def output_entry_cap(max_files: int) -> int:
    """How many entries of the output archive are read for a run with this file cap."""
    return max(MAX_OUTPUT_ENTRIES, 2 * max_files)


@dataclass
class SkippedMember:
    path: str
    kind: str
    reason: str


@dataclass(frozen=True)
class OutputMember:
    path: str  # relative to /workspace/output
    size: int
    offset: int  # where its bytes start in the archive (a hard link: those of its target)


@dataclass
class OutputPlan:
    files: list[OutputMember] = field(default_factory=list)
    skipped: list[SkippedMember] = field(default_factory=list)
    skipped_count: int = 0  # may exceed len(skipped): the list is capped
    limit_reason: str | None = None

    def skip(self, path: str, kind: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append(SkippedMember(path, kind, reason))

    def note(self, reason: str) -> None:
        """Adds to limit_reason; the first reason also ends the uploads."""
        self.limit_reason = f"{self.limit_reason}; {reason}" if self.limit_reason else reason


def safe_member_path(name: str, root: str) -> str | None:
    """The member's path below `root` (the archive's top folder) if it stays inside, else None."""
    if name.startswith("/") or "\x00" in name:
        return None
    parts = name.split("/")
    if parts and parts[0] == root:
        parts = parts[1:]
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def _key_problem(rel: str, max_key_bytes: int) -> str | None:
    """Why `rel` cannot be an object-key suffix, or None."""
    try:
        encoded = rel.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "name has control characters"
    if len(encoded) > max_key_bytes:
        return f"path is longer than {max_key_bytes} bytes"
    return None


def _printable(name: str) -> str:
    return name.encode("utf-8", "replace").decode()


class OutputPlanner:
    """Plans the uploads while the archive streams in, one header at a time (the `on_entry` of
    a TarStreamParser): regular files, and hard links to them under their own names, while the
    file cap (`max_files`), the byte cap (`max_bytes`) and the bytes kept of the archive
    (`kept_bytes`: a file whose body ends past them cannot be read back) allow. `reserved` names
    the service's own files beside the outputs: a member at (or under) such a name is skipped.
    Everything else is skipped and listed (the first MAX_SKIPPED_LISTED by name, the rest
    counted).

    Nothing is kept per entry but the planned files, so the memory is bounded by `max_files`
    however many entries the archive holds; after `max_entries` entries `full` is set and the
    caller stops reading.
    """

    def __init__(
        self,
        *,
        root: str,
        max_files: int,
        max_bytes: int,
        kept_bytes: int,
        max_key_bytes: int = 900,
        max_entries: int | None = None,
        reserved: frozenset[str] = frozenset(),
    ) -> None:
        self.root = root
        self.reserved = reserved
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.kept_bytes = kept_bytes
        self.max_key_bytes = max_key_bytes
        self.max_entries = max_entries if max_entries is not None else output_entry_cap(max_files)
        self.plan = OutputPlan()
        self.full = False
        self._total = 0
        self._entries = 0
        self._planned: dict[str, OutputMember] = {}  # archive name -> planned file

    def on_entry(self, entry: TarEntry) -> None:
        if self.full:
            return
        self._entries += 1
        if self._entries > self.max_entries:
            self.full = True
            self.plan.note(
                f"the output folder holds more than {self.max_entries} entries: the rest were "
                "not read, uploaded or listed"
            )
            return
        kind = entry.kind
        if kind == "directory":
            return
        plan = self.plan
        if plan.limit_reason is not None and len(plan.skipped) >= MAX_SKIPPED_LISTED:
            plan.skipped_count += 1  # past every cap and the listing: only counted
            return
        rel = safe_member_path(entry.name, self.root)
        if rel is None:
            plan.skip(_printable(entry.name), kind, "path escapes the output folder")
            return
        problem = _key_problem(rel, self.max_key_bytes)
        if problem is not None:
            plan.skip(_printable(rel), kind, problem)
            return
        if rel in self.reserved or rel.partition("/")[0] in self.reserved:
            plan.skip(rel, kind, "the name of one of the service's own files: not uploaded")
            return
        if kind == "hardlink" and entry.linkname in self._planned:
            # Docker archives the first name of a file as regular and the others as links to
            # it: each name is the user's file and is uploaded.
            target = self._planned[entry.linkname]
            self._admit(entry, rel, kind, target.offset, target.size, target.offset + target.size)
            return
        if kind != "regular":
            plan.skip(rel, kind, "only regular files are uploaded")
            return
        self._admit(entry, rel, kind, entry.data_offset, entry.size, entry.data_end)

    def _admit(
        self, entry: TarEntry, rel: str, kind: str, offset: int, size: int, end: int
    ) -> None:
        plan = self.plan
        if plan.limit_reason is None and end > self.kept_bytes:
            plan.limit_reason = "output archive was cut short at the output size cap"
        if plan.limit_reason is None and len(plan.files) >= self.max_files:
            plan.limit_reason = (
                f"output file cap reached: only the first {self.max_files} files were uploaded"
            )
        if plan.limit_reason is None and self._total + size > self.max_bytes:
            plan.limit_reason = (
                f"output size cap reached: files past {self.max_bytes} bytes were not uploaded"
            )
        if plan.limit_reason is not None:
            plan.skip(rel, kind, "over the output caps")
            return
        self._total += size
        member = OutputMember(rel, size, offset)
        self._planned[entry.name] = member
        plan.files.append(member)


def plan_outputs(
    data: bytes,
    *,
    root: str,
    max_files: int,
    max_bytes: int,
    kept_bytes: int | None = None,
    max_key_bytes: int = 900,
    max_entries: int | None = None,
    reserved: frozenset[str] = frozenset(),
) -> OutputPlan:
    """The plan for a whole archive in memory (tests, small archives)."""
    planner = OutputPlanner(
        root=root,
        max_files=max_files,
        max_bytes=max_bytes,
        kept_bytes=len(data) if kept_bytes is None else kept_bytes,
        max_key_bytes=max_key_bytes,
        max_entries=max_entries,
        reserved=reserved,
    )
    parser = TarStreamParser(planner.on_entry)
    parser.feed(data)
    return planner.plan
