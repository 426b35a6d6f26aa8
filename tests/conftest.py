"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Clean-ups (peers, daemons) undone in reverse order at the end of the test."""
    with ExitStack() as s:
        yield s
