"""An incremental Server-Sent Events decoder (the WHATWG rules the service's stream needs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSEMessage:
    id: str | None
    event: str
    data: str


class SSEDecoder:
    """Feed it lines (without their newline); it returns a message at each blank line.

    `retry_ms` is the reconnection time the server last sent (`retry:`); it outlives
    `restart()`, which a client calls on each new connection of the same stream.
    """

    def __init__(self) -> None:
        self.retry_ms: int | None = None
        self.restart()

    def restart(self) -> None:
        """A new connection: a message cut in half by the old one is dropped."""
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SSEMessage | None:
        if line == "":
            if not self._data and self._id is None and not self._event:
                return None
            msg = SSEMessage(self._id, self._event or "message", "\n".join(self._data))
            self.restart()
            return msg
        if line.startswith(":"):  # a comment: heartbeat
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None
