"""API key -> tenant, remembered per API process (one Redis call less per request).

An entry lives KEY_CACHE_SECONDS at most, and a revocation (`sdpo keys revoke`, which
publishes on P:keys:revoked) drops it at once. The cache is used only while its
subscription is up; every (re)subscription starts from an empty cache, so a revocation
missed while Redis was away cannot leave a revoked key working.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from service.store import Store, sha256

log = logging.getLogger("sdpo.service")
KEY_CACHE_SECONDS = 30.0
_MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.entries: dict[str, tuple[float, str]] = {}  # sha256(key) -> (expiry, tenant)
        self.live = False  # subscribed: revocations reach us
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass

    async def tenant(self, key: str) -> str | None:
        digest = sha256(key)
        now = time.monotonic()
        hit = self.entries.get(digest)
        if self.live and hit is not None and hit[0] > now:
            return hit[1]
        tenant = await self.store.tenant_for_key(key)
        if tenant is not None and self.live:
            if len(self.entries) >= _MAX_ENTRIES:
                self.entries.clear()
            self.entries[digest] = (now + KEY_CACHE_SECONDS, tenant)
        return tenant

    async def _listen(self) -> None:
        channel = self.store.key("keys", "revoked")
        while True:
            pubsub = self.store.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                self.entries.clear()
                self.live = True
                while True:  # get_message with a timeout: idle is not an error
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
                    if message is not None and message.get("type") == "message":
                        self.entries.pop(str(message["data"]), None)
            except (RedisError, OSError) as exc:
                log.warning("API key cache: subscription lost (%s); cache off", exc)
            finally:
                self.live = False
                self.entries.clear()
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(1.0)
