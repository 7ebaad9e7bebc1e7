"""Small checks shared by the spec validators; each raises VerifierSpecError naming the field."""

from __future__ import annotations

import math
from typing import Any

from sdpo_core.verifiers.base import VerifierSpecError


def check_fields(spec: dict[str, Any], allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise VerifierSpecError(f"unknown field; allowed: {sorted(allowed)}", where + unknown[0])


def get_str(spec: dict[str, Any], key: str, *, required: bool = False, default: str = "") -> str:
    if key not in spec:
        if required:
            raise VerifierSpecError("is required", key)
        return default
    value = spec[key]
    if not isinstance(value, str) or (required and not value.strip()):
        what = "must be a non-empty string" if required else "must be a string"
        raise VerifierSpecError(what, key)
    return value


def get_identifier(spec: dict[str, Any], key: str, *, required: bool) -> str | None:
    if key not in spec and not required:
        return None
    value = get_str(spec, key, required=True)
    if not value.isidentifier():
        raise VerifierSpecError(f"{value!r} is not a Python identifier", key)
    return value


def get_number(spec: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise VerifierSpecError("must be a number", key)
    if not lo <= value <= hi:
        raise VerifierSpecError(f"must be in [{lo:g}, {hi:g}]", key)
    return float(value)


def get_int(spec: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerifierSpecError("must be an integer", key)
    if not lo <= value <= hi:
        raise VerifierSpecError(f"must be in [{lo}, {hi}]", key)
    return value


def get_bool(spec: dict[str, Any], key: str, default: bool) -> bool:
    value = spec.get(key, default)
    if not isinstance(value, bool):
        raise VerifierSpecError("must be true or false", key)
    return value


MAX_SOURCE_CHARS = 100_000  # a verifier or test program; far above any real one


def check_python_source(source: str, key: str, max_chars: int = MAX_SOURCE_CHARS) -> None:
    """Syntax-check without running anything (compile only)."""
    if len(source) > max_chars:
        raise VerifierSpecError(f"longer than {max_chars} characters", key)
    try:
        compile(source, f"<{key}>", "exec", dont_inherit=True)
    except (MemoryError, RecursionError, OverflowError) as exc:
        raise VerifierSpecError(f"is too complex to compile ({type(exc).__name__})", key) from None
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        what = f"is not valid Python: {exc.__class__.__name__}{where}"
        raise VerifierSpecError(what, key) from None
