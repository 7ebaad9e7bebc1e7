"""A loaded base model with its trainer and generation engine, reused across problems."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError

from sdpo_core.chat import ChatTemplateError, has_thinking_switch
from sdpo_core.config import SDPOConfig
from sdpo_core.engines.base import Engine
from sdpo_core.slots import GenerationRounds, PhaseClock, Schedule, SlotTrainer
from sdpo_core.trainer import SDPOTrainer

EngineName = Literal["hf", "vllm"]

_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
_MLP = ["gate_proj", "up_proj", "down_proj"]
# LoRA target modules per architecture (config.json "model_type"): the linear layers vLLM's
# LoRA can serve for that family, so no exported adapter is rejected at the first swap.
# qwen3_moe: attention only. Its experts are fused 3-D weights in transformers (not nn.Linear,
# so peft's LoRA does not reach them) and its router ("mlp.gate") is not a LoRA target in vLLM.
# Families not listed get peft's "all-linear" (every linear layer except the output head).
FAMILY_TARGET_MODULES: dict[str, list[str]] = {
    "llama": _ATTENTION + _MLP,
    "mistral": _ATTENTION + _MLP,
    "qwen2": _ATTENTION + _MLP,
    "qwen3": _ATTENTION + _MLP,
    "qwen3_moe": _ATTENTION,
    "gemma": _ATTENTION + _MLP,
    "gemma2": _ATTENTION + _MLP,
    "gemma3_text": _ATTENTION + _MLP,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],  # fused in the checkpoint
}


def model_type(model_path: str | Path) -> str | None:
    """The architecture family of the model at `model_path` (config.json "model_type")."""
    try:
        return json.loads((Path(model_path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def family_defaults(model_path: str | Path) -> dict[str, Any]:
    """SDPOConfig overrides that the model's architecture family needs (target_modules)."""
    modules = FAMILY_TARGET_MODULES.get(model_type(model_path) or "")
    return {"target_modules": list(modules)} if modules else {}


def template_defaults(tokenizer: Any) -> dict[str, Any]:
    """SDPOConfig overrides that the model's chat template calls for: a template with a
    thinking switch (Qwen3) gets enable_thinking false, as the authors' runs render prompts
    (user.yaml: apply_chat_template_kwargs enable_thinking false); at 8,192 new tokens a
    thinking model spends most of them reasoning and is often cut before its answer."""
    try:
        return {"enable_thinking": False} if has_thinking_switch(tokenizer) else {}
    except ChatTemplateError:  # no template at all: the first prompt says so
        return {}


# A JSON object beside the model's config.json: SDPOConfig fields whose best value depends on
# the model (learning rate, LoRA rank, ...). A problem's "sdpo" block overrides them.
MODEL_DEFAULTS_FILE = "sdpo_defaults.json"


def load_model_defaults(model_path: str | Path, base: SDPOConfig | None = None) -> SDPOConfig:
    """`base` (default SDPOConfig()) with the model's defaults file applied, if it has one.
    Keys starting with "_" are comments."""
    base = base or SDPOConfig()
    path = Path(model_path) / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return base
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be a JSON object of SDPOConfig fields")
    try:
        return base.merged({k: v for k, v in data.items() if not k.startswith("_")})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{path}: {loc}: {err['msg']}") from None


def default_model_dir() -> Path:
    from sdpo_core.toy import DEFAULT_MODEL_DIR

    return Path(DEFAULT_MODEL_DIR)


@dataclass
class Runtime:
    model_path: str
    trainer: SDPOTrainer | SlotTrainer
    engine: Engine
    vllm_server: Any = None  # the VLLMServer this runtime started (stopped on close), if any
    # SDPO settings for this model before a problem's own "sdpo" overrides (family + file)
    defaults: SDPOConfig = field(default_factory=SDPOConfig)
    phases: PhaseClock = field(default_factory=PhaseClock)  # shared by every slot's view
    # lock-step rounds of an engine in another process (sdpo_core/slots.py); None: the
    # problems' generation overlaps the trainer (or the engine batches by itself: hf)
    rounds: GenerationRounds | None = None
    _slots: dict[int, Runtime] = field(default_factory=dict, repr=False)

    def for_slot(self, index: int) -> Runtime:
        """The runtime one of several problems in flight uses: slot `index` of the trainer and
        an engine serving that slot's adapter (sdpo_core/slots.py). Slot 0 shares this
        runtime's engine."""
        view = self._slots.get(index)
        if view is None:
            trainer = self.trainer
            assert isinstance(trainer, SDPOTrainer), "for_slot of a slot's view"
            engine = self.engine if index == 0 else self.engine.for_slot(index)
            view = Runtime(
                self.model_path,
                SlotTrainer(trainer, index, self.phases),
                engine,
                None,
                self.defaults,
                self.phases,
                self.rounds,
            )
            self._slots[index] = view
        return view

    def close(self) -> None:
        for index, view in self._slots.items():
            if index != 0:
                view.engine.close()
        self.engine.close()
        if self.vllm_server is not None:
            self.vllm_server.stop()


