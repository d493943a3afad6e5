"""Validate real agent messages against the published JSON Schemas in docs/schemas/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
BASE_URI = "https://crackseg-edge.local/schemas/"
TOPIC_SCHEMAS = {"detections": "detections", "health": "health", "status": "status", "response": "cmd-response"}


@cache
def _registry() -> Registry:
    resources = []
    for path in SCHEMA_DIR.glob("*.schema.json"):
        resources.append((BASE_URI + path.name, Resource.from_contents(json.loads(path.read_text()))))
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema, registry=_registry(),
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def validate_message(topic: str, payload: dict) -> None:
    """Raise jsonschema.ValidationError when ``payload`` breaks the schema of its topic."""
    kind = topic.rsplit("/", 1)[-1]
    validator(TOPIC_SCHEMAS[kind]).validate(payload)
