"""A submit's body on its way to the queue: read within the size limit, parsed as JSON
within bounds, validated once as a ProblemSpec, checked against the server's limits, and
given the model it is queued for. Every outcome is a spec or an ApiError naming the field."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from sdpo_core.problem import ProblemError, ProblemSpec, parse_problem
from service.errors import ApiError
from service.settings import Settings
from service.store import Store

MAX_JSON_DEPTH = 64  # nesting levels a submitted body may have


def _too_deep(value: Any, limit: int) -> bool:
    """True when `value` nests more than `limit` lists/objects (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def json_body(body: bytes) -> Any:
    """The body as JSON, its objects' values nested at most MAX_JSON_DEPTH deep."""
    try:
        data = json.loads(body)
    except RecursionError:
        msg = "body is not valid JSON: nested too deeply"
        raise ApiError(400, msg, code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, >4300-digit integers
        raise ApiError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
    if isinstance(data, dict):
        for name, value in data.items():
            if _too_deep(value, MAX_JSON_DEPTH - 1):
                raise ApiError(422, f"nested deeper than {MAX_JSON_DEPTH} levels", field=name)
    return data


def problem_spec(data: Any, where: str = "") -> ProblemSpec:
    """A decoded problem object as its spec; the ApiError names the field (under `where`)."""
    try:
        return parse_problem(data)
    except ProblemError as exc:
        field = f"{where}{exc.field}" if exc.field else where.rstrip(".") or None
        raise ApiError(422, exc.message, field=field) from None
    except (RecursionError, MemoryError, OverflowError, ValueError) as exc:
        name = type(exc).__name__
        raise ApiError(422, f"the problem spec cannot be checked ({name})") from None


def parse_submit(body: bytes) -> ProblemSpec:
    """Body -> spec (in a worker thread: compiling a verifier can take a while).
    Whatever the input, the outcome is a spec or an ApiError: never a 500."""
    return problem_spec(json_body(body))


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_limits(spec: ProblemSpec, s: Settings) -> None:
    def too_big(field: str, message: str) -> ApiError:
        return ApiError(422, message, code="limit_exceeded", field=field)

    if len(spec.prompt) > s.max_prompt_chars:
        raise too_big("prompt", f"prompt longer than {s.max_prompt_chars} characters")
    if spec.budget.max_attempts > s.max_budget_attempts:
        raise too_big("budget.max_attempts", f"at most {s.max_budget_attempts} attempts")
    if spec.budget.max_seconds > s.max_budget_seconds:
        raise too_big("budget.max_seconds", f"at most {s.max_budget_seconds:g} seconds")
    rank = spec.sdpo.lora_rank if "lora_rank" in spec.sdpo.model_fields_set else None
    if rank is not None and rank > s.max_lora_rank:  # the vLLM server could not load it
        raise too_big("sdpo.lora_rank", f"at most {s.max_lora_rank} (the server's max LoRA rank)")
    tests = getattr(spec.verifier, "tests", None) or getattr(spec.verifier, "cases", None)
    if tests is None:
        return
    name = "cases" if isinstance(tests, dict) else "tests"
    if len(tests) > s.max_tests:
        raise too_big(f"verifier.{name}", f"at most {s.max_tests} {name}")
    items = tests.items() if isinstance(tests, dict) else enumerate(tests)
    for key, value in items:
        shown = value.model_dump() if isinstance(value, BaseModel) else value
        if len(json.dumps([key, shown])) > s.max_test_bytes:
            raise too_big(f"verifier.{name}.{key}", f"over {s.max_test_bytes} bytes")


async def queue_model(asked: str | None, store: Store, settings: Settings) -> str:
    """The model a submit is queued for: SDPO_MODELS when set (the first is the default),
    else the models live workers serve (heartbeats of the last SDPO_MODELS_SEEN_SECONDS)."""
    if settings.models:
        where = "SDPO_MODELS accepts" if settings.models_given else "this server accepts"
        accepted = settings.models
    else:
        accepted = await store.served_models(settings.models_seen_seconds)
        where = "workers serve"
    if asked is None:
        if settings.models or len(accepted) == 1:
            return accepted[0]
        if not accepted:
            raise ApiError(
                422,
                "no worker has served a model yet; start one, or set SDPO_MODELS to "
                "queue problems before the workers come",
                field="model",
            )
        raise ApiError(422, f"name a model: {where} {accepted}", field="model")
    if asked not in accepted:
        raise ApiError(422, f"unknown model {asked!r}: {where} {accepted}", field="model")
    return asked
