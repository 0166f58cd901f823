"""The playground's labels and messages in Chinese and English.

The language follows the dashboard's switch: the dashboard puts `?lang=zh-CN|en` on the
playground's URL; without it `Settings.language` applies (see `i18n.normalize`).
"""

from __future__ import annotations

from backend.i18n import normalize

LABELS: dict[str, tuple[str, str]] = {
    "title": ("流星体验场", "Meteor playground"),
    "intro": (
        "与模型对话、语音转文字、识别图片中的文字。用量从你的配额中扣除。",
        "Chat with a model, turn speech into text, read the text in a picture. Usage is taken from your quota.",
    ),
    "tab.chat": ("对话", "Chat"),
    "tab.voice": ("语音", "Voice"),
    "tab.picture": ("图片", "Picture"),
    "model": ("模型", "Model"),
    "chatbot": ("对话", "Conversation"),
    "chat.placeholder": (
        "输入消息，回车发送；可附上图片或音频，其中的文字会一并发送",
        "Type a message and press Enter; attach a picture or a clip to send its text too",
    ),
    "chat.stop": ("停止", "Stop"),
    "chat.new": ("新对话", "New chat"),
    "chat.empty": (
        "还没有可用的模型，请联系管理员启用一个模型。",
        "No model is enabled yet; ask an admin to enable one.",
    ),
    "voice.audio": ("录音或上传（WAV）", "Record or upload (WAV)"),
    "voice.run": ("转写", "Transcribe"),
    "voice.text": ("转写结果", "Transcript"),
    "picture.image": ("上传图片（PNG、JPEG、WebP、BMP）", "Upload a picture (PNG, JPEG, WebP, BMP)"),
    "picture.run": ("识别文字（消耗 1 次识图）", "Recognise text (uses 1 picTime)"),
    "picture.text": ("识别结果", "Recognised text"),
    "send_to_chat": ("发送到对话", "Send to chat"),
    "who.user": ("当前用户：{name}", "Signed in as {name}"),
    "who.admin": (
        "管理员 {name}（管理员测试，不计入任何用户）",
        "Admin {name} (console test, charged to no user)",
    ),
    "balance": ("余额：{tokens} tokens，{pic_times} 次识图", "Balance: {tokens} tokens, {pic_times} picTimes"),
    "status.ready": ("就绪。", "Ready."),
    "status.streaming": ("正在生成…", "Streaming…"),
    "status.used": (
        "本次用量：输入 {prompt} + 输出 {completion} tokens，扣除 {charged} tokens。",
        "This reply used {prompt} prompt + {completion} completion tokens; {charged} tokens charged.",
    ),
    "status.admin_used": (
        "本次用量：输入 {prompt} + 输出 {completion} tokens（管理员测试，不扣任何用户的配额）。",
        "This reply used {prompt} prompt + {completion} completion tokens (admin test, charged to no user).",
    ),
    "status.stopped": (
        "已停止：只按已生成的部分扣除 {charged} tokens。",
        "Stopped: only the delivered part was charged, {charged} tokens.",
    ),
    "status.error": ("出错了：{message}", "Something went wrong: {message}"),
    "status.voice_done": ("转写完成（{seconds:.1f} 秒音频）。", "Transcribed ({seconds:.1f} s of audio)."),
    "status.picture_done": ("识别完成，扣除 1 次识图。", "Recognised; 1 picTime charged."),
    "attachment.voice": ("[语音内容] {text}", "[voice clip] {text}"),
    "attachment.picture": ("[图片文字] {text}", "[picture text] {text}"),
    "denied.title": ("请先登录", "Please sign in"),
    "denied.body": (
        "体验场只对已登录的流星用户开放。请从控制台的“体验场”页面打开它（登录链接几分钟内有效）。",
        "The playground is for signed-in Meteor accounts only. Open it from the dashboard's Playground page "
        "(its sign-in link is valid for a few minutes).",
    ),
    "denied.link": (
        "这个登录链接无效或已过期，请在控制台中刷新登录链接。",
        "This sign-in link is invalid or has expired; refresh the sign-in link in the dashboard.",
    ),
    "switch.title": ("切换体验场账号？", "Switch playground account?"),
    "switch.body": (
        "这个浏览器的体验场已登录为 {current}。你打开的登录链接属于 {other}。只有你确认后才会切换。",
        "This browser's playground is signed in as {current}. The sign-in link you opened is for {other}. "
        "Nothing changes unless you confirm.",
    ),
    "switch.confirm": ("切换为 {other}", "Switch to {other}"),
    "switch.stay": ("继续使用 {current}", "Stay signed in as {current}"),
    "switch.refused": (
        "无法确认这次切换，账号没有改变。请从控制台重新打开体验场。",
        "This switch could not be confirmed and nothing changed; open the playground again from the dashboard.",
    ),
    "error.file": (
        "找不到这个文件，或它不是你上传的；请重新上传。",
        "That file is not one you uploaded, or it is gone; upload it again.",
    ),
    "error.origin": ("体验场不接受来自其他网站的请求。", "The playground does not take requests from other sites."),
    "error.generic": (
        "出了点问题，请重试；如果一直出现，请联系管理员。",
        "Something went wrong; try again, and tell an admin if it keeps happening.",
    ),
    "error.upstream": (
        "模型服务暂时不可用，请稍后重试。",
        "The model service is not available right now; try again later.",
    ),
}


def label(key: str, language: str | None, **values: object) -> str:
    """The text for `key` in `language` (zh-CN unless it starts with en), formatted with `values`."""
    pair = LABELS.get(key)
    if pair is None:
        return key
    text = pair[1] if normalize(language) == "en" else pair[0]
    return text.format(**values) if values else text
