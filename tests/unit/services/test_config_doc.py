"""docs/CONFIG.md must describe every config key with its current default."""

from __future__ import annotations

from pathlib import Path

from services.config_doc import render

DOC = Path(__file__).resolve().parents[3] / "docs" / "CONFIG.md"


def test_config_md_is_in_step_with_the_config_dataclasses() -> None:
    hint = "regenerate with: .venv/bin/python -m services.config_doc > docs/CONFIG.md"
    assert DOC.read_text() == render(), hint


def test_every_documented_field_has_a_meaning() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| `")]

    assert len(rows) > 40
    assert all(not line.rstrip().endswith("|  |") for line in rows), [r for r in rows if r.endswith("|  |")]
