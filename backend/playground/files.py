"""Whose files are whose in the playground.

Gradio keeps every upload under one shared folder (`<GRADIO_TEMP_DIR or /tmp/gradio>/<sha256>/<name>`)
and, mounted with `gr.mount_gradio_app`, never marks its Blocks as launched, so its own
allowed-path check (`processing_utils._check_allowed`) returns early: any path a client
names as a `FileData` input was copied into the cache and handed to the event. Even with
the check on, it accepts every file in the shared upload folder, i.e. every user's uploads.

Meteor therefore owns the rule itself, in the gate (`backend.playground.gate`):
- An upload is hard-linked into the caller's own folder,
  `<upload folder>/meteor-owners/<owner key>/<sha256>/<name>`, and the upload's answer names
  that path. The owner key is an HMAC of the account's subject (`user:<id>`), so folders
  cannot be guessed and a path says by itself whose file it is (no registry to share
  between processes; a file lives on the disk of the process that took the upload).
- A request body that names a file (any JSON object with a `path`, with or without
  Gradio's `meta`) is refused unless every such path lies in the caller's own folder.
- `file=` serves only the caller's own files; `proxy=` is refused (no loaded Spaces here).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backend.config import Settings

OWNERS_DIR = "meteor-owners"


def upload_folder() -> Path:
    """Gradio's upload folder, resolved as Gradio resolves it (`utils.get_upload_folder`)."""
    from gradio import utils

    return Path(utils.get_upload_folder())


def owner_key(settings: Settings, subject: str) -> str:
    secret = settings.secret("jwt_secret").encode()
    return hmac.new(secret, b"playground-files\0" + subject.encode(), hashlib.sha256).hexdigest()[:40]


def owner_dir(settings: Settings, subject: str) -> Path:
    return upload_folder() / OWNERS_DIR / owner_key(settings, subject)


def owns(settings: Settings, subject: str | None, path: str) -> bool:
    """True when `path` is a regular file in the caller's own folder (symlinks and `..`
    resolved first)."""
    if not subject or not isinstance(path, str) or not path or "\0" in path:
        return False
    try:
        root = os.path.realpath(owner_dir(settings, subject))
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return False
    return real.startswith(root + os.sep) and os.path.isfile(real)


def adopt(settings: Settings, subject: str, uploaded: list[Any]) -> list[Any]:
    """Hard-link each path Gradio's upload answered with into the caller's folder and answer
    those paths instead (anything that is not a file in the upload folder is dropped)."""
    base = upload_folder().resolve()
    mine = owner_dir(settings, subject)
    adopted = []
    for item in uploaded:
        if not isinstance(item, str):
            continue
        source = Path(item).resolve()
        try:
            relative = source.relative_to(base)
        except ValueError:
            continue
        if relative.parts[:1] == (OWNERS_DIR,) or not source.is_file():
            continue
        target = mine / relative  # <sha256 of the content>/<name>: the same name is the same bytes
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            import shutil

            shutil.copyfile(source, target)
        adopted.append(str(target))
    return adopted


def named_paths(data: Any) -> Iterator[Any]:
    """Every `path` named by a JSON object anywhere in `data` (what Gradio, or a component's
    own pre-processing, would read from disk)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "path" in item:
                yield item["path"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def foreign_paths(settings: Settings, subject: str | None, data: Any) -> list[Any]:
    """The paths in `data` that are not the caller's own files (empty when all are)."""
    return [p for p in named_paths(data) if p is not None and not owns(settings, subject, p)]
