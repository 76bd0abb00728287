"""Schemathesis against ember's own OpenAPI schema, every route, on a real server.

Fixed seed and a bounded number of examples per operation in CI; no 5xx, every response
conforms to the documented schema, and a valid request afterwards is answered correctly.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


def test_every_route_answers_within_its_contract(server: Server) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # every route, probes and /metrics included
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            # Limits that are settings (inputs per request, the model's length and width) can't
            # be in a static schema, so schema-valid data may get a documented 413/422.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        fuzz()


def test_server_still_answers_correctly_after_fuzzing(server: Server) -> None:
    req = urllib.request.Request(
        server.url + "/embed",
        data=json.dumps({"inputs": ["after the fuzz"]}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        vectors = json.loads(r.read())
    assert len(vectors) == 1 and len(vectors[0]) == 384
