"""The Gradio playground, mounted at /playground on the API server.

Three tabs — Chat, Voice, Picture — over `backend.playground.session`; this module only
builds the Blocks and wires events. Every event that calls a model (chat, transcription,
picture recognition, and the chats a "Send to chat" starts) runs in ONE concurrency group,
`MODEL_GROUP`, sized by `Settings.model_concurrency`. Stop is outside that group so it is
never queued behind the work it stops.

Sign-in: see `backend.playground.gate` (auth_dependency + the sign-in-link exchange).
Language: `?lang=zh-CN|en` on the URL (the dashboard passes its choice), else
`Settings.language`; the labels are switched when the page loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import gradio as gr
from fastapi import FastAPI
from sqlalchemy.orm import sessionmaker

from backend.accounts.identity import Principal
from backend.config import Settings
from backend.errors import ServiceError
from backend.i18n import normalize
from backend.playground import logs
from backend.playground import session as playground
from backend.playground.gate import LANG_PARAM, PlaygroundAuth, PlaygroundGate
from backend.playground.labels import label
from backend.playground.session import ChatProgress

log = logging.getLogger("meteor.playground")

PATH = "/playground"
MODEL_GROUP = "meteor-models"
CSS = """
#pg-status { min-height: 1.6em; }
#pg-who { text-align: right; }
footer { display: none !important; }
"""


def _account(maker: sessionmaker, request: gr.Request) -> Principal:
    """The signed-in account of this event; a gone or disabled account is a visible error."""
    try:
        with maker() as session:
            return playground.account_for(session, request.username)
    except ServiceError as exc:
        raise gr.Error(exc.message) from None


def _balance_line(balance, language: str) -> str:
    if balance is None:
        return ""
    return label("balance", language, tokens=balance.tokens, pic_times=balance.pic_times)


def _who_line(account: Principal, balance, language: str) -> str:
    who = label("who.admin" if account.is_admin else "who.user", language, name=account.name)
    money = _balance_line(balance, language)
    return f"{who} · {money}" if money else who


def _error_line(exc: ServiceError, language: str) -> str:
    """A refusal's own message (no quota, unknown model, bad file…); for a server-side failure
    (5xx) a generic translated line, the detail logged here, never shown (it may name a path)."""
    if exc.status >= 500:
        log.warning("playground: %s %s: %s", exc.status, exc.code, exc.message)
        return "⚠ " + label("status.error", language, message=label("error.upstream", language))
    return "⚠ " + label("status.error", language, message=exc.message)


def _unexpected_line(language: str) -> str:
    """What the page shows for an unexpected failure: a generic translated line; the
    traceback goes to the server log."""
    log.exception("playground: an event failed")
    return "⚠ " + label("status.error", language, message=label("error.generic", language))


def chat_status(progress: ChatProgress, language: str) -> str:
    """The line under the chat: streaming, tokens used and balance left, stopped, or the error."""
    money = _balance_line(progress.balance, language)
    if progress.error is not None:
        text = _error_line(progress.error, language)
    elif progress.stopped is not None:
        text = "■ " + label("status.stopped", language, charged=progress.stopped.charged_tokens)
    elif progress.result is not None:
        r = progress.result
        if r.charged_to_user:
            text = "✓ " + label(
                "status.used",
                language,
                prompt=r.prompt_tokens,
                completion=r.completion_tokens,
                charged=r.charged_tokens,
            )
        else:
            text = "✓ " + label("status.admin_used", language, prompt=r.prompt_tokens, completion=r.completion_tokens)
    elif progress.done:
        text = label("status.ready", language)
    else:
        return "… " + label("status.streaming", language)
    return f"{text} {money}".strip()


def build_blocks(settings: Settings, maker: sessionmaker) -> gr.Blocks:
    """The playground's Blocks, labelled in `Settings.language` (switched on load by `?lang=`)."""
    default_lang = normalize(settings.language)

    def lbl(key: str) -> str:
        return label(key, default_lang)

    with gr.Blocks(title=lbl("title"), analytics_enabled=False) as blocks:
        lang = gr.State(default_lang)
        conversation = gr.State(None)
        with gr.Row(equal_height=True):
            with gr.Column(scale=3):
                title = gr.Markdown(f"## ☄ {lbl('title')}\n{lbl('intro')}", elem_id="pg-title")
            with gr.Column(scale=2):
                who = gr.Markdown("", elem_id="pg-who")
        with gr.Tabs(selected="chat") as tabs:
            with gr.Tab(lbl("tab.chat"), id="chat") as chat_tab:
                model = gr.Dropdown(choices=[], label=lbl("model"), elem_id="pg-model", interactive=True)
                chatbot = gr.Chatbot(label=lbl("chatbot"), elem_id="pg-chatbot", height=380, buttons=["copy"])
                status = gr.Markdown(lbl("status.ready"), elem_id="pg-status")
                chat_input = gr.MultimodalTextbox(
                    placeholder=lbl("chat.placeholder"),
                    show_label=False,
                    file_types=["image", "audio"],
                    file_count="multiple",
                    elem_id="pg-input",
                )
                with gr.Row():
                    stop = gr.Button(lbl("chat.stop"), variant="stop", elem_id="pg-stop", scale=0, min_width=120)
                    new_chat = gr.Button(lbl("chat.new"), elem_id="pg-new", scale=0, min_width=120)
            with gr.Tab(lbl("tab.voice"), id="voice") as voice_tab:
                audio = gr.Audio(
                    sources=["microphone", "upload"],
                    type="filepath",
                    format="wav",
                    label=lbl("voice.audio"),
                    elem_id="pg-audio",
                )
                transcribe = gr.Button(lbl("voice.run"), variant="primary", elem_id="pg-transcribe")
                transcript = gr.Textbox(label=lbl("voice.text"), lines=4, elem_id="pg-transcript")
                voice_to_chat = gr.Button(lbl("send_to_chat"), elem_id="pg-voice-to-chat")
                voice_status = gr.Markdown("", elem_id="pg-voice-status")
            with gr.Tab(lbl("tab.picture"), id="picture") as picture_tab:
                image = gr.Image(type="filepath", format="png", label=lbl("picture.image"), elem_id="pg-image")
                recognise = gr.Button(lbl("picture.run"), variant="primary", elem_id="pg-recognise")
                picture_text = gr.Textbox(label=lbl("picture.text"), lines=4, elem_id="pg-picture-text")
                picture_to_chat = gr.Button(lbl("send_to_chat"), elem_id="pg-picture-to-chat")
                picture_status = gr.Markdown("", elem_id="pg-picture-status")

        # --- page load: who, balance, models, language ---------------------------------------
        def on_load(request: gr.Request):
            language = normalize(request.query_params.get(LANG_PARAM) or default_lang)

            def read():
                with maker() as session:
                    account = playground.account_for(session, request.username)
                    return account, playground.model_choices(session, account), playground.balance(session, account)

            account, choices, balance = read()
            ready = label("status.ready", language) if choices.names else "⚠ " + label("chat.empty", language)
            return (
                language,
                f"## ☄ {label('title', language)}\n{label('intro', language)}",
                _who_line(account, balance, language),
                gr.update(choices=choices.names, value=choices.default, label=label("model", language)),
                gr.update(label=label("chatbot", language)),
                gr.update(placeholder=label("chat.placeholder", language)),
                gr.update(value=label("chat.stop", language)),
                gr.update(value=label("chat.new", language)),
                ready,
                gr.update(label=label("tab.chat", language)),
                gr.update(label=label("tab.voice", language)),
                gr.update(label=label("tab.picture", language)),
                gr.update(label=label("voice.audio", language)),
                gr.update(value=label("voice.run", language)),
                gr.update(label=label("voice.text", language)),
                gr.update(value=label("send_to_chat", language)),
                gr.update(label=label("picture.image", language)),
                gr.update(value=label("picture.run", language)),
                gr.update(label=label("picture.text", language)),
                gr.update(value=label("send_to_chat", language)),
            )

        blocks.load(
            on_load,
            None,
            [
                lang,
                title,
                who,
                model,
                chatbot,
                chat_input,
                stop,
                new_chat,
                status,
                chat_tab,
                voice_tab,
                picture_tab,
                audio,
                transcribe,
                transcript,
                voice_to_chat,
                image,
                recognise,
                picture_text,
                picture_to_chat,
            ],
            api_visibility="private",
        )

        # --- chat ------------------------------------------------------------------------------
        async def on_chat(
            message: dict[str, Any] | None, history, model_name, conversation_id, language, request: gr.Request
        ):
            account = await anyio.to_thread.run_sync(_account, maker, request)
            message = message or {}
            text = str(message.get("text") or "")
            files = [f if isinstance(f, str) else f.get("path") for f in message.get("files") or []]
            if files:
                try:
                    attached = await playground.attachments_text(
                        maker,
                        settings,
                        account=account,
                        files=[f for f in files if f],
                        describe=lambda kind, found: label(f"attachment.{kind}", language, text=found),
                    )
                except ServiceError as exc:
                    yield history, message, conversation_id, _error_line(exc, language), gr.update()
                    return
                except Exception:
                    yield history, message, conversation_id, _unexpected_line(language), gr.update()
                    return
                text = f"{text}\n\n{attached}".strip()
            async for progress in playground.stream_chat(
                maker,
                settings,
                account=account,
                model_name=model_name,
                message=text,
                history=history,
                conversation_id=conversation_id,
                session_key=request.session_hash,
            ):
                who_update: dict[str, Any] | str = gr.update()
                if progress.done and progress.balance is not None:
                    who_update = _who_line(account, progress.balance, language)
                yield progress.history, None, progress.conversation_id, chat_status(progress, language), who_update

        chat_inputs = [chat_input, chatbot, model, conversation, lang]
        chat_outputs = [chatbot, chat_input, conversation, status, who]
        chat_event = chat_input.submit(
            on_chat,
            chat_inputs,
            chat_outputs,
            concurrency_id=MODEL_GROUP,
            concurrency_limit=settings.model_concurrency,
            api_visibility="private",
        )

        async def on_stop(conversation_id, language, request: gr.Request):
            outcome = await playground.stop_chat(request.session_hash)
            if outcome is None:
                return conversation_id, gr.update()
            progress = ChatProgress([], outcome.delivered, outcome.conversation_id, True, stopped=outcome)
            progress.balance = outcome.balance
            return outcome.conversation_id, chat_status(progress, language)

        stop.click(
            on_stop,
            [conversation, lang],
            [conversation, status],
            cancels=[chat_event],
            concurrency_limit=None,
            api_visibility="private",
        )

        def on_new_chat(language):
            return [], None, label("status.ready", language), {"text": "", "files": []}

        new_chat.click(
            on_new_chat, [lang], [chatbot, conversation, status, chat_input], cancels=[chat_event], queue=False
        )
        chatbot.clear(on_new_chat, [lang], [chatbot, conversation, status, chat_input], queue=False)

        # --- voice and pictures ----------------------------------------------------------------
        async def on_transcribe(path, language, request: gr.Request):
            try:
                account = await anyio.to_thread.run_sync(_account, maker, request)
                found = await playground.transcribe(maker, settings, account=account, audio_path=path)
            except ServiceError as exc:
                return gr.update(), _error_line(exc, language)
            except Exception:
                return gr.update(), _unexpected_line(language)
            return found.content, "✓ " + label("status.voice_done", language, seconds=found.audio_seconds or 0.0)

        transcribe.click(
            on_transcribe,
            [audio, lang],
            [transcript, voice_status],
            concurrency_id=MODEL_GROUP,
            concurrency_limit=settings.model_concurrency,
            api_visibility="private",
        )

        async def on_recognise(path, language, request: gr.Request):
            try:
                account = await anyio.to_thread.run_sync(_account, maker, request)
                found = await playground.recognise_picture(maker, settings, account=account, image_path=path)
                balance = await anyio.to_thread.run_sync(playground.current_balance, maker, account)
            except ServiceError as exc:
                return gr.update(), _error_line(exc, language), gr.update()
            except Exception:
                return gr.update(), _unexpected_line(language), gr.update()
            done = "✓ " + label("status.picture_done", language) + " " + _balance_line(balance, language)
            return found.content, done.strip(), _who_line(account, balance, language)

        recognise.click(
            on_recognise,
            [image, lang],
            [picture_text, picture_status, who],
            concurrency_id=MODEL_GROUP,
            concurrency_limit=settings.model_concurrency,
            api_visibility="private",
        )

        def to_chat(text):
            return {"text": text or "", "files": []}, gr.Tabs(selected="chat")

        for source, button in ((transcript, voice_to_chat), (picture_text, picture_to_chat)):
            button.click(to_chat, [source], [chat_input, tabs], queue=False).then(
                on_chat,
                chat_inputs,
                chat_outputs,
                concurrency_id=MODEL_GROUP,
                concurrency_limit=settings.model_concurrency,
                api_visibility="private",
            )
    return blocks


