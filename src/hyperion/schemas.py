"""The JSON Schemas hyperion publishes, generated from the models.

The copies under the repository's schemas/ folder are regenerated with
``python -m hyperion.schemas schemas/``; a test fails when they drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NAMES = ("change", "task", "approval", "config", "policy")


def schema_for(name: str) -> dict[str, Any]:
    if name == "config":
        from hyperion.config import Config

        schema = Config.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = "urn:hyperion:schema:config:1"
        return schema
    if name == "policy":
        from hyperion.gate.policy import Policy

        schema = Policy.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = "urn:hyperion:schema:policy:1"
        return schema
    from hyperion.requests import json_schema

    return json_schema(name)


def render(name: str) -> str:
    return json.dumps(schema_for(name), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hyperion.schemas DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (out / f"{name}.schema.json").write_text(render(name), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
