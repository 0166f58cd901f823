"""Token counting offline, for upstreams that report no usage and for what a broken stream
delivered: SmolLM2's vocabulary (see embedded_llama.OfflineTokenizer), loaded on first use.
The chat providers import this module; it imports none of them."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.providers.embedded_llama import OfflineTokenizer

_lock = threading.Lock()
_tokenizer: OfflineTokenizer | None = None


def get_tokenizer() -> OfflineTokenizer:
    """The process-wide offline tokenizer (SmolLM2's vocabulary; see embedded_llama)."""
    global _tokenizer
    from backend.providers.embedded_llama import OfflineTokenizer

    with _lock:
        if _tokenizer is None:
            _tokenizer = OfflineTokenizer()
        return _tokenizer


def count_tokens(messages: list[dict[str, str]]) -> int:
    """Prompt tokens of a message list, counted offline (chat template included)."""
    return get_tokenizer().count_messages(messages)


def count_text_tokens(text: str) -> int:
    """Tokens of a piece of text (e.g. what was delivered before a stream broke), counted offline."""
    return get_tokenizer().count_text(text)
