"""Seed-000 back office: users, admins, vouchers and the whitelisted table queries.

Where the document and the original code disagree, both shapes are accepted:
`token_limit` as an object or a string; `new_token_range` / `new_token_is_available`
nested in `new_token_limit` (document) or at the top level (code).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.accounts import service as accounts
from backend.accounts.identity import actor_of
from backend.api import envelope
from backend.api.bounds import INT32_MAX, OffsetQuery
from backend.api.deps import CurrentAdmin, CurrentSuperAdmin, SessionDep, SettingsDep, hashed_first, new_password_first
from backend.api.schemas import seed000
from backend.api.schemas.seed000 import (
    AddAdminIn,
    AddTokenIn,
    AddUserIn,
    DeleteAdminIn,
    DeleteTokenIn,
    DeleteUserIn,
    ModifyAdminIn,
    ModifyTokenIn,
    ModifyUserIn,
)
from backend.billing import vouchers
from backend.errors import ServiceError
from backend.reporting import tables

router = APIRouter(tags=["admin"], responses=seed000.errors(401, 403, 404, 405, 409, 413, 422))

envelope.on_invalid("ADD_USER_ERROR", "/admin/add_normal_user")
envelope.on_invalid("MODIFY_USER_ERROR", "/admin/modify_normal_user")
envelope.on_invalid("DELETE_USER_ERROR", "/admin/delete_normal_user")
envelope.on_invalid("ADD_ADMIN_ERROR", "/admin/add_admin")
envelope.on_invalid("MODIFY_ADMIN_ERROR", "/admin/modify_admin")
envelope.on_invalid("DELETE_ADMIN_ERROR", "/admin/delete_admin")
envelope.on_invalid("ADD_TOKEN_ERROR", "/admin/add_token")
envelope.on_invalid("MODIFY_TOKEN_ERROR", "/admin/modify_token")
envelope.on_invalid("DELETE_TOKEN_ERROR", "/admin/delete_token")
envelope.on_invalid("CONTROL_TOKEN_ERROR", "/admin/control_token")
envelope.on_invalid("QUERY_TABLE_ERROR", "/admin/query_table", "/admin/query_table_count")
envelope.on_invalid("QUERY_TABLE_DATA_ERROR", "/admin/query_table_data")


# --- users -------------------------------------------------------------------------------


@router.post("/admin/add_normal_user")
def add_normal_user(body: AddUserIn, admin: CurrentAdmin, session: SessionDep, settings: SettingsDep) -> dict:
    actor = actor_of(admin)
    user = accounts.create_user(
        session,
        settings,
        username=body.username,
        password=new_password_first(session, settings, body.password, "ADD_USER_ERROR"),
        email=body.email,
        academy=body.academy,
        tokens=body.tokens,
        pic_times=body.pictimes,
        actor=actor,
    )
    session.commit()
    return envelope.ok("添加用户成功", uuid=user.id)


@router.post("/admin/modify_normal_user")
def modify_normal_user(body: ModifyUserIn, admin: CurrentAdmin, session: SessionDep, settings: SettingsDep) -> dict:
    info = body.new_user_info
    actor = actor_of(admin)
    accounts.modify_user(
        session,
        settings,
        target_username=body.target_user,
        actor=actor,
        new_username=info.new_username,
        new_password=hashed_first(session, settings, info.new_password, "MODIFY_USER_ERROR"),
        new_email=info.new_email,
        new_academy=info.new_academy,
        new_tokens=info.new_tokens,
        new_pic_times=info.new_pictimes,
        new_status=info.new_status,
    )
    session.commit()
    return envelope.ok("修改用户信息成功")


@router.post("/admin/delete_normal_user")
def delete_normal_user(body: DeleteUserIn, admin: CurrentAdmin, session: SessionDep) -> dict:
    accounts.delete_user(session, username=body.target_username, actor=actor_of(admin))
    session.commit()
    return envelope.ok(f"{body.target_username}用户删除成功")


# --- admins (super admin only) -----------------------------------------------------------


@router.post("/admin/add_admin")
def add_admin(body: AddAdminIn, admin: CurrentSuperAdmin, session: SessionDep, settings: SettingsDep) -> dict:
    actor = actor_of(admin)
    password = new_password_first(session, settings, body.password, "ADD_ADMIN_ERROR")
    accounts.create_admin(session, settings, name=body.admin, password=password, actor=actor)
    session.commit()
    return envelope.ok("添加管理员成功")


@router.post("/admin/modify_admin")
def modify_admin(body: ModifyAdminIn, admin: CurrentSuperAdmin, session: SessionDep, settings: SettingsDep) -> dict:
    actor = actor_of(admin)
    accounts.modify_admin(
        session,
        settings,
        target=body.target_admin,
        actor=actor,
        new_name=body.new_name,
        new_password=hashed_first(session, settings, body.new_password, "MODIFY_ADMIN_ERROR"),
    )
    session.commit()
    return envelope.ok("修改管理员信息成功")


@router.post("/admin/delete_admin")
def delete_admin(body: DeleteAdminIn, admin: CurrentSuperAdmin, session: SessionDep) -> dict:
    accounts.delete_admin(session, target=body.target_admin, actor=actor_of(admin))
    session.commit()
    return envelope.ok(f"{body.target_admin} 删除成功")


# --- vouchers ----------------------------------------------------------------------------


@router.post("/admin/add_token")
def add_token(body: AddTokenIn, admin: CurrentAdmin, session: SessionDep) -> dict:
    voucher = vouchers.create_voucher(
        session,
        name=body.token_name,
        tokens=body.token_limit.tokens,
        pic_times=body.token_limit.pictimes,
        academy=body.token_range,
        actor=actor_of(admin),
        expires_at=body.expires_at,
        max_redemptions=body.max_redemptions,
    )
    session.commit()
    return envelope.ok("创建令牌成功", token_id=voucher.id)


@router.post("/admin/modify_token")
def modify_token(body: ModifyTokenIn, admin: CurrentAdmin, session: SessionDep) -> dict:
    nested = body.new_token_limit
    academy = body.new_token_range if body.new_token_range is not None else nested.new_token_range
    is_available = body.new_token_is_available
    if is_available is None:
        is_available = nested.new_token_is_available
    vouchers.modify_voucher(
        session,
        name=body.target_token,
        actor=actor_of(admin),
        tokens=nested.tokens,
        pic_times=nested.pictimes,
        academy=academy,
        available=None if is_available is None else bool(is_available),
        expires_at=body.new_expires_at,
        max_redemptions=body.new_max_redemptions,
    )
    session.commit()
    return envelope.ok("令牌修改成功")


@router.post("/admin/delete_token")
def delete_token(body: DeleteTokenIn, admin: CurrentSuperAdmin, session: SessionDep) -> dict:
    vouchers.delete_voucher(session, name=body.target_token, actor=actor_of(admin))
    session.commit()
    return envelope.ok(f"{body.target_token} 删除成功")


@router.get("/admin/control_token")
def control_token(
    admin: CurrentAdmin,
    session: SessionDep,
    is_available: Annotated[int, Query(ge=0, le=1)],
    token_name: Annotated[str, Query(min_length=1, max_length=64)],
) -> dict:
    vouchers.set_available(session, name=token_name, available=bool(is_available), actor=actor_of(admin))
    session.commit()
    return envelope.ok(f"{token_name} {'启用' if is_available else '禁用'}成功")


# --- table queries -----------------------------------------------------------------------


@router.get("/admin/query_table")
def query_table(
    admin: CurrentAdmin,
    session: SessionDep,
    settings: SettingsDep,
    table: Annotated[str, Query(min_length=1, max_length=32)],
    query_range: Annotated[int, Query(ge=1, le=INT32_MAX)] = 10,
    start: OffsetQuery = 0,
) -> dict:
    if query_range > settings.query_page_size_max:
        raise ServiceError("QUERY_TABLE_ERROR", f"query_range must be at most {settings.query_page_size_max}", 422)
    rows = tables.page(session, table=table, start=start, limit=query_range)
    return envelope.ok(f"查询 {len(rows)} 条信息成功", data=rows)


@router.get("/admin/query_table_count")
def query_table_count(
    admin: CurrentAdmin, session: SessionDep, table: Annotated[str, Query(min_length=1, max_length=32)]
) -> dict:
    total = tables.count(session, table=table)
    return envelope.ok(f"查询 {total} 条信息成功", total_count=total)


@router.get("/admin/query_table_data")
def query_table_data(
    admin: CurrentAdmin,
    session: SessionDep,
    table: Annotated[str, Query(min_length=1, max_length=32)],
    target_name: Annotated[str, Query(min_length=1, max_length=64)],
) -> dict:
    row = tables.find(session, table=table, name=target_name)
    if row is None:
        raise ServiceError("QUERY_TABLE_DATA_ERROR", f"no row named {target_name!r} in {table}", 404)
    return envelope.ok(f"查询 {target_name} 成功", data=row)
