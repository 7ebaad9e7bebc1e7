"""Launch a local vLLM OpenAI-compatible server as a subprocess (tests, `sdpo solve --engine vllm`).

vLLM lives in its own virtual environment (`make vllm-env`, default `.venv-vllm` at the
repository root): it pins its own torch/transformers/fastapi, as its own container would.
The server is started with runtime LoRA loading enabled and the default
`--logprobs-mode raw_logprobs`, which the `vllm` engine relies on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


# The final line of a Python traceback in vLLM's log: "SomeError: what went wrong".
_ERROR_LINE = re.compile(r"\b[A-Z]\w*(?:Error|Exception): \S.*$")


class VLLMServerError(RuntimeError):
    """The vLLM server could not be started (missing environment, crash, startup timeout)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve_vllm_python(python: str | os.PathLike[str] | None = None) -> Path:
    """The vLLM environment's interpreter: `python` (the service's SDPO_VLLM_PYTHON), else
    .venv-vllm.

    A relative path is taken relative to the repository root. Raises VLLMServerError with the
    fix when the interpreter does not exist.
    """
    raw = python or DEFAULT_VLLM_PYTHON
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.exists():
        raise VLLMServerError(
            f"vLLM's Python environment is missing: {path} does not exist. "
            "Create it with `make vllm-env` (or set SDPO_VLLM_PYTHON)."
        )
    return path


class VLLMServer:
    """A running vLLM server subprocess. `url` is its base URL (no /v1)."""

    def __init__(
        self, process: subprocess.Popen[bytes], url: str, model_name: str, log_path: Path
    ) -> None:
        self.process = process
        self.url = url
        self.model_name = model_name  # the name requests use for the base model
        self.log_path = log_path
        self.startup_seconds: float | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def failure_report(self, n_lines: int = 25) -> str:
        """What a user needs when a request to this server fails: whether it is still running,
        the errors its log names (the root cause of an HTTP 500 is only there), and its tail."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        state = "running" if self.alive() else f"exited with code {self.process.returncode}"
        causes: list[str] = []
        for line in lines:
            m = None if "WARNING" in line else _ERROR_LINE.search(line)
            if m and m.group(0) not in causes:
                causes.append(m.group(0))
        parts = [f"managed vLLM server (pid {self.process.pid}) {state}; log {self.log_path}"]
        if causes:
            parts.append("errors in its log:\n" + "\n".join(causes[-5:]))
        parts.append(f"its last {n_lines} log lines:\n" + "\n".join(lines[-n_lines:]))
        return "\n".join(parts)

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Poll GET /health until 200; return the seconds waited. Raises if the process dies."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        with httpx.Client(timeout=5.0) as client:
            while True:
                if not self.alive():
                    raise VLLMServerError(
                        f"vLLM server died during startup: {self.failure_report()}"
                    )
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return time.monotonic() - t0
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    report = self.failure_report()
                    self.stop()
                    raise VLLMServerError(f"vLLM server not ready after {timeout:.0f} s; {report}")
                time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group (it spawns an engine-core process), then SIGKILL."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch_vllm_server(
    model_dir: str | os.PathLike[str],
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    max_lora_rank: int = 16,
    max_loras: int = 2,
    served_model_name: str | None = None,
    python: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    wait: bool = True,
    startup_timeout: float = 300.0,
) -> VLLMServer:
    """Start `python -m vllm.entrypoints.openai.api_server` serving `model_dir` with LoRA.

    max_lora_rank must be one vLLM accepts (1, 8, 16, 32, 64, ...) and >= the adapters' rank.
    max_loras: adapters resident at once (a swap briefly holds the old and the new one).
    served_model_name: the base model's name in requests (default: `model_dir` as given).
    With `wait` (default) returns once /health answers; the handle's `startup_seconds` says
    how long that took. Output goes to `log_path` (default: a temp file).
    """
    exe = resolve_vllm_python(python)
    port = port or free_port(host)
    model_dir = str(model_dir)
    name = served_model_name or model_dir
    cmd = [
        str(exe),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        "--dtype",
        "float32",
        "--logprobs-mode",
        "raw_logprobs",
        *extra_args,
    ]
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        **(extra_env or {}),
    }
    # The main environment's venv must not leak into vLLM's (PYTHONPATH, VIRTUAL_ENV).
    env.pop("PYTHONPATH", None)
    env["VIRTUAL_ENV"] = str(exe.parent.parent)
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
        os.close(fd)
        log_path = tmp
    log = Path(log_path)
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stop() kills the engine core too
        )
    server = VLLMServer(process, f"http://{host}:{port}", name, log)
    if wait:
        server.startup_seconds = server.wait_ready(startup_timeout)
    return server
