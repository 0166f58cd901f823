"""Personas in the catalog: the help text of each persona parameter, and the messages a
persona puts ahead of a dialog (system prompt, few-shot examples). The parameters
themselves are `backend/providers/params.py: PersonaParams`."""

from __future__ import annotations

from backend.providers.params import PersonaParams


def field_help(name: str, language: str = "en") -> str:
    info = PersonaParams.model_fields[name]
    zh = info.json_schema_extra.get("zh") if isinstance(info.json_schema_extra, dict) else None
    if language.startswith("zh") and isinstance(zh, str):
        return zh
    return info.description or ""


def build_messages(
    system: str | None, examples: list[tuple[str, str]], dialog: list[dict[str, str]]
) -> list[dict[str, str]]:
    """What goes upstream: the system prompt, each example pair as a user and an assistant
    turn, then the dialog. A system turn inside the dialog is kept after the persona's."""
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    for user_message, model_message in examples:
        messages.append({"role": "user", "content": user_message})
        messages.append({"role": "assistant", "content": model_message})
    messages.extend({"role": m["role"], "content": m["content"]} for m in dialog)
    return messages
