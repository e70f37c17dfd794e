"""schemathesis over the OpenAPI document of a server under a policy: every response
(200s, and the 401, 403 and 429 a policy adds) matches the document and none is 5xx, for a
caller whose role allows some categories and operations and not others."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from chronik.events import NewEvent
from chronik.security import parse_policy, token_store
from chronik.server import create_app_for_url
from chronik.store import connect
from tests.server.serving import running

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

POLICY = {"roles": {"clerk": {"read": ["order", "saga_*"], "append": ["order"],
                              "operate": ["*"]}}}  # fmt: skip


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'api.db'}"

    async def seed() -> str:
        async with await connect(url) as store:
            for n in range(3):
                await store.append(f"order-{n}", [NewEvent("Placed", {"n": n})])
                await store.append(f"secret-{n}", [NewEvent("Hidden", {"n": n})])
            _, token = await token_store(store).create("clerk", ["clerk"])
            return token

    token = asyncio.run(seed())
    with running(create_app_for_url(url, policy=parse_policy(POLICY))) as base:
        yield base, token


@pytest.mark.parametrize("credentials", ["clerk", "none", "garbage"])
def test_secured_responses_are_documented(
    secured_server: tuple[str, str], credentials: str, tmp_path: Path
) -> None:
    base, token = secured_server
    headers = {
        "clerk": {"Authorization": f"Bearer {token}"},
        "none": {},
        "garbage": {"Authorization": "Bearer chronik_nope"},
    }[credentials]
    api = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 8
    for operation in operations:

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call_and_validate(
                headers=headers,
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
            )
            if credentials != "clerk" and case.path not in ("/health", "/openapi.json"):
                assert response.status_code == 401
            body = response.text
            assert "Hidden" not in body and "secret-" not in body  # never another category

        check()
