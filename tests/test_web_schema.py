"""schemathesis against the OpenAPI spec: generated requests to every operation, and never a 5xx.

Bounded to 10 examples per operation (< 30 s); LEUKODX_SCHEMA_EXAMPLES=200 for a deeper run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from leukodx.web.app import create_app
from leukodx.web.auth import create_token
from leukodx.web.settings import Settings, database_url_for
from webtools import FakeAnalyzer

_TMP = Path(tempfile.mkdtemp(prefix="leukodx-schema-"))
APP = create_app(Settings(database_url=database_url_for(_TMP / "schema.db"), max_files=5), analyzer=FakeAnalyzer())
with APP.state.ctx.sessions() as _db:
    _, TOKEN = create_token(_db, "schemathesis", "admin")
    _db.commit()
    from leukodx.web.cases import store as _cases

    for i in range(3):  # a few cases so that ids 1..3 exist
        _cases.create_case(_db, f"S-{i}", "", "seed")

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=int(os.environ.get("LEUKODX_SCHEMA_EXAMPLES", "10")), deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_answers_5xx(case):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )
