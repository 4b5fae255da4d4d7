"""Per-request style arguments: parsing and validation of ``SamplingParams.extra_args``.

This module is imported by vLLM's API process (through ``validate_params``), so it must stay
light: no torch, no vLLM, no packs. Everything it needs to know about the server (the configured
style names and modes) is passed in.

Request extras (OpenAI: ``"vllm_xargs": {...}``; offline: ``SamplingParams(extra_args={...})``):

    style             configured style name; absent = the request is not steered. A blend of up to
                      MAX_BLEND styles: "austen:0.5,news:0.2" (each its own lambda), "austen,news"
                      (style_strength each), or a list ["austen", "news"]
    style_strength    lambda, a finite number, 0 <= lambda <= MAX_STRENGTH (default DEFAULT_STRENGTH);
                      with a list of styles, one number for all or a list of one per style
    style_mode        one of the server's modes, e.g. "exact" (default) or "paper"
    style_adaptive    0 or 1: scale lambda by the model's normalised entropy at each step
    style_loop_guard  0 (off) or an n-gram size 2..8: no boost for a token that would repeat an
                      n-gram of the request's own recent output
    style_loop_penalty  with the loop guard, push such a token DOWN by strength x this many nats
                      below its unsteered logit (finite, 0..MAX_LOOP_PENALTY; default 0 = no boost only)

Every bad value raises RequestError (a ValueError, so vLLM answers HTTP 400 with the message); its
``key`` names the argument, and messages quote bad values briefly (quoting.brief).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import RequestError
from .quoting import HugeInteger, brief, kind, listing

KEY_STYLE = "style"
KEY_STRENGTH = "style_strength"
KEY_MODE = "style_mode"
KEY_ADAPTIVE = "style_adaptive"
KEY_LOOP_GUARD = "style_loop_guard"
KEY_LOOP_PENALTY = "style_loop_penalty"
KNOWN_KEYS = (KEY_STYLE, KEY_STRENGTH, KEY_MODE, KEY_ADAPTIVE, KEY_LOOP_GUARD, KEY_LOOP_PENALTY)

# In exact mode a context seen once adds w_n * log(1 + 1/k) ~ 6.9 w_n per order (k = 1e-3), so
# lambda = 0.3 moves a style continuation by about 2 logits: clearly steered, still fluent. The
# paper reports collapse above lambda ~ 0.6 (paper mode) with lambda in [0, 1]; entropy-adaptive
# strength makes larger values usable, so the cap is 5: beyond it the prior alone decides.
DEFAULT_STRENGTH = 0.3
MAX_STRENGTH = 5.0
DEFAULT_MODE = "exact"
MIN_LOOP_GUARD, MAX_LOOP_GUARD = 2, 8
# strength x penalty is subtracted from a logit; at MAX_STRENGTH x 20 = 100 nats a repeat is banned
MAX_LOOP_PENALTY = 20.0
MAX_NAMES_LISTED = 10  # configured styles/modes named in an error message
MAX_BLEND = 4  # styles in one request: the kernels read this many (variant, strength) columns per row
# int() refuses longer literals (Python >= 3.11, CVE-2020-10735); 4300 where the limit is off (0)
_INT_DIGITS_LIMIT = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300
_UNSET = object()


@dataclass(frozen=True)
class StyleRequest:
    """One request's validated style arguments."""

    style: str
    strength: float = DEFAULT_STRENGTH
    mode: str = DEFAULT_MODE
    adaptive: bool = False
    loop_guard: int = 0  # 0 = off, else the n-gram size
    loop_penalty: float = 0.0  # nats per unit of strength below the unsteered logit, for guarded tokens
    blended: tuple = ()  # a blend's further ((style, strength), ...) after (style, strength), in request order

    @property
    def components(self) -> tuple:
        """Every (style, strength) of the request: one, or up to MAX_BLEND for a blend."""
        return ((self.style, self.strength),) + tuple(self.blended)

    @property
    def total_strength(self) -> float:
        """The blend's strength as a whole (the loop penalty scales with it); a single style's lambda."""
        return sum(s for _, s in self.components)

    def to_extra_args(self) -> dict:
        """The request extras that parse back to this request (what a client sends)."""
        extra = {KEY_MODE: self.mode, KEY_ADAPTIVE: int(self.adaptive), KEY_LOOP_GUARD: int(self.loop_guard)}
        if self.blended:
            extra[KEY_STYLE] = ",".join(f"{name}:{strength!r}" for name, strength in self.components)
        else:
            extra.update({KEY_STYLE: self.style, KEY_STRENGTH: float(self.strength)})
        if self.loop_penalty:
            extra[KEY_LOOP_PENALTY] = float(self.loop_penalty)
        return extra

    @property
    def guard_penalty_nats(self) -> float:
        """How far below its unsteered logit a guarded token goes: the raw strength of the whole
        blend (not the adaptive one, so the penalty also acts where the model is confident) x
        loop_penalty."""
        return self.total_strength * self.loop_penalty


