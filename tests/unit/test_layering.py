"""The import direction of app/: routers → services → repositories and ports; workers → services
and ports; adapters depend on nothing of ours but the ports; errors know nothing of HTTP.

Read from the source (every import statement, those inside functions and TYPE_CHECKING blocks
included), so a forbidden import fails here before it can become a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
WEB_FRAMEWORKS = ("fastapi", "starlette")
# The engine's and the object store's SDKs stay behind the adapters (httpx, for URL parsing, is
# not among them: services use its URL type, the webhook sender adapter does the sending).
VENDOR_SDKS = ("aiodocker", "aioboto3", "botocore", "aiobotocore")


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(source: str, package: str) -> set[str]:
    """Every module `source` imports, absolute (`from app import migrate` is app.migrate);
    relative imports are read from `package`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules_under(*names: str) -> list[Path]:
    paths: list[Path] = []
    for name in names:
        target = APP / name
        paths += sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
    return paths


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """For each module, the imports that are, or lie inside, one of `forbidden`."""
    found: dict[str, list[str]] = {}
    for path in paths:
        bad = sorted(
            name
            for name in imports_of(path.read_text(), package_of(path))
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if bad:
            found[module_name(path)] = bad
    return found


RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    # (what, the modules, what they must not import)
    ("errors know nothing of HTTP", ("errors",), (*WEB_FRAMEWORKS, "app.exception_handlers")),
    (
        "services are below the web layer",
        ("services",),
        (
            *WEB_FRAMEWORKS,
            *VENDOR_SDKS,
            "app.routers",
            "app.deps",
            "app.main",
            "app.context",
            "app.workers",
        ),
    ),
    (
        "repositories hold SQL only",
        ("repositories",),
        (
            *WEB_FRAMEWORKS,
            "app.services",
            "app.routers",
            "app.workers",
            "app.adapters",
            "app.schemas",
            "app.errors",
        ),
    ),
    (
        "adapters depend only on the ports",
        ("adapters",),
        (
            *WEB_FRAMEWORKS,
            "app.workers",
            "app.services",
            "app.routers",
            "app.repositories",
            "app.models",
            "app.config",
        ),
    ),
    ("routers go through services", ("routers",), ("app.repositories", "app.workers")),
    (
        "workers are not web code and reach vendors through ports",
        ("workers",),
        (*WEB_FRAMEWORKS, *VENDOR_SDKS, "app.routers", "app.deps"),
    ),
    ("routers reach vendors through services", ("routers",), VENDOR_SDKS),
    ("schemas are the contract only", ("schemas",), ("app.repositories", "app.routers")),
    (
        "the app's builder is imported by nobody in the app",
        ("routers", "services", "workers", "deps", "context", "readiness", "presenters"),
        ("app.main",),
    ),
]


@pytest.mark.parametrize(("what", "modules", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_import_direction(what: str, modules: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    paths = modules_under(*modules)
    assert paths, f"no modules found for {modules}"
    assert offending(paths, forbidden) == {}, what


def test_the_checker_sees_every_kind_of_import() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from app.main import AppContext\n"
        "def f():\n    import fastapi.responses\n"
        "from . import deps\nfrom ..repositories import runs\n"
    )
    found = imports_of(source, "app.routers")
    assert {"app.main", "fastapi.responses", "app.routers.deps", "app.repositories.runs"} <= found
