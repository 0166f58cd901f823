"""Admins' changes to models, personas and connections are audited; a user's own are not;
no key ever reaches the audit log."""

from sqlalchemy import select

from db.models import AuditLog
from tests.seed003.helpers import ok

KEY = "sk-audit-SECRET-1234567890abcdef"


def audit_rows(maker) -> list[AuditLog]:
    with maker() as s:
        return list(s.scalars(select(AuditLog).order_by(AuditLog.id)))


def test_admin_changes_are_audited_without_secrets(client, maker, admin):
    conn = ok(
        client.post(
            "/model/ol/manage",
            json={"aiName": "up", "aiApi": "https://api.example.com/v1", "aiToken": KEY},
            headers=admin.headers,
        )
    )
    ok(client.put("/model/ol/manage", json={"aiId": conn["aiId"], "aiToken": KEY + "2"}, headers=admin.headers))
    model = ok(
        client.post("/model/manage", json={"modelName": "tutor", "aiName": "up", "linkType": 1}, headers=admin.headers)
    )
    ok(
        client.put(
            "/model/manage/detail",
            json={
                "modelId": model["modelId"],
                "temperature": 0.3,
                "modelFileEmessageList": [{"userMessage": "hi", "modelMessage": "hello"}],
            },
            headers=admin.headers,
        )
    )
    ok(client.delete(f"/model/manage/{model['modelId']}", headers=admin.headers))
    ok(client.delete(f"/model/ol/manage/{conn['aiId']}", headers=admin.headers))
    rows = audit_rows(maker)
    assert [r.action for r in rows] == [
        "add_connection",
        "modify_connection",
        "add_model",
        "modify_persona",
        "delete_models",
        "delete_connections",
    ]
    assert all(r.actor == f"admin:{admin.name}" for r in rows)
    assert '"aiToken"' in rows[1].detail and '"temperature"' in rows[3].detail
    assert not any(KEY in (r.detail or "") for r in rows)


def test_a_users_own_changes_are_not_admin_audit(client, maker, alice):
    model = ok(client.post("/model/manage", json={"modelName": "mine", "aiName": "qwen2.5"}, headers=alice.headers))
    ok(client.put("/model/manage", json={"modelId": model["modelId"], "description": "x"}, headers=alice.headers))
    assert audit_rows(maker) == []
