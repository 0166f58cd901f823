"""Drives the original AiProject desktop client through its own windows, as a user would.

Run by tests/clients/test_desktop.py, never imported by the project:

    python desktop_driver.py SCENARIO.json RESULT.json

with the working directory at a temporary copy of ../shared/clients/aiproject-desktop (the
client opens `./Templates/*.ui`, `./Assets/...` relative to it) whose only edit is the
server address. QT_QPA_PLATFORM=offscreen: real Qt windows, no display.

The scenario is a list of steps; each clicks the client's real buttons (login, register,
send, redeem) or, where a step needs a device the machine does not have (the file picker,
the microphone), calls the client's own function that runs after it (`img_text(path)`,
`send_audio_message(path)`). After each step the result records what the user sees: the
notices (InfoBar title and text) that appeared, the chat bubbles, and the client's own
state (`static.uuid`, `static.tokens`, …).

The machine has no sound card, so `pyaudio` (imported by the client's recorder module,
never used by these steps) is a stand-in module that refuses to open a stream.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import types

sys.path.insert(0, os.getcwd())
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _pyaudio_stand_in() -> types.ModuleType:
    module = types.ModuleType("pyaudio")
    module.paInt16 = 8

    class PyAudio:
        def open(self, *args, **kwargs):
            raise OSError("no audio input device on this machine")

        def get_sample_size(self, fmt):
            return 2

        def terminate(self):
            pass

    module.PyAudio = PyAudio
    return module


sys.modules.setdefault("pyaudio", _pyaudio_stand_in())

from PyQt5.QtCore import Qt  # noqa: E402
from PyQt5.QtWidgets import QApplication  # noqa: E402

QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
QApplication.setAttribute(Qt.AA_EnableHighDpiScaling)
QApplication.setAttribute(Qt.AA_UseHighDpiPixmaps)
app = QApplication(sys.argv)

from qfluentwidgets import InfoBar  # noqa: E402
from Sqlite.Static import static  # noqa: E402
from Views.ChatWindow import ChatChoiceWindow  # noqa: E402
from Views.MainWindow import MainWindow  # noqa: E402

_seen: set[int] = set()


def notices() -> list[dict[str, str]]:
    """InfoBars that appeared since the last call, anywhere in the application."""
    app.processEvents()
    found = []
    for window in app.allWidgets():
        if isinstance(window, InfoBar) and id(window) not in _seen:
            _seen.add(id(window))
            found.append({"title": window.title, "content": window.content})
    return found


def bubbles(chat) -> list[str]:
    out = []
    for row in range(chat.ListWidget.count()):
        widget = chat.ListWidget.itemWidget(chat.ListWidget.item(row))
        out.append(getattr(widget, "text", ""))
    return out


def client_state() -> dict:
    return {"uuid": static.uuid, "username": static.username, "tokens": static.tokens, "picTimes": static.picTimes}


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as handle:
        scenario = json.load(handle)
    results: list[dict] = []
    main_window = MainWindow()
    chat = None
    for step in scenario:
        action = step["action"]
        record: dict = {"action": action}
        try:
            if action in ("chat", "picture", "voice") and chat is None:
                choice = ChatChoiceWindow(main_window.chat_search_window)  # the "+" button's dialog
                choice.start_btn.click()  # "直接开始": a new chat session window
                choice.close()
                chat = main_window.chat_session_window
            if action == "register":
                login = main_window.login_window
                login.register_link.click()
                register = login.register_win
                register.user_name_input.setText(step["username"])
                register.email_input.setText(step.get("email", ""))
                register.password_input.setText(step["password"])
                register.academy_input.setText(step.get("academy", ""))
                register.captcha_input.setText(register.captcha_current)  # what the user reads off the picture
                register.register_button.click()
            elif action == "login":
                login = main_window.login_window
                login.user_name_input.setText(step["username"])
                login.pwd_input.setText(step["password"])
                login.login_button.click()
                record["main_window_visible"] = main_window.isVisible()
            elif action == "chat":
                chat.chat_input.setPlainText(step["text"])
                chat.send_btn.click()
                record["bubbles"] = bubbles(chat)
            elif action == "picture":
                chat.img_text(step["path"])  # what 上传图片 runs once the file picker returns the path
                record["bubbles"] = bubbles(chat)
            elif action == "voice":
                chat.send_audio_message(step["path"])  # what 确认 runs once the recorder has saved the clip
                record["bubbles"] = bubbles(chat)
            elif action == "redeem":
                settings = main_window.setting_window
                settings.LineEdit.setText(step["code"])
                settings.LineEdit2.setText(step["academy"])
                settings.duihuan_PushButton.click()
            else:
                raise ValueError(f"unknown step {action!r}")
        except Exception:
            record["error"] = traceback.format_exc()
        record["notices"] = notices()
        record["state"] = client_state()
        results.append(record)
        if "error" in record:
            break
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        json.dump(results, out, ensure_ascii=False, indent=1)
    sys.stdout.flush()
    os._exit(0)  # skip Qt's teardown of half-closed frameless windows


if __name__ == "__main__":
    main()
