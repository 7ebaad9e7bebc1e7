"""The `vllm` engine: an OpenAI-compatible vLLM server with runtime LoRA loading.

Prompts go to /v1/completions as token-id lists, so the trainer and the server agree on the
exact tokens. Each adapter version is loaded under a new name (`sdpo-v{version}-{uuid8}`)
through /v1/load_lora_adapter, then the previous one is unloaded; requests name the current
adapter as `model` (the base model before any adapter is loaded). load_inplace is never used.

Log-probs: the server must run with vLLM's default `--logprobs-mode raw_logprobs` (the
launcher passes it explicitly). vLLM then returns log_softmax of the model's raw logits, taken
before temperature, top_p, penalties or any logits processor: the temperature-1 log-prob of
each sampled token under the served weights, which the trainer's rollout correction
(sdpo.rollout_is) compares with its own temperature-1 log-probs of the same tokens.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from sdpo_core.types import Completion, SamplingParams

log = logging.getLogger(__name__)


class VLLMError(RuntimeError):
    """Base class of the `vllm` engine's errors."""


class VLLMUnavailableError(VLLMError):
    """The server cannot be reached (connection refused, timeout) or is not ready."""


class VLLMRequestError(VLLMError):
    """The server answered with an error status; `status` and the server's `message`."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {message}")
        self.status = status
        self.message = message


class VLLMAdapterError(VLLMRequestError):
    """Loading a LoRA adapter failed (bad path, rank above --max-lora-rank, bad files, ...)."""


class VLLMResponseError(VLLMError):
    """The server's answer is not what the engine expects (missing fields, lengths disagree)."""


