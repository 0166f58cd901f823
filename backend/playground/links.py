"""The page that asks before a sign-in link switches a signed-in browser to another account.

A link for account B opened in a browser whose playground session is account A (a link in a
mail, a page that navigates the victim there: login CSRF) does not sign in: the browser gets
this page, which names both accounts, and B's link is not used up. Only a POST of the page's
own form switches, and only from that same browser: the form carries
`confirm = HMAC(cookie_key, A's session cookie ‖ B's link)`, which a foreign page cannot
compute (it never sees the HttpOnly cookie), and the gate also refuses the POST from a foreign
`Origin`. "Stay" is a plain link back to the playground, without the token.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from urllib.parse import urlencode

from starlette.responses import HTMLResponse

from backend.config import Settings
from backend.playground.labels import label

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#333}"
    "h1{font-size:1.4rem}button,a.stay{font:inherit;padding:.5rem 1rem;margin:.5rem .5rem 0 0;display:inline-block}"
    "a.stay{color:#333;border:1px solid #aaa;border-radius:4px;text-decoration:none}"
)


def confirm_code(settings: Settings, session_cookie: str, link: str) -> str:
    key = settings.secret("cookie_key").encode()
    return hmac.new(
        key, b"playground-switch\0" + session_cookie.encode() + b"\0" + link.encode(), hashlib.sha256
    ).hexdigest()


def confirm_matches(settings: Settings, session_cookie: str | None, link: str, given: str | None) -> bool:
    if not session_cookie or not given:
        return False
    return hmac.compare_digest(confirm_code(settings, session_cookie, link), given)


def switch_page(
    *, language: str, action: str, current: str, other: str, link: str, confirm: str, keep: list[tuple[str, str]]
) -> HTMLResponse:
    def t(key: str, **values: object) -> str:
        return html.escape(label(key, language, **values))

    fields = "".join(
        f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
        for k, v in [("token", link), ("confirm", confirm), *keep]
    )
    stay = html.escape(action + ("?" + urlencode(keep) if keep else ""))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{t('switch.title')}</title><style>{STYLE}</style></head>"
        f"<body><h1>🔐 {t('switch.title')}</h1>"
        f"<p>{t('switch.body', current=current, other=other)}</p>"
        f"<form method='post' action='{html.escape(action)}'>{fields}"
        f"<button type='submit' id='pg-switch'>{t('switch.confirm', other=other)}</button>"
        f"<a class='stay' id='pg-stay' href='{stay}'>{t('switch.stay', current=current)}</a>"
        "</form></body></html>"
    )
    return HTMLResponse(
        page,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"},
    )
