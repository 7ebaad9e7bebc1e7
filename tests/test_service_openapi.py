"""Fuzz the OpenAPI document with schemathesis against a real API process: no 5xx, and
every answer matches the documented status codes, content types and schemas."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytest_plugins = ["service_fixtures"]

# Small limits so generated bodies hit them too.
service_env_extra = {"SDPO_MAX_ACTIVE_PER_TENANT": "5", "SDPO_MAX_BODY_BYTES": "65536"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz(api_server, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{api_server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for op in operations:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=api_server.base_url,
                headers=api_server.headers,
                timeout=20,
                checks=CHECKS,
            )

        try:
            run()
        except Unsatisfiable:  # nothing to get wrong (no parameters): negative mode only
            assert mode is GenerationMode.NEGATIVE
