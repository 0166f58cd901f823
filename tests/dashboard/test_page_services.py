"""The services the dashboard's pages call instead of querying the database themselves:
admin names (Admins), rate limits set by name and the active keys (Users), the model and
connection lists and a model's form, save and clone (Models) — on every database."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from backend.accounts import apikeys, rate_limits
from backend.accounts import service as accounts
from backend.accounts.viewer import Viewer
from backend.catalog import model_admin
from backend.dashboard import model_forms
from backend.errors import ServiceError
from backend.security import encrypt_secret
from db.models import ModelAiOnline, ModelInfo, RateLimit
from tests.factories import make_admin, make_user


def test_admin_names_are_every_admin_in_order(maker, settings):
    for name in ("zed", "amy", "kim"):
        make_admin(maker, settings, name=name)
    with maker() as s:
        names = accounts.admin_names(s)
    assert names == sorted(names) and {"zed", "amy", "kim"} <= set(names)


def test_a_limit_is_set_for_a_user_by_name_and_a_key_by_prefix(maker, settings):
    user = make_user(maker, settings, username="limited")
    with maker.begin() as s:
        key, _plain = apikeys.create_key(s, user_id=user.id, name="k1", actor="test")
    with maker.begin() as s:
        rate_limits.set_limit_for(s, scope="user", subject=" limited ", rpm=5, tpm=None, actor="admin:a")
        rate_limits.set_limit_for(s, scope="key", subject=key.prefix, rpm=None, tpm=100, actor="admin:a")
    with maker() as s:
        assert s.get(RateLimit, ("user", user.id)).rpm == 5
        assert s.get(RateLimit, ("key", str(key.id))).tpm == 100
        assert {"key_id": key.id, "prefix": key.prefix, "name": "k1", "username": "limited"} in apikeys.active_keys(s)


def test_a_limit_for_an_unknown_user_is_refused_and_nothing_is_written(maker, settings):
    with maker() as s:
        before = s.scalar(select(func.count()).select_from(RateLimit))
    with pytest.raises(ServiceError) as caught, maker.begin() as s:
        rate_limits.set_limit_for(s, scope="user", subject="nobody", rpm=5, tpm=None, actor="admin:a")
    assert caught.value.code == "USER_NOT_FOUND"
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(RateLimit)) == before


def test_param_bounds_come_from_the_persona_fields():
    assert model_forms.param_bounds("temperature") == model_forms.ParamBounds(float, 0, 2)
    assert model_forms.param_bounds("num_ctx") == model_forms.ParamBounds(int, 1, 131072)
    seed = model_forms.param_bounds("seed")
    assert seed.kind is int and (seed.low is None or seed.low >= -model_forms.JS_SAFE)
    assert set(model_forms.PARAM_NAMES) == set(model_admin.CAMEL_OF)


def test_a_model_is_saved_read_back_and_cloned_with_its_persona(maker, settings):
    admin = make_admin(maker, settings)
    viewer = Viewer.for_admin(admin.name)
    params = dict.fromkeys(model_forms.PARAM_NAMES) | {"temperature": 0.4, "num_ctx": 2048, "stop": ["##"]}
    with maker.begin() as s:
        made = model_forms.save_model(
            s,
            viewer,
            None,
            model_name="tutor",
            ai_name="smollm2",
            link_type=0,
            description="helps",
            model_version="v1",
            aiol_id=None,
            system="be kind",
            params=params,
            examples=[("hi", "hello")],
        )
        model_id = made.model_id
    with maker() as s:
        form = model_forms.model_form(s, settings, viewer, model_id)
    assert (form.model_name, form.ai_name, form.description, form.model_version) == ("tutor", "smollm2", "helps", "v1")
    assert form.system == "be kind" and form.examples == [("hi", "hello")]
    assert form.params["temperature"] == 0.4 and form.params["num_ctx"] == 2048 and form.params["stop"] == ["##"]

    with maker.begin() as s:  # an update clears a parameter and replaces the examples
        model_forms.save_model(
            s,
            viewer,
            model_id,
            model_name="tutor",
            ai_name="smollm2",
            link_type=0,
            description=None,
            model_version=None,
            aiol_id=None,
            system="be brief",
            params=params | {"num_ctx": None},
            examples=[("a", "b"), ("c", "d")],
        )
    with maker.begin() as s:
        copy_id = model_forms.clone_model(s, settings, viewer, model_id, name="tutor-copy").model_id
    with maker() as s:
        copy = model_forms.model_form(s, settings, viewer, copy_id)
        original = model_forms.model_form(s, settings, viewer, model_id)
    assert copy_id != model_id and copy.model_name == "tutor-copy"
    assert (copy.system, copy.params, copy.examples) == (original.system, original.params, original.examples)
    assert copy.params["num_ctx"] is None and copy.examples == [("a", "b"), ("c", "d")]


def test_a_bad_parameter_or_a_taken_name_writes_nothing(maker, settings):
    admin = make_admin(maker, settings)
    viewer = Viewer.for_admin(admin.name)
    fields = dict(ai_name="b", link_type=0, description=None, model_version=None, aiol_id=None, system=None)
    with maker.begin() as s:
        model_id = model_forms.save_model(
            s, viewer, None, model_name="taken", params={}, examples=[], **fields
        ).model_id
    with maker() as s:
        before = s.scalar(select(func.count()).select_from(ModelInfo))
    with pytest.raises(ServiceError), maker.begin() as s:
        model_forms.save_model(s, viewer, None, model_name="new", params={"temperature": 9}, examples=[], **fields)
    with pytest.raises(ServiceError), maker.begin() as s:
        model_forms.clone_model(s, settings, viewer, model_id, name="taken")
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(ModelInfo)) == before


def test_the_models_page_lists_models_and_connections_by_field_name_keys_masked(maker, settings):
    admin = make_admin(maker, settings)
    viewer = Viewer.for_admin(admin.name)
    with maker.begin() as s:
        conn = ModelAiOnline(
            ai_name="campus",
            ai_api="https://llm.example.edu/v1",
            ai_token_encrypted=encrypt_secret(settings, "sk-zz9999"),
        )
        s.add(conn)
        s.flush()
        model_forms.save_model(
            s,
            viewer,
            None,
            model_name="online-one",
            ai_name="campus",
            link_type=1,
            description=None,
            model_version="2",
            aiol_id=conn.ai_id,
            system=None,
            params={},
            examples=[],
        )
    with maker() as s:
        models = model_forms.model_rows(s, viewer)
        conns = model_forms.connection_rows(s, settings, viewer)
    row = next(m for m in models if m["model_name"] == "online-one")
    assert set(row) == set(model_forms.MODEL_FIELDS)
    assert (row["ai_name"], row["link_type"], row["aiol_id"], row["model_version"]) == ("campus", 1, conn.ai_id, "2")
    (listed,) = [c for c in conns if c["ai_id"] == conn.ai_id]
    assert set(listed) == set(model_forms.CONNECTION_FIELDS)
    assert listed["ai_name"] == "campus" and listed["ai_api"] == "https://llm.example.edu/v1"
    assert "sk-zz9999" not in str(listed["ai_token"]) and str(listed["ai_token"]).endswith("9999")
