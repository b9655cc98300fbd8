"""docs/api.md documents the request models the API checks requests with, as they are."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from stemcast.service.control import requests

API_DOCS = Path(__file__).parents[2] / "docs" / "api.md"


def test_the_documented_requests_are_the_models() -> None:
    documented = requests.generated_part(API_DOCS.read_text())
    assert documented == requests.markdown(), (
        "docs/api.md is out of date: run python -m stemcast.service.control.requests docs/api.md"
    )


def test_every_field_of_every_model_has_a_row_and_a_meaning() -> None:
    documented = requests.generated_part(API_DOCS.read_text())
    models: list[type[BaseModel]] = [
        requests.ConvertRunBody,
        requests.ConvertPathBody,
        requests.EmdOptions,
        requests.BlockfileOptions,
        requests.RunsQuery,
        requests.JobsQuery,
    ]
    for model in models:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert re.search(rf"^\| `{name}` \|", documented, re.MULTILINE), name