def _server_message(response: httpx.Response) -> str:
    """The error message in a vLLM/OpenAI error body, else the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:2000]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:2000]


class VLLMEngine:
    """Samples from a vLLM server; see the module docstring for the protocol it speaks.

    base_url: the server's root, e.g. "http://127.0.0.1:8000" (a trailing /v1 is accepted).
    model_name: the server's name for the base model (its --served-model-name).
    timeout: seconds per HTTP request (a generate call of n long samples can take a while).
    retries: extra tries after a connection failure (the request never reached the server, so
        any request is safe to repeat) and, for GETs only, after any transport error.
    server_report: for a server this process manages, a callable returning its state and log
        tail (VLLMServer.failure_report); appended to server errors (HTTP 5xx, unreachable),
        whose root cause is only in the server's own log.
    """

    name = "vllm"
    times_itself = False

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        timeout: float = 600.0,
        api_key: str | None = None,
        retries: int = 3,
        server_report: Callable[[], str] | None = None,
    ) -> None:
        base_url = base_url.rstrip("/")
        if base_url.endswith("/v1"):
            base_url = base_url[: -len("/v1")]
        self.base_url = base_url
        self.model_name = model_name
        self.timeout, self.api_key = timeout, api_key
        self.retries = retries
        self.server_report = server_report
        self.adapter_version = 0
        self.adapter_name: str | None = None  # the adapter requests use; None = base model
        self._max_model_len: int | None = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def for_slot(self, slot: int) -> VLLMEngine:
        """An engine on the same server with an adapter of its own (one per problem in flight;
        the server batches requests across adapters)."""
        return VLLMEngine(
            self.base_url,
            self.model_name,
            timeout=self.timeout,
            api_key=self.api_key,
            retries=self.retries,
            server_report=self.server_report,
        )

    # ------------------------------------------------------------------ HTTP
    def _report(self) -> str:
        """The managed server's report, on its own lines after an error ("" when unmanaged)."""
        if self.server_report is None:
            return ""
        try:
            return "\n" + self.server_report()
        except Exception as e:  # a report must never hide the error it explains
            return f"\n(no server report: {type(e).__name__}: {e})"

    def _error(self, what: str, r: httpx.Response, cls: type[VLLMRequestError] = VLLMRequestError):
        """The typed error for an error status; 5xx carries the managed server's report."""
        message = _server_message(r)
        if r.status_code >= 500:
            message += self._report()
        return cls(what, r.status_code, message)

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """Send with bounded retries where safe; map transport failures to VLLMUnavailableError."""
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                return self._client.request(method, path, **kwargs)
            except httpx.TransportError as e:
                safe = isinstance(e, httpx.ConnectError) or method == "GET"
                if not safe or attempt == self.retries:
                    raise VLLMUnavailableError(
                        f"{what}: vLLM server at {self.base_url} unreachable: "
                        f"{type(e).__name__}: {e}{self._report()}"
                    ) from e
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _post_json(self, path: str, payload: dict[str, Any], what: str) -> dict[str, Any]:
        r = self._request("POST", path, what, json=payload)
        if r.status_code != 200:
            raise self._error(what, r)
        try:
            body = r.json()
        except ValueError as e:
            raise VLLMResponseError(f"{what}: response is not JSON: {r.text[:500]!r}") from e
        if not isinstance(body, dict):
            raise VLLMResponseError(f"{what}: expected a JSON object, got {body!r:.500}")
        return body

    def health(self) -> bool:
        """True when GET /health answers 200."""
        try:
            return self._request("GET", "/health", "health").status_code == 200
        except VLLMUnavailableError:
            return False

    def wait_ready(self, timeout: float = 300.0, interval: float = 0.5) -> float:
        """Poll /health until the server is ready; return the seconds waited."""
        t0 = time.monotonic()
        while True:
            try:
                if self._client.get("/health", timeout=5.0).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > timeout:
                raise VLLMUnavailableError(
                    f"vLLM server at {self.base_url} not ready after {timeout:.0f} s"
                )
            time.sleep(interval)

    @property
    def served_model(self) -> str:
        """The `model` field requests send: the current adapter's name, else the base model."""
        return self.adapter_name or self.model_name

    # ------------------------------------------------------------ generation
    def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> list[Completion]:
        """`sampling.n` completions of the token-id prompt, with ids and raw log-probs."""
        return self._sample(list(prompt_ids), sampling.n, sampling)

    def generate_many(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion of each token-id prompt, in order (one request: vLLM batches it)."""
        return self._sample([list(p) for p in prompts], 1, sampling)

    def _sample(
        self, prompt: list[int] | list[list[int]], n: int, sampling: SamplingParams
    ) -> list[Completion]:
        """`n` completions of each prompt (`prompt`: one token-id list, or a list of them),
        choices in order."""
        payload: dict[str, Any] = {
            "model": self.served_model,
            "prompt": prompt,
            "n": n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "logprobs": 0,  # only the sampled token's log-prob
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": True,  # EOS stays in token_ids, not in text
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed  # vLLM gives sample i the seed `seed + i`
        body = self._post_json("/v1/completions", payload, "generate")
        choices = sorted(self._choices(body, "generate"), key=lambda c: c.get("index", 0))
        rows = len(prompt) if prompt and isinstance(prompt[0], list) else 1
        if len(choices) != n * rows:
            raise VLLMResponseError(f"generate: asked for {n * rows} samples, got {len(choices)}")
        return [self._completion(c) for c in choices]

    @staticmethod
    def _choices(body: dict[str, Any], what: str) -> list[dict[str, Any]]:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise VLLMResponseError(f"{what}: no choices in response: {body!r:.500}")
        return choices

    @staticmethod
    def _completion(choice: dict[str, Any]) -> Completion:
        token_ids = choice.get("token_ids")
        lp = choice.get("logprobs") or {}
        logprobs = lp.get("token_logprobs")
        tokens = lp.get("tokens")
        if token_ids is None or logprobs is None or tokens is None:
            raise VLLMResponseError(
                "generate: response lacks token_ids or logprobs (is this vLLM >= 0.10 with "
                f"return_token_ids?): {choice!r:.500}"
            )
        if not (len(token_ids) == len(logprobs) == len(tokens)):
            raise VLLMResponseError(
                f"generate: {len(token_ids)} token ids but {len(logprobs)} log-probs"
            )
        # return_tokens_as_token_ids: tokens read "token_id:{id}"; they must agree with the ids.
        if [t.removeprefix("token_id:") for t in tokens] != [str(i) for i in token_ids]:
            raise VLLMResponseError("generate: logprob tokens disagree with token_ids")
        if any(x is None for x in logprobs):
            raise VLLMResponseError("generate: a sampled token has no log-prob")
        finish = choice.get("finish_reason")
        if finish not in ("stop", "length"):
            raise VLLMResponseError(f"generate: unexpected finish_reason {finish!r}")
        return Completion(
            text=choice.get("text", ""),
            token_ids=[int(i) for i in token_ids],
            logprobs=[float(x) for x in logprobs],
            finish_reason=finish,
        )

    def score(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """The served model's log-prob of each continuation token given what precedes it.

        Raw (temperature-1) log-probs, computed by one prefill through the current adapter:
        /v1/completions with the concatenation as prompt, `prompt_logprobs=0`, one greedy token.
        """
        if not continuation_ids:
            return []
        payload = {
            "model": self.served_model,
            "prompt": [*prompt_ids, *continuation_ids],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        }
        body = self._post_json("/v1/completions", payload, "score")
        plp = self._choices(body, "score")[0].get("prompt_logprobs")
        n_prompt = len(prompt_ids) + len(continuation_ids)
        if not isinstance(plp, list) or len(plp) != n_prompt:
            raise VLLMResponseError(
                f"score: expected {n_prompt} prompt log-probs, got {plp!r:.300}"
            )
        out: list[float] = []
        for pos, tok in enumerate(continuation_ids, start=len(prompt_ids)):
            entry = plp[pos] or {}
            got = entry.get(str(tok))
            if got is None:
                raise VLLMResponseError(f"score: no log-prob for token {tok} at position {pos}")
            out.append(float(got["logprob"]))
        return out

    # -------------------------------------------------------------- adapters
    def load_adapter(self, path: str, version: int) -> None:
        """Serve the PEFT adapter at `path` (a directory the server can read) as `version`.

        Loads it under a new name, switches requests to it, then unloads the previous one.
        Raises VLLMAdapterError with the server's message when loading fails; the previous
        adapter then stays in use.
        """
        name = f"sdpo-v{version}-{uuid.uuid4().hex[:8]}"
        payload = {"lora_name": name, "lora_path": os.path.abspath(path)}
        r = self._request("POST", "/v1/load_lora_adapter", "load_adapter", json=payload)
        if r.status_code != 200:
            raise self._error(f"loading adapter {path!r} as {name!r}", r, VLLMAdapterError)
        previous, self.adapter_name, self.adapter_version = self.adapter_name, name, version
        if previous is not None:
            self._unload(previous)

    def _unload(self, name: str) -> None:
        """Unload adapter `name`; a failure only warns (the new adapter is already serving)."""
        try:
            r = self._request(
                "POST", "/v1/unload_lora_adapter", "unload_adapter", json={"lora_name": name}
            )
        except VLLMUnavailableError as e:
            log.warning("could not unload adapter %s: %s", name, e)
            return
        if r.status_code != 200:
            log.warning(
                "unloading adapter %s failed: HTTP %s: %s", name, r.status_code, _server_message(r)
            )

    def serve_base(self) -> None:
        """Requests name the base model again; this engine's adapter is unloaded."""
        previous, self.adapter_name, self.adapter_version = self.adapter_name, None, 0
        if previous is not None:
            self._unload(previous)

    def context_window(self) -> int | None:
        """The server's max_model_len for the base model (GET /v1/models; its --max-model-len,
        by default the model's own window); None when the server does not say."""
        if self._max_model_len is None:
            r = self._request("GET", "/v1/models", "models")
            if r.status_code != 200:
                raise self._error("models", r)
            for m in r.json().get("data", []):
                if m.get("id") == self.model_name and m.get("max_model_len"):
                    self._max_model_len = int(m["max_model_len"])
        return self._max_model_len

    def loaded_models(self) -> list[str]:
        """Names the server serves now (GET /v1/models): the base model and loaded adapters."""
        r = self._request("GET", "/v1/models", "models")
        if r.status_code != 200:
            raise self._error("models", r)
        return [m["id"] for m in r.json().get("data", [])]

    def close(self) -> None:
        """Unload this engine's adapter (best effort; the server may be shared) and disconnect."""
        self.serve_base()
        self._client.close()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
