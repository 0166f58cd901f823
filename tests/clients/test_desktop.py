"""The original AiProject desktop client (../shared/clients/aiproject-desktop, PyQt5 +
PyQt-Fluent-Widgets) against a real `serve-api` with METEOR_LEGACY_UUID_AUTH=true.

Each test runs tests/clients/desktop_driver.py in its own process, in a temporary copy of
the client whose only edit is the server address, under Qt's offscreen platform: the
client's real windows and buttons (login, register, send, redeem), and its own request
functions where a step needs a device (file picker, microphone). Each asserts what the
user sees (notices, chat bubbles, the client's balance) and what Meteor then holds.

What the copy gets besides the address is what the client expects of its machine, not
code: `Sqlite/userinfo.json` as `{}` (the client writes its login there and cannot create
it itself), a `Temp/` folder for its captcha pictures, and a font at the Windows path its
captcha draws with (`C:/Windows/fonts/stxinwei.ttf`, a relative path on Linux).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.accounts import service as accounts
from backend.billing import quota, vouchers
from db.models import QuotaLedger, Redemption, UsageRecord, User
from tests.clients.stack import Meteor, copy_client
from tests.media.samples import (
    CHINESE_SPEECH,
    SENTENCE,
    character_error_rate,
    mandarin_pcm,
    render_lines,
    speech_pcm,
    word_error_rate,
)

pytestmark = pytest.mark.slow

ADDRESS = "http://47.121.115.252:8193"
DRIVER = Path(__file__).with_name("desktop_driver.py")
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
DRIVER_TIMEOUT = 600  # seconds for one scenario (the embedded engines load on first use)
PASSWORD = "desk-pass-123"


def desktop_copy(tmp_path: Path, meteor: Meteor) -> Path:
    copy = copy_client("aiproject-desktop", tmp_path, ADDRESS, meteor.url, ["Views/*.py", "Core/Tools/*.py"])
    (copy / "Sqlite" / "userinfo.json").write_text("{}")
    (copy / "Temp").mkdir(exist_ok=True)
    fonts = copy / "C:" / "Windows" / "fonts"
    fonts.mkdir(parents=True)
    font = next((f for f in FONTS if Path(f).exists()), None)
    assert font, f"no font among {FONTS} (apt-get install fonts-dejavu-core fonts-wqy-microhei)"
    shutil.copy(font, fonts / "stxinwei.ttf")
    return copy


def run_client(tmp_path: Path, meteor: Meteor, steps: list[dict]) -> list[dict]:
    """Run the scenario in the client; every step's record (notices, bubbles, state)."""
    copy = desktop_copy(tmp_path, meteor)
    scenario, result = tmp_path / "scenario.json", tmp_path / "result.json"
    scenario.write_text(json.dumps(steps, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(scenario), str(result)],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
    )
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert result.exists(), f"the client did not finish ({done.returncode}):\n{output}"
    records = json.loads(result.read_text(encoding="utf-8"))
    for record in records:
        assert "error" not in record, record["error"]
    assert len(records) == len(steps), records
    return records


def notice_texts(record: dict) -> list[str]:
    return [f"{n['title']}: {n['content']}" for n in record["notices"]]


def make_user(meteor: Meteor, username: str, *, academy: str = "计算机学院", tokens: int = 0, pic_times: int = 0):
    with meteor.maker.begin() as s:
        user = accounts.create_user(s, meteor.settings, username=username, password=PASSWORD, academy=academy)
        s.flush()
        if tokens or pic_times:
            quota.grant(s, user_id=user.id, tokens=tokens, pic_times=pic_times, actor="test")
        return user.id


def holdings(meteor: Meteor, user_id: str) -> tuple[int, int]:
    with meteor.maker() as s:
        user = s.get(User, user_id)
        assert quota.ledger_sum(s, user_id) == quota.balance(s, user_id)
        return user.tokens, user.pic_times


def test_register_then_login_then_a_duplicate_name(tmp_path, legacy_meteor):
    records = run_client(
        tmp_path,
        legacy_meteor,
        [
            {"action": "register", "username": "desk_new", "password": PASSWORD, "email": "d@x.cn", "academy": "数学"},
            {"action": "register", "username": "desk_new", "password": "another-pass", "academy": "数学"},
            {"action": "login", "username": "desk_new", "password": PASSWORD},
        ],
    )
    registered, duplicate, login = records
    assert notice_texts(registered) == ["注册状态: 注册成功"]
    assert notice_texts(duplicate) == ["注册状态: 用户名已存在"]  # no longer "注册失败，请检查网络"
    assert notice_texts(login) == ["登录状态: 登录成功"] and login["main_window_visible"]
    with legacy_meteor.maker() as s:
        user = s.scalar(select(User).where(User.username == "desk_new"))
        assert (user.email, user.academy, user.tokens, user.pic_times) == ("d@x.cn", "数学", 0, 0)
    assert login["state"] == {"uuid": user.id, "username": "desk_new", "tokens": 0, "picTimes": 0}


