"""The configuration reference (docs/configuration.md) against the schema: the file is what the
generator makes now, every key says what it does, and every example is a valid value."""

from __future__ import annotations

import argparse
from pathlib import Path

import jsonschema
import pytest

from agent.config import reference
from agent.config.schema import DESTINATION
from agent.docs_output import project_file

DOCUMENT = project_file(reference.DOCUMENT)


def test_reference_is_generated_from_the_schema() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == reference.render(), (
        "docs/configuration.md differs from agent/config/schema.py: "
        "run `modality-agent config-reference --write` and review the diff"
    )


def test_every_key_says_what_it_does() -> None:
    assert reference.undocumented() == [], (
        "give these keys a description in agent/config/schema.py (or in its KEY_DOCS)"
    )


def test_every_example_and_default_is_valid_for_its_key() -> None:
    for section in reference.sections():
        for key in section.keys:
            for name in ("example", "default"):
                source = key.docs if name == "example" else key.schema
                if name in source:
                    jsonschema.validate(source[name], dict(key.schema))


def test_every_destination_key_is_in_the_reference() -> None:
    """A key another change adds to the schema appears by regeneration, with no other edit."""
    (section,) = [s for s in reference.sections() if s.header == "[[destinations]]"]
    listed = {k.name for k in section.keys}
    assert listed == {k for k, v in DESTINATION["properties"].items() if v.get("type") != "object"}
    text = reference.render()
    for name in listed:
        assert f"| `{name}` |" in text


def test_check_and_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "configuration.md"
    monkeypatch.setattr("agent.docs_output.project_file", lambda name: target)
    args = argparse.Namespace(write=False, check=True)
    assert reference.command(args) == 1  # missing
    assert reference.command(argparse.Namespace(write=True, check=False)) == 0
    assert reference.command(args) == 0
    target.write_text(target.read_text() + "edited by hand\n")
    assert reference.command(args) == 1