def mount(app: FastAPI, settings: Settings) -> None:
    """Mount the playground at /playground, signed-in accounts only (called by create_app)."""
    maker = app.state.sessionmaker
    blocks = build_blocks(settings, maker)
    blocks.queue(default_concurrency_limit=settings.model_concurrency)
    app.add_middleware(PlaygroundGate, prefix=PATH, settings=settings, maker=maker)
    logs.install()  # sign-in link tokens never reach the access log
    gr.mount_gradio_app(
        app,
        blocks,
        path=PATH,
        auth_dependency=PlaygroundAuth(settings, maker),
        footer_links=[],
        ssr_mode=False,
        mcp_server=False,
        css=CSS,
        show_error=False,  # an unexpected exception's text (a cache path, a server path) stays in the log
        max_file_size=settings.upload_max_bytes,
        blocked_paths=_blocked_paths(settings),
    )
    # mount_gradio_app never marks the Blocks launched, and Gradio's own allowed-path check
    # (processing_utils._check_allowed) returns early for Blocks that have not launched: an
    # input could name any server file. Turn the check on (inputs must then lie in the upload
    # folder); the gate's per-user rule (backend.playground.files) is the one that holds.
    blocks.has_launched = True


def _blocked_paths(settings: Settings) -> list[str]:
    """Server paths Gradio must never read or serve, whatever else allows them: the data
    directory (secrets.json, meteor.db), the SQLite file, and /proc, /sys, /etc, unless one
    of them holds Gradio's own upload folder."""
    from backend.playground.files import upload_folder

    candidates: list[str | Path] = [settings.data_dir, "/proc", "/sys", "/etc"]
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        candidates.append(url.removeprefix("sqlite:///"))
    uploads = str(upload_folder().resolve())
    blocked = []
    for candidate in candidates:
        path = str(Path(candidate).resolve())
        if not (uploads + "/").startswith(path.rstrip("/") + "/"):
            blocked.append(path)
    return blocked
