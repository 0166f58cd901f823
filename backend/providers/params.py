"""Persona parameters (the seed-003 `model_file`), their ranges and one-line meanings, and
their translation for each backend.

`PersonaParams` is the one definition used by the seed-003 API (range checks: one bad
value → 400, nothing changes), the dashboard's persona form (ranges and help text come
from the field metadata), and the providers (each translates the fields its backend
supports and drops the rest). It lives with the providers, at the bottom of the layers,
because every chat provider translates it; the catalog stores it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from db.models import ModelFile


def _f(ge: float | None = None, le: float | None = None, gt: float | None = None, en: str = "", zh: str = "") -> Any:
    return Field(ge=ge, le=le, gt=gt, description=en, json_schema_extra={"zh": zh})


class PersonaParams(BaseModel):
    """Ollama-style sampling parameters; None means "the backend's default"."""

    model_config = ConfigDict(extra="forbid")

    mirostat: Annotated[
        int | None,
        _f(
            0,
            2,
            en="Mirostat sampling: 0 off, 1 Mirostat, 2 Mirostat 2.0",
            zh="Mirostat 采样：0 关闭，1 Mirostat，2 Mirostat 2.0",
        ),
    ] = None
    mirostat_eta: Annotated[
        float | None, _f(0, 1, en="Mirostat learning rate (default 0.1)", zh="Mirostat 学习率（默认 0.1）")
    ] = None
    mirostat_tau: Annotated[
        float | None,
        _f(
            0,
            10,
            en="Mirostat target: lower is more focused (default 5.0)",
            zh="Mirostat 目标值：越低越集中（默认 5.0）",
        ),
    ] = None
    num_ctx: Annotated[int | None, _f(gt=0, le=131072, en="Context window in tokens", zh="上下文窗口（token 数）")] = (
        None
    )
    repeat_last_n: Annotated[
        int | None,
        _f(
            -1,
            131072,
            en="How far back to look for repeats (0 off, -1 = num_ctx)",
            zh="检查重复的回看长度（0 关闭，-1 为 num_ctx）",
        ),
    ] = None
    repeat_penalty: Annotated[
        float | None, _f(0, 5, en="Penalty for repeated tokens (default 1.1)", zh="重复 token 惩罚（默认 1.1）")
    ] = None
    temperature: Annotated[
        float | None,
        _f(0, 2, en="Randomness: higher is more creative (default 0.8)", zh="随机性：越高越有创造力（默认 0.8）"),
    ] = None
    seed: Annotated[
        int | None, _f(-(2**63), 2**63 - 1, en="Random seed for reproducible answers", zh="随机种子，用于复现回答")
    ] = None
    stop: Annotated[
        list[str] | None,
        Field(max_length=8, description="Stop sequences", json_schema_extra={"zh": "停止序列"}),
    ] = None
    tfs_z: Annotated[float | None, _f(0, 10, en="Tail-free sampling (1 = off)", zh="尾部自由采样（1 为关闭）")] = None
    num_predict: Annotated[
        int | None,
        _f(
            -2,
            131072,
            en="Max tokens to generate (-1 endless, -2 fill context)",
            zh="最多生成 token 数（-1 不限，-2 填满上下文）",
        ),
    ] = None
    top_p: Annotated[
        float | None, _f(0, 1, en="Nucleus sampling threshold (default 0.9)", zh="核采样阈值（默认 0.9）")
    ] = None
    min_p: Annotated[
        float | None, _f(0, 1, en="Minimum probability relative to the top token", zh="相对最高概率 token 的最小概率")
    ] = None
    top_k: Annotated[
        int | None,
        _f(
            0,
            1000,
            en="Sample from the k most likely tokens (default 40)",
            zh="从概率最高的 k 个 token 中采样（默认 40）",
        ),
    ] = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        """Accept a list, a JSON list, or one stop string (the seed stores a String(500))."""
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError("stop must be a string or a list of strings") from None
            else:
                return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _stop_items(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not s or len(s) > 60 for s in value):
            raise ValueError("each stop sequence must be 1-60 characters")
        return value or None

    @classmethod
    def from_model_file(cls, mf: ModelFile | None) -> PersonaParams:
        if mf is None:
            return cls()
        values = {name: getattr(mf, name) for name in cls.model_fields}
        return cls.model_validate(values)

    def apply_to(self, mf: ModelFile) -> None:
        """Write every field onto a model_file row (None clears it)."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "stop":
                value = json.dumps(value, ensure_ascii=False) if value else None
            setattr(mf, name, value)

    def set_fields(self) -> dict[str, Any]:
        """Only the parameters that are set."""
        return self.model_dump(exclude_none=True)


