"""Per-step wall time of the test-time SDPO loop, split by phase, for the hf and vllm engines.

Runs `sdpo_core.solve` on a hard-suite problem (it does not solve within a few steps, so every
step is a full step) with a checkpoint directory, as the service does, and reads the split that
each StepPayload carries: generate, verify, teacher forward, student forward+backward+optimizer,
adapter export and adapter swap. A step's wall time is the interval between two StepEvents;
"other" is what the six phases leave out (state and trainer checkpoints, teacher-context
tokenization, events). The first `--warmup` steps are dropped; the table shows the mean over
the rest in ms and as a fraction of the mean step.

The vllm engine starts a local vLLM CPU server from .venv-vllm (its start-up is reported, not
counted), or uses a running one with `--vllm-url` (which must serve the model under the name
`--vllm-model-name`, default: the model path as given here).

    .venv/bin/python benchmarks/step_time.py [--engines hf vllm] [--model DIR] [--steps 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdpo_core.contract import AttemptPayload, StepPayload
from sdpo_core.problem import parse_problem
from sdpo_core.runtime import Runtime, load_runtime
from sdpo_core.solve import solve
from sdpo_core.toy import DEFAULT_MODEL_DIR, HARD_SUITE
from sdpo_core.types import SolveEvent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import repo_relative

OUT = Path(__file__).parent / "results" / "step_time.json"
PHASES = ("generate", "verify", "teacher", "student", "export", "swap")
LABELS = {
    "generate": "generate",
    "verify": "verify",
    "teacher": "teacher forward",
    "student": "student fwd+bwd+opt",
    "export": "adapter export",
    "swap": "adapter swap",
    "other": "other (ckpt, ...)",
    "step": "step (wall)",
}


def measure_steps(
    runtime: Runtime,
    problem: dict[str, Any],
    *,
    warmup: int = 1,
    steps: int = 4,
    samples: int = 16,
    max_new_tokens: int | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run `warmup + steps` SDPO steps of `problem` and summarise the measured ones.

    Returns mean_ms and fraction per phase (plus "other" and "step"), generated tokens per
    step, generation tokens/s, the per-step records and the solve result. Medians too: on a
    shared CPU box a busy neighbour can slow one step several-fold.
    """
    spec = copy.deepcopy(problem)
    total = warmup + steps
    # one batch more than needed, so neither the budget nor the final-update skip ends the run;
    # should_stop ends it once `total` updates are done
    spec["budget"] = {"max_attempts": (total + 1) * samples, "max_seconds": 7 * 24 * 3600.0}
    spec["sdpo"] = {**spec.get("sdpo", {}), "samples_per_step": samples}
    if max_new_tokens is not None:
        spec["sdpo"]["max_new_tokens"] = max_new_tokens
    records: list[dict[str, float]] = []
    tokens = 0
    last = time.perf_counter()

    def on_event(event: SolveEvent) -> None:
        nonlocal last, tokens
        if isinstance(event, AttemptPayload):
            tokens += event.num_tokens
        elif isinstance(event, StepPayload):
            now = time.perf_counter()
            m = event.metrics
            rec = {p: m.get(f"time_{p}", 0.0) for p in PHASES}
            rec["step"] = now - last
            rec["other"] = rec["step"] - sum(rec[p] for p in PHASES)
            rec["tokens_generated"] = float(tokens)
            rec["loss"], rec["kl"] = m.get("loss", float("nan")), m.get("kl", float("nan"))
            records.append(rec)
            last, tokens = now, 0

    with tempfile.TemporaryDirectory(prefix="step-time-") as tmp:
        result = solve(
            parse_problem(spec),
            runtime,
            on_event=on_event,
            checkpoint_dir=checkpoint_dir or tmp,
            should_stop=lambda: len(records) >= total,
        )
    measured = records[warmup:]
    if not measured:
        raise RuntimeError(
            f"no step measured: solve ended with {result.status} after {len(records)} steps "
            f"({result.error or 'solved early'}); use a harder problem or fewer warm-up steps"
        )
    keys = [*PHASES, "other", "step"]
    mean = {k: sum(r[k] for r in measured) / len(measured) for k in keys}
    gen_tokens = sum(r["tokens_generated"] for r in measured) / len(measured)
    return {
        "steps_measured": len(measured),
        "warmup": warmup,
        "samples_per_step": samples,
        "mean_ms": {k: 1000 * v for k, v in mean.items()},
        "median_ms": {k: 1000 * statistics.median(r[k] for r in measured) for k in keys},
        "fraction": {k: mean[k] / mean["step"] for k in keys},
        "tokens_generated_per_step": gen_tokens,
        "generate_tokens_per_s": gen_tokens / mean["generate"] if mean["generate"] else None,
        "per_step": records,
        "result": result.to_dict(),
    }


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Phases as rows, one `ms  %` column pair per engine."""
    names = list(results)
    head = f"{'phase':<22}" + "".join(f"{n + ' ms':>12}{n + ' %':>9}" for n in names)
    lines = [head, "-" * len(head)]
    for key in [*PHASES, "other", "step"]:
        row = f"{LABELS[key]:<22}"
        for n in names:
            ms, frac = results[n]["mean_ms"][key], results[n]["fraction"][key]
            row += f"{ms:12.1f}{100 * frac:8.1f}%"
        lines.append(row)
    row = f"{'generated tok/step':<22}"
    for n in names:
        row += f"{results[n]['tokens_generated_per_step']:12.0f}{'':>9}"
    lines.append(row)
    return "\n".join(lines)


def _runtime(args: argparse.Namespace, engine: str, model: str) -> tuple[Runtime, float | None]:
    """The runtime for `engine` and the vLLM server's start-up seconds (when it started one)."""
    if engine == "vllm" and args.vllm_url and args.vllm_model_name:
        from sdpo_core.engines.vllm import VLLMEngine
        from sdpo_core.trainer import SDPOTrainer

        trainer = SDPOTrainer(model, device=args.device, dtype=args.dtype)
        return Runtime(model, trainer, VLLMEngine(args.vllm_url, args.vllm_model_name)), None
    rt = load_runtime(
        model,
        engine=engine,
        vllm_url=args.vllm_url,
        device=args.device,
        dtype=args.dtype,
        max_lora_rank=args.max_lora_rank,
    )
    startup = rt.vllm_server.startup_seconds if rt.vllm_server is not None else None
    return rt, startup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    ap.add_argument("--model", default=None, help="model dir (default: the bundled toy model)")
    ap.add_argument("--problem", type=int, default=0, help="index into the toy HARD_SUITE")
    ap.add_argument("--warmup", type=int, default=1, help="steps dropped before measuring")
    ap.add_argument("--steps", type=int, default=4, help="steps measured")
    ap.add_argument("--samples", type=int, default=16, help="rollouts per step")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the problem's")
    ap.add_argument("--device", default=None, help="trainer device (default: cuda if present)")
    ap.add_argument("--dtype", default=None, help="trainer dtype (default: the trainer's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--vllm-url", default=None, help="a running vLLM server (else one starts)")
    ap.add_argument("--vllm-model-name", default=None, help="its name for the base model")
    ap.add_argument("--max-lora-rank", type=int, default=16, help="vLLM --max-lora-rank")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = str(args.model or DEFAULT_MODEL_DIR)
    if not (Path(model) / "config.json").exists():
        sys.exit(f"no model at {model} (the bundled toy model is missing?); pass --model DIR")
    problem = HARD_SUITE[args.problem]

    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    for engine in args.engines:
        print(f"[{engine}] loading {model} ...", flush=True)
        t0 = time.perf_counter()
        rt, startup = _runtime(args, engine, model)
        load_s = time.perf_counter() - t0
        try:
            print(f"[{engine}] {args.warmup} + {args.steps} steps x {args.samples} ...", flush=True)
            res = measure_steps(
                rt,
                problem,
                warmup=args.warmup,
                steps=args.steps,
                samples=args.samples,
                max_new_tokens=args.max_new_tokens,
            )
        finally:
            rt.close()
        res.update(load_seconds=load_s, vllm_server_startup_seconds=startup)
        res["device"] = str(rt.trainer.device)
        res["dtype"] = str(rt.trainer.base.dtype).removeprefix("torch.")
        results[engine] = res
        print(f"[{engine}] " + ", ".join(f"{k} {v:.0f} ms" for k, v in res["mean_ms"].items()))

    print()
    print(
        f"model {model}, problem HARD_SUITE[{args.problem}] "
        f"({problem['metadata']['n_keys']} keys), {args.samples} samples/step, "
        f"mean over {args.steps} steps after {args.warmup} warm-up; "
        f"torch threads {torch.get_num_threads()}, load average {load_before[0]:.1f} -> "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(format_table(results))
    for name, res in results.items():
        if res["vllm_server_startup_seconds"] is not None:
            print(
                f"{name}: server start-up {res['vllm_server_startup_seconds']:.1f} s (not counted)"
            )
    report = {
        "model": repo_relative(model),
        "bundled_model": Path(model).resolve() == Path(DEFAULT_MODEL_DIR).resolve(),
        "problem": {"index": args.problem, **problem["metadata"]},
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "engines": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
