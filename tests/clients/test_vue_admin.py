"""The original AiProject Vue 2 admin app (../shared/clients/aiproject-admin, vue-cli 5 +
element-ui) built with npm and driven in Debian's chromium through its real pages, served
from another origin than the API, as shipped: login (its "实例信息" card reads
`app_info`), the 10-minute token refresh, password change, and a rename with the token the
password change revoked.

Build: a temporary copy of the app, its lock pointed at the npm registry (the lock's
`resolved` URLs name a mirror this machine cannot reach), `npm ci`, `vue-cli-service build`.
The built `dist/` is cached under tests/artifacts/ keyed by a hash of the app's sources, so
later runs skip npm. The address edit a deployer makes (`http://127.0.0.1:5000` → Meteor) is
applied to the built files of each run's served copy, since Meteor's port is new every run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from db.models import Admin
from tests.browser.stack import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.clients.stack import ADMIN_PASSWORD, Meteor, clients_dir, start_meteor
from tests.servers import free_port, stop

pytestmark = pytest.mark.slow

ADDRESS = "http://127.0.0.1:5000"
LOCK_MIRROR = "https://mirrors.cloud.tencent.com/npm/"
NPM_REGISTRY = "https://registry.npmjs.org/"
BUILD_TIMEOUT = 1500  # seconds for npm ci + build on a cold cache
NEW_PASSWORD = "admin-new-pass-9"


def source_hash(app: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(app.rglob("*")):
        relative = path.relative_to(app)
        if path.is_file() and relative.parts[0] not in ("node_modules", "dist"):
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def built_dist() -> Path:
    """The app's production build, from the cache or built now."""
    app = clients_dir() / "aiproject-admin"
    cache = ARTIFACTS / "vue-admin" / source_hash(app)
    if (cache / "index.html").is_file():
        return cache
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing (apt-get install nodejs npm)")
    with tempfile.TemporaryDirectory() as work:
        copy = Path(work) / "aiproject-admin"
        shutil.copytree(app, copy, ignore=shutil.ignore_patterns("node_modules", "dist"))
        lock = copy / "package-lock.json"
        lock.write_text(lock.read_text(encoding="utf-8").replace(LOCK_MIRROR, NPM_REGISTRY), encoding="utf-8")
        env = {**os.environ, "CI": "true", "NODE_OPTIONS": os.environ.get("NODE_OPTIONS", "")}
        for command in ([npm, "ci", "--no-audit", "--no-fund"], [npm, "run", "build"]):
            done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
            assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        staging = cache.with_name(cache.name + f".{os.getpid()}")
        shutil.copytree(copy / "dist", staging)
        try:
            staging.rename(cache)
        except OSError:  # another run cached it first
            shutil.rmtree(staging, ignore_errors=True)
    return cache


def served_copy(dist: Path, dest: Path, meteor_url: str) -> Path:
    """The build with the server address edited (the one change a deployer makes)."""
    target = dest / "site"
    shutil.copytree(dist, target)
    edited = 0
    for path in target.rglob("*.js"):
        text = path.read_text(encoding="utf-8")
        if ADDRESS in text:
            path.write_text(text.replace(ADDRESS, meteor_url), encoding="utf-8")
            edited += 1
    assert edited, f"{ADDRESS} is not in the built app"
    return target


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def meteor(tmp_path_factory) -> Iterator[Meteor]:
    instance, process = start_meteor(tmp_path_factory.mktemp("meteor-admin"))
    try:
        yield instance
    finally:
        stop(process)


@pytest.fixture(scope="module")
def site(meteor, tmp_path_factory) -> Iterator[str]:
    root = served_copy(built_dist(), tmp_path_factory.mktemp("vue-admin"), meteor.url)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def page(site):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
        context.set_default_timeout(30_000)
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.errors = errors
        try:
            yield tab
        finally:
            context.close()
            browser.close()


def notification(page, title: str):
    """The element-ui notification with this title, once it shows."""
    box = page.locator(".el-notification").filter(has_text=title).last
    box.wait_for(state="visible")
    return box


def admin_name(meteor: Meteor) -> list[str]:
    with meteor.maker() as s:
        return s.scalars(select(Admin.name).order_by(Admin.id)).all()


def test_login_refresh_password_change_and_a_rename_with_the_revoked_token(page, site, meteor):
    assert urls_differ(site, meteor.url)
    page.clock.install()  # the app refreshes its token every 10 minutes: let the test move time on
    page.goto(site + "/")
    page.get_by_placeholder("用户名").fill("admin")
    page.get_by_placeholder("请输入密码").fill("not-the-password")
    page.get_by_role("button", name="立即登录").click()
    assert "wrong name or password" in notification(page, "登录错误").inner_text()  # shown, not swallowed
    page.get_by_placeholder("请输入密码").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="立即登录").click()
    assert "管理员登录成功" in notification(page, "登录成功").inner_text()
    page.wait_for_url("**/#/AppInfo")
    card = " ".join(page.locator(".app-info").inner_text().split())
    assert "APPID: meteor" in card and "API_SECRET: 仅保存在服务器上" in card
    assert page.errors == []  # the page no longer crashes on app_info.app_id
    first_access = page.evaluate("localStorage.getItem('access_token')")
    refresh = page.evaluate("localStorage.getItem('refresh_token')")
    assert first_access and refresh

    page.clock.fast_forward("10:01")
    assert "刷新令牌成功" in notification(page, "刷新登录状态成功").inner_text()
    renewed = page.evaluate("localStorage.getItem('access_token')")
    assert renewed and renewed != first_access
    # the renewed token is a working admin token
    r = httpx.get(f"{meteor.url}/admin/query_table_count", params={"table": "user"}, headers=bearer(renewed))
    assert r.status_code == 200 and r.json()["code"] == 0

    page.get_by_role("button", name="修改密码").click()
    page.get_by_placeholder("请输入新的密码").fill(NEW_PASSWORD)
    page.locator(".el-dialog__wrapper:visible").get_by_role("button", name="提交").click()
    notification(page, "修改密码成功")
    dialog = page.locator(".el-dialog__wrapper:visible")
    dialog.get_by_role("button", name="取消").click()  # the app leaves its dialog open; the user closes it
    dialog.wait_for(state="hidden")
    assert login_status(meteor, NEW_PASSWORD) == 0 and login_status(meteor, ADMIN_PASSWORD) == "LOGIN_ERROR"

    page.get_by_role("button", name="修改名称").click()
    page.get_by_placeholder("请输入新的用户名").fill("chief")
    page.locator(".el-dialog__wrapper:visible").get_by_role("button", name="提交").click()
    refused = notification(page, "修改用户名失败").inner_text()
    assert "请重新登录" in refused  # Meteor's message, shown by the page
    assert "admin" in admin_name(meteor) and "chief" not in admin_name(meteor)  # the revocation holds
    page.screenshot(path=str(ARTIFACTS / "vue-admin-rename-refused.png"), full_page=True)


def urls_differ(site: str, api: str) -> bool:
    return httpx.URL(site).port != httpx.URL(api).port  # another origin, as shipped


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login_status(meteor: Meteor, password: str):
    r = httpx.post(f"{meteor.url}/admin/login", json={"admin": "admin", "password": password})
    return r.json()["code"]