# --- Translation for each backend -------------------------------------------------------
# A parameter a backend has no true equivalent for is dropped, never sent blind.


def _params(params: PersonaParams | None) -> PersonaParams:
    return params if params is not None else PersonaParams.model_validate({})


def output_limit(params: PersonaParams | None, max_tokens: int) -> int:
    """The most tokens to generate: the caller's cap (what quota was reserved for), lowered by
    a positive `num_predict`; `num_predict` -1 (endless) and -2 (fill context) keep the cap."""
    num_predict = _params(params).num_predict
    if num_predict is not None and num_predict > 0:
        return max(1, min(num_predict, max_tokens))
    return max(1, max_tokens)


def to_llama_kwargs(params: PersonaParams | None, max_tokens: int) -> dict[str, Any]:
    """llama-cpp-python `create_chat_completion` arguments. `mirostat` becomes
    `mirostat_mode`. Not here: `num_ctx` and `repeat_last_n` are context settings the
    engine applies itself (clamped to the loaded context), and `tfs_z` is dropped —
    llama.cpp removed tail-free sampling and llama-cpp-python ignores the argument."""
    p = _params(params)
    kwargs: dict[str, Any] = {"max_tokens": output_limit(p, max_tokens)}
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop"):
        value = getattr(p, name)
        if value is not None:
            kwargs[name] = list(value) if name == "stop" else value
    if p.mirostat is not None:
        kwargs["mirostat_mode"] = p.mirostat
    if p.mirostat_eta is not None:
        kwargs["mirostat_eta"] = p.mirostat_eta
    if p.mirostat_tau is not None:
        kwargs["mirostat_tau"] = p.mirostat_tau
    return kwargs


OPENAI_MAX_STOP = 4


def to_openai_fields(params: PersonaParams | None, max_tokens: int) -> dict[str, Any]:
    """OpenAI chat-completions fields: temperature, top_p, seed, stop (the API takes at most
    4; the first 4 are kept) and max_tokens. Dropped: top_k, min_p, tfs_z, the mirostat
    trio, num_ctx, repeat_last_n, and repeat_penalty — a multiplicative logit penalty that
    frequency/presence penalties (additive, count-based) do not reproduce."""
    p = _params(params)
    fields: dict[str, Any] = {"max_tokens": output_limit(p, max_tokens)}
    if p.temperature is not None:
        fields["temperature"] = p.temperature
    if p.top_p is not None:
        fields["top_p"] = p.top_p
    if p.seed is not None:
        fields["seed"] = p.seed
    if p.stop:
        fields["stop"] = list(p.stop[:OPENAI_MAX_STOP])
    return fields


def to_ollama_options(params: PersonaParams | None, max_tokens: int) -> dict[str, Any]:
    """Ollama `/api/chat` `options`: every persona parameter under its own name, with
    `num_predict` capped by `max_tokens` (quota is reserved for that many)."""
    options = _params(params).set_fields()
    options["num_predict"] = output_limit(params, max_tokens)
    if "stop" in options:
        options["stop"] = list(options["stop"])
    return options


SPARK_MAX_TOP_K = 6
SPARK_MIN_TEMPERATURE = 0.01


def to_spark_chat(params: PersonaParams | None, max_tokens: int, *, domain: str | None = None) -> dict[str, Any]:
    """Spark `parameter.chat`: domain, temperature (Spark takes (0, 1]; the persona's 0-2 is
    clamped into it), max_tokens, and top_k (Spark takes 1-6; clamped; 0 = off is dropped).
    Everything else has no Spark equivalent and is dropped."""
    p = _params(params)
    chat: dict[str, Any] = {}
    if domain:
        chat["domain"] = domain
    if p.temperature is not None:
        chat["temperature"] = min(1.0, max(SPARK_MIN_TEMPERATURE, p.temperature))
    chat["max_tokens"] = output_limit(p, max_tokens)
    if p.top_k:
        chat["top_k"] = min(SPARK_MAX_TOP_K, p.top_k)
    return chat
