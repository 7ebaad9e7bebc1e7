"""Small checks shared by the spec validators; each raises VerifierSpecError naming the field.
(Types, defaults and ranges are the typed models' job: sdpo_core/verifiers/models.py.)"""

from __future__ import annotations

from typing import Any

from sdpo_core.verifiers.base import VerifierSpecError


def check_fields(spec: dict[str, Any], allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise VerifierSpecError(f"unknown field; allowed: {sorted(allowed)}", where + unknown[0])


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