def test_a_wrong_password_shows_meteors_message(tmp_path, legacy_meteor):
    user_id = make_user(legacy_meteor, "desk_wrong")
    (wrong,) = run_client(tmp_path, legacy_meteor, [{"action": "login", "username": "desk_wrong", "password": "nope"}])
    [text] = notice_texts(wrong)
    assert text.startswith("登录状态: 登录错误:") and "网络异常" not in text
    assert wrong["state"]["uuid"] != user_id and not wrong["main_window_visible"]


def test_streamed_chat_deducts_the_same_tokens_on_both_sides(tmp_path, legacy_meteor):
    user_id = make_user(legacy_meteor, "desk_chat", tokens=5_000)
    login, chat = run_client(
        tmp_path,
        legacy_meteor,
        [
            {"action": "login", "username": "desk_chat", "password": PASSWORD},
            {"action": "chat", "text": "Say hello in one short sentence."},
        ],
    )
    assert login["state"]["tokens"] == 5_000
    question, answer = chat["bubbles"]
    assert question == "Say hello in one short sentence." and answer.strip()
    assert chat["notices"] == []
    tokens, _ = holdings(legacy_meteor, user_id)
    assert chat["state"]["tokens"] == tokens < 5_000  # the client's count equals Meteor's balance
    with legacy_meteor.maker() as s:
        charged = -sum(
            row.delta_tokens
            for row in s.scalars(
                select(QuotaLedger).where(
                    QuotaLedger.user_id == user_id, QuotaLedger.kind.in_(("reserve", "settle", "release"))
                )
            )
        )
        usage = s.scalars(select(UsageRecord).where(UsageRecord.user_id == user_id)).all()
    assert charged == 5_000 - tokens
    assert [(u.kind, u.status) for u in usage] == [("chat", "ok")]
    assert usage[0].prompt_tokens + usage[0].completion_tokens == charged


def test_picture_to_text_shows_the_text_and_spends_one_pic_time(tmp_path, legacy_meteor):
    user_id = make_user(legacy_meteor, "desk_pic", pic_times=2)
    picture = tmp_path / "lines.png"
    picture.write_bytes(render_lines(("Meteor reads text out of pictures",)))
    _login, recognised = run_client(
        tmp_path,
        legacy_meteor,
        [
            {"action": "login", "username": "desk_pic", "password": PASSWORD},
            {"action": "picture", "path": str(picture)},
        ],
    )
    [text] = recognised["bubbles"]  # the answer's bubble (the picture's own comes from the file picker step)
    assert text.strip() == "Meteor reads text out of pictures" and recognised["notices"] == []
    assert holdings(legacy_meteor, user_id) == (0, 1)


def test_dictation_in_english_and_in_chinese(tmp_path, legacy_meteor):
    """The client records 16 kHz PCM and sends it with no language: Meteor detects it."""
    make_user(legacy_meteor, "desk_voice")
    english, chinese = tmp_path / "en.pcm", tmp_path / "zh.pcm"
    english.write_bytes(speech_pcm())
    hanzi, pinyin = CHINESE_SPEECH[1]
    chinese.write_bytes(mandarin_pcm(pinyin))
    _login, said_en, said_zh = run_client(
        tmp_path,
        legacy_meteor,
        [
            {"action": "login", "username": "desk_voice", "password": PASSWORD},
            {"action": "voice", "path": str(english)},
            {"action": "voice", "path": str(chinese)},
        ],
    )
    assert said_en["bubbles"][0] == str(english)  # the clip's own bubble, then the text
    assert word_error_rate(SENTENCE, said_en["bubbles"][1]) <= 0.25
    assert character_error_rate([(hanzi, said_zh["bubbles"][3])]) <= 0.75
    assert said_en["notices"] == said_zh["notices"] == []


def test_voucher_redeem_from_the_settings_page(tmp_path, legacy_meteor):
    user_id = make_user(legacy_meteor, "desk_redeem")
    with legacy_meteor.maker.begin() as s:
        code = vouchers.create_voucher(s, name="desk-v", tokens=300, pic_times=4, academy="计算机学院", actor="t").id
    _login, redeemed, again = run_client(
        tmp_path,
        legacy_meteor,
        [
            {"action": "login", "username": "desk_redeem", "password": PASSWORD},
            {"action": "redeem", "code": code, "academy": "计算机学院"},
            {"action": "redeem", "code": code, "academy": "计算机学院"},
        ],
    )
    assert notice_texts(redeemed) == ["登录状态: 兑换令牌成功"]  # the client's own title for a success
    [refused] = notice_texts(again)
    assert refused.startswith("兑换状态: ") and "网络异常" not in refused
    assert holdings(legacy_meteor, user_id) == (300, 4)
    with legacy_meteor.maker() as s:
        assert len(s.scalars(select(Redemption).where(Redemption.user_id == user_id)).all()) == 1
