"""Schema-driven fuzzing: schemathesis sends every operation of the server's own OpenAPI
document values generated from what it declares (and values that break it), signed in as an
ordinary user, against a live server over a small archive with a restricted collection. No
input may make a server error. Bounded: FUZZ_EXAMPLES examples an operation (default 6)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from conftest import SAMPLES, LiveServer
from imaging_commons.config import Archive
from imaging_commons.core.demo import DEMO_COLLECTION
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A live server over pydicom's samples, a restricted collection among them, and a token
    of an ordinary user without a grant for it."""
    archive = Archive(tmp_path_factory.mktemp("fuzz") / "archive")
    catalog = Commons(archive).catalog
    ingest(catalog, [SAMPLES], DEMO_COLLECTION)
    ingest(catalog, [SAMPLES / "CT_small.dcm"], "closed", restricted=True)
    publish(catalog)
    with LiveServer(archive) as live:
        yield live, live.user_token("fuzzer")


@pytest.mark.slow
def test_no_input_makes_a_server_error(fuzzed):
    """Each operation in turn (schemathesis's pytest plugin does not run on this pytest, so
    its strategies are driven by hypothesis here); every server error is listed at the end."""
    live, token = fuzzed
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    errors: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 200

    for operation in operations:
        if "logout" in operation.path:  # it would revoke the token the other cases send
            continue

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def send(case):
            response = case.call(base_url=live.url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"})
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                errors.append(f"{case.method} {case.formatted_path} {case.query} "
                              f"{case.body!r}: {response.status_code} {response.text[:200]}")

        send()
    assert not errors, "\n".join(errors)
    # it reached the routes' own code (200s and their refusals), not only the validation
    assert statuses[200] > len(operations) and statuses[400] > len(operations), statuses
