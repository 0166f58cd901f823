"""Schemathesis over the app's own `/openapi.json`, on a live server, as an admin and as a
user, on every database: no operation may answer 5xx, whatever the input (schema-valid and
schema-violating cases, a few of each per operation; bounded, deterministic, no deadline)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from backend.server import create_app
from tests.factories import PASSWORD, make_admin, make_settings, make_user
from tests.live import live_server

EXAMPLES_PER_MODE = 2

# Operations fuzzed elsewhere or owned by another part of the audit, with why:
EXCLUDED = {
    # finding 14's non-ASCII aiToken (UnicodeEncodeError) and findings 3 / 9 (outbound calls
    # to whatever URL the case names): the outbound / connection-test work owns these
    ("POST", "/model/ol/manage/test"): "audit findings 3, 9, 14 (connection test, outbound)",
    ("POST", "/model/ol/manage/{ai_id}/test"): "audit findings 3, 9, 14 (connection test, outbound)",
}


def _token(url: str, role: str, name: str) -> str:
    if role == "admin":
        r = httpx.post(f"{url}/admin/login", json={"admin": name, "password": PASSWORD}, timeout=30)
    else:
        r = httpx.post(f"{url}/auth/login", json={"username": name, "password": PASSWORD}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def _fuzz(operation, mode: GenerationMode, url: str, headers: dict, failures: list[str]) -> None:
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=url, headers=headers, timeout=60)
        if response.status_code >= 500:
            failures.append(
                f"{operation.method.upper()} {operation.path} ({mode.value}): {response.status_code} "
                f"{response.text[:200]}\n    {case.as_curl_command()}"
            )

    try:
        run()
    except Unsatisfiable:  # nothing to break in this mode (e.g. no parameters to violate)
        pass


@pytest.mark.committed  # the live server's threads would share the test's one connection
@pytest.mark.parametrize("role", ["admin", "user"])
def test_no_operation_answers_5xx(db_url, tmp_path, maker, role):
    settings = make_settings(db_url, tmp_path)
    app = create_app(settings, playground=False)
    schema = schemathesis.openapi.from_dict(app.openapi())
    name = f"fuzz-{role}"
    if role == "admin":
        make_admin(maker, settings, name=name, is_super=True)
    else:
        make_user(maker, settings, username=name, tokens=1000, pic_times=2)
    failures: list[str] = []
    operations = 0
    with live_server(app, settings) as url:
        for result in schema.get_all_operations():
            operation = result.ok()
            if (operation.method.upper(), operation.path) in EXCLUDED:
                continue
            operations += 1
            # a fresh token per operation: a fuzzed logout or password change ends the last one
            headers = {"Authorization": f"Bearer {_token(url, role, name)}"}
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, mode, url, headers, failures)
    assert operations >= 45  # the schema was really walked
    assert not failures, "\n".join(failures)
