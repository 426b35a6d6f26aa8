"""The generated documents (docs/conformance-statement.md, docs/configuration.md): print one,
write it into the source tree, or check that the file there is up to date."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def project_file(name: str) -> Path:
    """docs/`name` in the source tree this package runs from."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    if not docs.is_dir():
        raise FileNotFoundError(
            f"no docs/ folder beside {Path(__file__).parent}: not a source tree"
        )
    return docs / name


def publish(render: Callable[[], str], name: str, *, write: bool, check: bool) -> int:
    """stdout by default; `write`: docs/`name`; `check`: exit 1 when docs/`name` differs."""
    text = render()
    if not (write or check):
        sys.stdout.write(text)
        return 0
    try:
        target = project_file(name)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 1
    if check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{target} is out of date: run with --write", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0