def is_style_key(key: Any) -> bool:
    """Keys of this plugin: ``style`` and ``style_*``; every other key belongs to other features."""
    return isinstance(key, str) and (key == KEY_STYLE or key.startswith("style_"))


def _is_number(value: Any) -> bool:
    # bool is an int subclass; a strength of True is a client bug, not 1.0.
    return isinstance(value, (int, float, HugeInteger)) and not isinstance(value, bool)


def _bounded_number(key: str, value: Any, hi: float, what: str) -> float:
    """A finite number in [0, hi]. Integers are range-checked before float(), which overflows
    beyond ~1e308 (a RequestError, never an OverflowError, also in the engine)."""
    if not _is_number(value):
        raise RequestError(f"{key} must be {what}, got {kind(value)} {brief(value)}", key)
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{key} must be a finite number, got {brief(value)}", key)
    if isinstance(value, HugeInteger) or not 0 <= value <= hi:
        raise RequestError(f"{key} must be between 0 and {hi:g}, got {brief(value)}", key)
    return float(value)


def _strength(value: Any) -> float:
    return _bounded_number(KEY_STRENGTH, value, MAX_STRENGTH, "a number")


def _loop_penalty(value: Any) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{KEY_LOOP_PENALTY} must be a finite number, got {kind(value)} {brief(value)}",
                           KEY_LOOP_PENALTY)
    return _bounded_number(KEY_LOOP_PENALTY, value, MAX_LOOP_PENALTY, "a finite number")


def _switch(value: Any) -> bool:
    # JSON true arrives as 1 through vllm_xargs, so 0/1 is the wire form; Python bools are the
    # offline form. Strings such as "true" are rejected: they are ambiguous ("false" is truthy).
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise RequestError(f"{KEY_ADAPTIVE} must be 0 or 1 (or true/false), got {kind(value)} {brief(value)}",
                       KEY_ADAPTIVE)


def _loop_guard(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, HugeInteger)):
        raise RequestError(f"{KEY_LOOP_GUARD} must be an integer (0 = off, or an n-gram size "
                           f"{MIN_LOOP_GUARD}..{MAX_LOOP_GUARD}), got {kind(value)} {brief(value)}", KEY_LOOP_GUARD)
    if isinstance(value, HugeInteger) or (value != 0 and not MIN_LOOP_GUARD <= value <= MAX_LOOP_GUARD):
        raise RequestError(f"{KEY_LOOP_GUARD} must be 0 (off) or an n-gram size "
                           f"{MIN_LOOP_GUARD}..{MAX_LOOP_GUARD}, got {brief(value)}", KEY_LOOP_GUARD)
    return value


def _offered(allowed: Sequence[str]) -> str:
    return listing(sorted(allowed), limit=MAX_NAMES_LISTED) or "(none configured)"


def _choice(key: str, value: Any, allowed: Sequence[str], what: str) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{key} must be a string naming a {what}, got {kind(value)} {brief(value)}; "
                           f"this server offers: {_offered(allowed)}", key)
    if value not in allowed:
        raise RequestError(f"unknown {what} {brief(value)} ({key}); this server offers: {_offered(allowed)}", key)
    return value


