"""Settings: generated secrets, placeholder refusal, database URL default."""

import json
import stat

import pytest
from pydantic import ValidationError

from backend.config import Settings
from tests.factories import TEST_SECRET_KEY


def test_secrets_are_generated_once_into_the_data_dir(tmp_path, monkeypatch):
    for name in ("METEOR_JWT_SECRET", "METEOR_SECRET_KEY", "METEOR_COOKIE_KEY"):
        monkeypatch.delenv(name, raising=False)
    first = Settings(data_dir=tmp_path)
    second = Settings(data_dir=tmp_path)
    assert first.jwt_secret.get_secret_value() == second.jwt_secret.get_secret_value()
    assert len(first.jwt_secret.get_secret_value()) >= 32
    path = tmp_path / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())) == {"jwt_secret", "secret_key", "cookie_key"}
    assert first.resolved_database_url == f"sqlite:///{(tmp_path / 'meteor.db').resolve()}"


@pytest.mark.parametrize("value", ["changeme", "secret", "short-but-real"])
def test_placeholder_or_short_jwt_secret_is_refused(tmp_path, value):
    with pytest.raises(ValidationError, match="placeholder or shorter"):
        Settings(data_dir=tmp_path, jwt_secret=value, secret_key=TEST_SECRET_KEY, cookie_key="c" * 40)


def test_bad_fernet_key_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="Fernet"):
        Settings(data_dir=tmp_path, jwt_secret="j" * 40, secret_key="x" * 44, cookie_key="c" * 40)
