"""``callrec.api`` (JSON) and ``callrec.web`` (HTML) side by side: the web reads through the API's route
functions, the API never imports the web, and only the app's assembly (``callrec.app``) holds both."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "callrec"


def _imported(package: str) -> dict[str, set[str]]:
    """file -> every ``callrec...`` module its imports name (at any depth, late imports included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        found[str(path.relative_to(SRC))] = {n for n in names if n.startswith("callrec")}
    return found


def test_the_api_never_imports_the_web_or_the_app() -> None:
    wrong = {f: sorted(n for n in names if n.startswith(("callrec.web", "callrec.app")))
             for f, names in _imported("api").items()}  # fmt: skip
    assert not {f: n for f, n in wrong.items() if n}


def test_the_web_never_imports_the_app() -> None:
    wrong = {f: sorted(n for n in names if n == "callrec.app" or n.startswith("callrec.app."))
             for f, names in _imported("web").items()}  # fmt: skip
    assert not {f: n for f, n in wrong.items() if n}


def test_the_templates_and_static_files_live_beside_the_web() -> None:
    assert (SRC / "web" / "templates" / "base.html").is_file()
    assert (SRC / "web" / "static" / "callrec.css").is_file()
    assert not (SRC / "api" / "templates").exists() and not (SRC / "api" / "static").exists()