def _blend(value: Any, strength: Any, styles: Sequence[str]) -> list:
    """The request's (style, strength) components from ``style`` and ``style_strength`` (_UNSET when
    absent): one style, or a blend (module docstring). Names must be configured and distinct."""
    listed = isinstance(value, list)
    blend_text = isinstance(value, str) and ("," in value or ":" in value)
    if isinstance(strength, list) and not listed:
        _strength(strength)  # raises: one style (or a blend string) takes one number
    if listed:
        parts = list(value)
    elif blend_text:
        parts = [p.strip() for p in value.split(",")]
    else:
        parts = [value]
    if not parts:
        raise RequestError(f"{KEY_STYLE} names no style", KEY_STYLE)
    if len(parts) > MAX_BLEND:
        raise RequestError(f"{KEY_STYLE} blends {len(parts)} styles; at most {MAX_BLEND}", KEY_STYLE)
    weights = None  # from the blend text, when it carries them
    if blend_text:
        weighted = [":" in p for p in parts]
        if any(weighted) and not all(weighted):
            raise RequestError(f"{KEY_STYLE} {brief(value)}: give every style of a blend a strength "
                               f"(\"austen:0.5,news:0.2\") or none (\"austen,news\" with {KEY_STRENGTH})", KEY_STYLE)
        if all(weighted):
            if strength is not _UNSET:
                raise RequestError(f"strengths given twice: in {KEY_STYLE} ({brief(value)}) and in {KEY_STRENGTH}; "
                                   "give them in one place", KEY_STRENGTH)
            split = [p.partition(":") for p in parts]
            parts = [name.strip() for name, _, _ in split]
            weights = [_strength_text(w.strip(), name.strip()) for name, _, w in split]
    names = [_choice(KEY_STYLE, p, styles, "style") for p in parts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RequestError(f"{KEY_STYLE} names {listing(repeated, quote=True)} more than once; give each style "
                           "once with its strength", KEY_STYLE)
    if weights is None:
        if isinstance(strength, list):
            if len(strength) != len(names):
                raise RequestError(f"{KEY_STRENGTH} lists {len(strength)} strength{'s' if len(strength) != 1 else ''} "
                                   f"for {len(names)} styles", KEY_STRENGTH)
            weights = [_strength(w) for w in strength]
        else:
            weights = [DEFAULT_STRENGTH if strength is _UNSET else _strength(strength)] * len(names)
    return list(zip(names, weights))


def _strength_text(text: str, name: str) -> float:
    """A strength written in a blend string ("austen:0.5"): a decimal number in [0, MAX_STRENGTH]."""
    try:
        x = float(text)
    except ValueError:
        raise RequestError(f"the strength of {brief(name)} in {KEY_STYLE} must be a number, got {brief(text)}",
                           KEY_STYLE) from None
    if not (math.isfinite(x) and 0.0 <= x <= MAX_STRENGTH):
        raise RequestError(f"the strength of {brief(name)} in {KEY_STYLE} must be between 0 and {MAX_STRENGTH:g}, "
                           f"got {brief(text)}", KEY_STYLE)
    return x


def parse_request_args(extra_args: Mapping[str, Any] | None, styles: Sequence[str],
                       modes: Sequence[str] = (DEFAULT_MODE,)) -> StyleRequest | None:
    """Validate a request's extras against the server's styles and modes.

    Returns None for an unsteered request (no ``style`` key), else the parsed arguments. Keys
    that do not start with ``style`` belong to other features and are ignored. The one parser of
    the rules: validate_params and the engine call it with SamplingParams.extra_args (after vLLM's
    conversions), the HTTP middleware with the raw JSON (loads_request_json), where booleans are
    still booleans and a too-long integer is a HugeInteger.
    """
    if not extra_args:
        return None
    ours = {k: v for k, v in extra_args.items() if is_style_key(k)}
    if not ours:
        return None
    unknown = sorted(k for k in ours if k not in KNOWN_KEYS)
    if unknown:
        raise RequestError(f"unknown style argument{'s' if len(unknown) > 1 else ''} "
                           f"{listing(unknown, quote=True)}; known: {', '.join(KNOWN_KEYS)}", unknown[0])
    if KEY_STYLE not in ours:
        raise RequestError(f"{', '.join(sorted(ours))} given without {KEY_STYLE!r}; name a style "
                           f"(one of: {_offered(styles)})", KEY_STYLE)
    components = _blend(ours[KEY_STYLE], ours.get(KEY_STRENGTH, _UNSET), styles)
    loop_guard = _loop_guard(ours[KEY_LOOP_GUARD]) if KEY_LOOP_GUARD in ours else 0
    loop_penalty = _loop_penalty(ours[KEY_LOOP_PENALTY]) if KEY_LOOP_PENALTY in ours else 0.0
    if loop_penalty and not loop_guard:
        raise RequestError(f"{KEY_LOOP_PENALTY} needs {KEY_LOOP_GUARD} (the n-gram size that defines a repeat)",
                           KEY_LOOP_PENALTY)
    (style, strength), *rest = components
    return StyleRequest(
        style=style,
        strength=strength,
        blended=tuple(rest),
        mode=_choice(KEY_MODE, ours[KEY_MODE], modes, "style mode") if KEY_MODE in ours else _default_mode(modes),
        adaptive=_switch(ours[KEY_ADAPTIVE]) if KEY_ADAPTIVE in ours else False,
        loop_guard=loop_guard,
        loop_penalty=loop_penalty,
    )


def loads_request_json(body: bytes | str) -> Any:
    """json.loads for a raw request body, keeping what vLLM's pydantic layer erases before
    parse_request_args sees SamplingParams.extra_args: booleans stay booleans, and an integer
    too long for int() becomes a HugeInteger instead of failing the whole body. Raises
    ValueError (malformed JSON) or RecursionError (nesting deeper than Python's limit)."""
    try:
        return json.loads(body)  # the common case at C speed (a per-integer hook costs 3x on token-id prompts)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer literal beyond int()'s digit limit: parse again, keeping it as a HugeInteger
        return json.loads(body, parse_int=_json_int)


def _json_int(literal: str) -> int | HugeInteger:
    return int(literal) if len(literal) <= _INT_DIGITS_LIMIT else HugeInteger(literal)


def _default_mode(modes: Sequence[str]) -> str:
    if DEFAULT_MODE in modes:
        return DEFAULT_MODE
    if not modes:
        raise RequestError("this server has no style modes enabled")
    return modes[0]  # an operator who disabled "exact" chose their own first mode as the default