def cgroup_cpu_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> float | None:
    """The CPUs per second this process's cgroup and its ancestors allow (a container's
    `--cpus`, a Kubernetes CPU limit: affinity still shows every core of the host), or None
    where there is no limit or none can be read. cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and not controllers:  # v2 (unified; under unified/ on a hybrid host)
            mounts = [root, root / "unified"]
        elif "cpu" in controllers.split(","):  # v1
            mounts = [root / controllers, root / "cpu", root / "cpu,cpuacct"]
        else:
            continue
        base = next((m for m in mounts if m.is_dir()), None)
        if base is None:
            continue
        here = base / path.lstrip("/")
        if not here.is_dir():  # a container's view: its own cgroup is the mount's root
            here = base
        while True:
            limit = _cpu_limit_of(here)
            if limit is not None:
                limits.append(limit)
            if here == base:
                break
            here = here.parent
    return min(limits) if limits else None


def _cpu_limit_of(directory: Path) -> float | None:
    try:
        if (directory / "cpu.max").exists():
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def cpu_threads(requested: int | None = None, *, beside_vllm: bool = False) -> tuple[int, str]:
    """How many CPU threads torch should use, and why: `requested` (SDPO_CPU_THREADS), else
    the cores this process may run on less the machine's current load, less one for a local
    vLLM server (`beside_vllm`), within its cgroup's CPU limit, at least 1 (on a busy CPU,
    torch's default of every core costs 8-10x; beside a vLLM server on 2 cores, a trainer
    step took 69 ms per attempt with 2 threads and 11.8 ms with 1: the server's own threads
    keep running, and the trainer's stall at every barrier when they take its core)."""
    if requested:
        return requested, "SDPO_CPU_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    n = max(1, (cores or 1) - round(load) - int(beside_vllm))
    why = f"free cores: {cores} usable, load {load:.1f}"
    if beside_vllm:
        why += ", one left to the local vLLM server"
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = max(1, min(n, math.floor(limit)))
        why += f", cgroup CPU limit {limit:g}"
    return n, why + "; SDPO_CPU_THREADS sets it"


def use_cpu_threads(requested: int | None = None, *, beside_vllm: bool = False) -> tuple[int, str]:
    """Set torch's CPU threads (`cpu_threads`); returns how many and why, for the caller to
    say."""
    n, why = cpu_threads(requested, beside_vllm=beside_vllm)
    torch.set_num_threads(n)
    return n, why


def max_loras_for(concurrency: int) -> int:
    """vLLM's --max-loras for `concurrency` problems in flight: each problem's adapter, and
    during a swap its next version beside it (the engine loads the new name, then unloads the
    old)."""
    return 2 * max(1, concurrency)


def load_runtime(
    model_path: str | Path | None = None,
    *,
    engine: EngineName = "hf",
    vllm_url: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_lora_rank: int = 16,
    vllm_model_name: str | None = None,
    vllm_python: str | Path | None = None,
    vllm_api_key: str | None = None,
    concurrency: int = 1,
    schedule: Schedule = "auto",
) -> Runtime:
    """Load the base model once. engine="vllm" without a URL starts a local vLLM server
    (with `vllm_python`, default the checkout's .venv-vllm) that allows LoRA ranks up to
    `max_lora_rank` and holds `max_loras_for(concurrency)` adapters; with a URL,
    `vllm_model_name` is the server's name for the base model (default: the path, vLLM's own
    default). `vllm_api_key` is sent on /v1/*. `schedule` (several problems at once): on the
    `vllm` engine, "lockstep" rounds (the problems generate together, then each trains) or
    "overlap" (one problem trains while others generate); "auto": overlap (on 2 CPU cores
    too, with a core left to the server: 1.31x the attempts per second of one problem at
    K = 4, lock-step 0.96x; benchmarks/throughput.py). The `hf` engine
    generates with the trainer's own model, so its rounds are always lock-step."""
    if schedule not in ("auto", "lockstep", "overlap"):
        raise ValueError(f"schedule {schedule!r}: one of 'auto', 'lockstep', 'overlap'")
    if engine == "hf" and schedule == "overlap":
        raise ValueError(
            "schedule 'overlap' needs the vllm engine: the hf engine generates with the "
            "trainer's own model, so generation and training cannot overlap"
        )
    path = str(model_path or default_model_dir())
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no Hugging Face model at {path} (a directory with config.json and a tokenizer); "
            "models are not downloaded at run time"
        )
    trainer = SDPOTrainer(path, device=device, dtype=dtype)
    # the family's and the template's needs, then the model's own file (more specific), then
    # each problem's block
    generic = {**family_defaults(path), **template_defaults(trainer.tokenizer)}
    defaults = load_model_defaults(path, SDPOConfig().merged(generic))
    if engine == "hf":
        from sdpo_core.engines.hf import HFEngine

        phases = PhaseClock()
        engine_hf = HFEngine(trainer, phases=phases)
        return Runtime(path, trainer, engine_hf, defaults=defaults, phases=phases)
    if engine == "vllm":
        from sdpo_core.engines.vllm import VLLMEngine
        from sdpo_core.engines.vllm_server import launch_vllm_server

        server = None
        if vllm_url is None:
            server = launch_vllm_server(
                path,
                max_lora_rank=max_lora_rank,
                max_loras=max_loras_for(concurrency),
                python=vllm_python,
            )
            vllm_url, served_name = server.url, server.model_name
        else:
            served_name = vllm_model_name or path
        report = server.failure_report if server is not None else None
        vllm = VLLMEngine(vllm_url, served_name, server_report=report, api_key=vllm_api_key)
        vllm.wait_ready()
        rounds = GenerationRounds(trainer.lock) if schedule == "lockstep" else None
        return Runtime(path, trainer, vllm, server, defaults=defaults, rounds=rounds)
    raise ValueError(f"unknown engine {engine!r}; one of 'hf', 'vllm'")
