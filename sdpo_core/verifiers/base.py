"""The verifier protocol and its one exception type."""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from sdpo_core.types import Verdict


class VerifierSpecError(ValueError):
    """A verifier spec is invalid. `field` is the dotted path inside the spec."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"verifier.{field}: {message}" if field else f"verifier: {message}")
        self.message = message
        self.field = f"verifier.{field}" if field else "verifier"


@runtime_checkable
class Verifier(Protocol):
    def verify(self, response: str) -> Verdict: ...

    async def averify(self, response: str) -> Verdict: ...

    def verify_batch(self, responses: list[str]) -> list[Verdict]: ...


class VerifierBase:
    """Default async and batch twins on top of a synchronous `verify`."""

    def verify(self, response: str) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    async def averify(self, response: str) -> Verdict:
        return await asyncio.to_thread(self.verify, response)

    def verify_batch(self, responses: list[str]) -> list[Verdict]:
        return [self.verify(r) for r in responses]


def truncate(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` characters, saying so at the end."""
    if limit <= 0 or len(text) <= limit:
        return text
    marker = "\n... (truncated)"
    return text[: max(0, limit - len(marker))] + marker
