"""The shipped schemas/ are exactly what the models generate (regenerate with
`python -m hyperion.schemas schemas/`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperion.schemas import NAMES, render

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


@pytest.mark.parametrize("name", NAMES)
def test_shipped_schema_matches_the_model(name: str) -> None:
    shipped = (SCHEMAS / f"{name}.schema.json").read_text()
    assert shipped == render(name), f"schemas/{name}.schema.json drifted: regenerate it"
