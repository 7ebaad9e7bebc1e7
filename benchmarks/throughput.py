"""Problems per hour of one worker running K problems at once, on both engines.

The fresh very hard toy suite (8 problems, seeds no tuning saw, the bundled model's defaults)
is submitted at once to one real `Worker` (service/worker.py, a real Redis) with concurrency
K = 1, 2, 4, 8 and the `hf` or `vllm` engine; each (engine, K) runs in its own process, so
peak RSS is its own. Reported per configuration: problems finished per hour, attempts per
second, each phase's busy fraction (wall time during which at least one problem was
generating, verifying, training, exporting/swapping), the CPU it used (the worker and its
vLLM server, as a fraction of the cores it may use: what is left idle for more problems to
fill), each problem's first passing attempt, and the peak RSS of the worker (and of the vLLM
server). The ratio lines compare each K with K = 1 of the same engine in the same run.

    python benchmarks/throughput.py                       # both engines, K = 1 2 4 8
    python benchmarks/throughput.py --engines hf --ks 1 4 --budget 1000
    python benchmarks/throughput.py --engines vllm --schedule overlap \
        --out benchmarks/results/throughput_overlap.json
    python benchmarks/throughput.py --memory              # RSS per added problem, 8-layer
                                                          # hidden-512 Qwen3, 151,936 vocab

Writes benchmarks/results/throughput.json (or throughput_memory.json).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds_of_tree(root: int) -> dict[int, float]:
    """CPU seconds (user + system) each process of `root`'s tree has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone since listed
            continue
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    return {p: used[p] for p in tree if p in used}


def suite(budget: int) -> list[dict]:
    from discovery import SUITES

    return [
        {**p, "budget": {"max_attempts": budget, "max_seconds": 4 * 3600}}
        for p in SUITES["fresh_very_hard"]
    ]


async def _one(
    engine: str, k: int, budget: int, redis_url: str, threads: int, schedule: str
) -> dict:
    """One (engine, K): a worker in this process, the suite submitted once its model is up."""
    import torch

    from service.settings import Settings
    from service.store import Store, connect
    from service.worker import Worker

    if threads == 0:  # what a worker picks on a quiet machine: a local vLLM server gets a core
        threads = max(1, len(os.sched_getaffinity(0)) - (engine == "vllm"))
    torch.set_num_threads(threads)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            redis_url=redis_url,
            key_prefix=prefix,
            checkpoint_dir=Path(tmp),
            worker_metrics_port=0,
            cpu_threads=threads,
            heartbeat_seconds=1.0,
            worker_schedule=schedule,
        )
        worker = Worker(settings, engine=engine, metrics_port=0, concurrency=k, name="bench")
        problems = suite(budget)
        run = asyncio.create_task(worker.run(max_problems=len(problems)))
        while getattr(worker, "queue", None) is None:
            if run.done():
                run.result()  # raises what stopped it
            await asyncio.sleep(0.2)
        store = Store(connect(redis_url), prefix)
        pids = []
        t0 = time.monotonic()
        for p in problems:
            outcome, pid, _ = await store.create_problem(
                tenant="bench",
                model=worker.model,
                spec=p,
                checkpoint_root=tmp,
                max_active=1000,
                max_queued=1000,
            )
            assert outcome == "created", outcome
            pids.append(pid)
        peak_active = 0
        cpu_start = _cpu_seconds_of_tree(os.getpid())  # this worker and its vLLM server
        cpu_last = dict(cpu_start)
        while not run.done():  # how many ran at once (at most K), and the CPU they used
            peak_active = max(peak_active, len(worker.jobs))
            cpu_last.update(_cpu_seconds_of_tree(os.getpid()))
            await asyncio.sleep(0.5)
        await run
        wall = time.monotonic() - t0
        cpu = sum(v - cpu_start.get(p, 0.0) for p, v in cpu_last.items())
        rows = [await store.get_problem(pid) for pid in pids]
        busy = worker.runtime.phases.busy_seconds()
        keys = [k async for k in store.redis.scan_iter(f"{prefix}:*")]
        if keys:
            await store.redis.delete(*keys)
        await store.redis.aclose()
    attempts = sum(int(r["attempts"]) for r in rows)
    first = [int(r["solved_attempt"]) if r.get("solved_attempt") else None for r in rows]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "engine": engine,
        "k": k,
        "threads": threads,
        "schedule": "lockstep" if worker.runtime.rounds or engine == "hf" else "overlap",
        "wall_seconds": round(wall, 1),
        "problems": len(rows),
        "peak_active_problems": peak_active,
        "statuses": [r["status"] for r in rows],
        "problems_per_hour": round(len(rows) / wall * 3600, 1),
        "attempts": attempts,
        "attempts_per_second": round(attempts / wall, 2),
        "busy_fraction": {p: round(s / wall, 3) for p, s in busy.items()},
        # CPU seconds of the worker and its server over wall seconds times the cores it may use:
        # near 1 at K = 1 leaves nothing idle for more problems to fill
        "cpu_utilisation": round(cpu / (wall * len(os.sched_getaffinity(0))), 3),
        "first_pass": first,
        "solved": sum(f is not None for f in first),
        "mean_attempts": round(statistics.mean(f or budget for f in first), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_children_mb": round(children, 1),  # the vLLM server, once stopped
    }


def _memory(threads: int) -> dict:
    """RSS after each added problem (a slot with its adapters, one step's optimizer state) on
    a random 8-layer hidden-512 Qwen3 with the 151,936 vocabulary, against the bytes of one
    problem's adapters plus optimizer state."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sdpo_core.runtime import load_runtime
    from sdpo_core.toy import DEFAULT_MODEL_DIR
    from sdpo_core.trainer import RolloutBatch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
        cfg = AutoConfig.for_model(
            "qwen3",
            vocab_size=151_936,
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            max_position_embeddings=4096,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        runtime = load_runtime(tmp, engine="hf", device="cpu")
        base_bytes = sum(p.numel() * p.element_size() for p in runtime.trainer.base.parameters())
        sdpo = runtime.defaults.merged({"samples_per_step": 4, "micro_batch_size": 4})
        rss = [_rss_mb()]
        per_problem: list[int] = []
        for slot in range(8):
            view = runtime.for_slot(slot)
            view.trainer.reset(sdpo)
            prompt = view.trainer.encode_chat("Find the hidden table.")
            teacher = view.trainer.encode_chat("Find the hidden table. Feedback: a is 3.")
            batch = RolloutBatch(prompt, [list(range(5, 69))] * 4, [teacher] * 4)
            view.trainer.step(batch)
            state = runtime.trainer.slots[slot]
            model = runtime.trainer.model
            adapters = sum(
                p.numel() * p.element_size()
                for n, p in model.named_parameters()
                if f".{state.student}." in n or f".{state.teacher}." in n
            ) + sum(t.numel() * t.element_size() for t in state.teacher_delta.values())
            optim = sum(
                t.numel() * t.element_size()
                for s in state.optimizer.state.values()
                for t in s.values()
                if torch.is_tensor(t)
            )
            per_problem.append(adapters + optim)
            rss.append(_rss_mb())
        runtime.close()
    growth = [round(b - a, 1) for a, b in itertools.pairwise(rss[1:])]  # after the first
    one = per_problem[-1] / 2**20
    return {
        "model": "random qwen3, 8 layers, hidden 512, vocab 151936, float32",
        "base_mb": round(base_bytes / 2**20, 1),
        "adapters_plus_optimizer_mb": round(one, 2),
        "rss_mb_after_each_problem": [round(r, 1) for r in rss],
        "rss_growth_mb_per_added_problem": growth,
        "median_growth_mb": round(statistics.median(growth), 2),
        "limit_mb": round(2 * one + 50, 2),  # the target: at most twice that plus 50 MB
    }


def _sign_test(diffs: list[float]) -> float:
    """Two-sided exact sign test of paired differences (ties dropped): the chance of a split
    at least this lopsided if neither K tends to need more attempts."""
    from math import comb

    pos, neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    n = pos + neg
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(pos, neg) + 1)) / 2**n
    return min(1.0, 2 * tail)


def discovery_report(body: dict) -> dict:
    """Per engine and K, discovery against K = 1 of the same engine: problems solved, mean
    attempts (unsolved at the budget), the per-problem paired differences and their sign
    test."""
    budget = body["budget"]
    out: dict = {}
    for engine in sorted({r["engine"] for r in body["runs"]}):
        runs = {r["k"]: r for r in body["runs"] if r["engine"] == engine}
        if 1 not in runs:
            continue
        base = [f or budget for f in runs[1]["first_pass"]]
        for k, r in sorted(runs.items()):
            mine = [f or budget for f in r["first_pass"]]
            diffs = [a - b for a, b in zip(mine, base, strict=True)]
            out[f"{engine} K={k}"] = {
                "solved": r["solved"],
                "mean_attempts": r["mean_attempts"],
                "mean_paired_difference": round(statistics.mean(diffs), 1),
                "sign_test_p": round(_sign_test(diffs), 3),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    ap.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--budget", type=int, default=3000)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="the trainer's torch threads (0: as a worker picks on a quiet machine: every "
        "core, less one beside a local vLLM server)",
    )
    ap.add_argument(
        "--schedule",
        default="auto",
        choices=["auto", "lockstep", "overlap"],
        help="SDPO_WORKER_SCHEDULE (auto: lock-step on a CPU host, overlap on a GPU)",
    )
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--memory", action="store_true", help="the memory check instead")
    ap.add_argument(
        "--report", action="store_true", help="add the discovery comparison to --out's runs"
    )
    ap.add_argument("--one", nargs=2, metavar=("ENGINE", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.one:
        result = asyncio.run(
            _one(a.one[0], int(a.one[1]), a.budget, a.redis_url, a.threads, a.schedule)
        )
        print("RESULT " + json.dumps(result), flush=True)
        return
    if a.report:
        out = a.out or RESULTS / "throughput.json"
        body = json.loads(out.read_text())
        body["discovery_vs_k1"] = discovery_report(body)
        print(json.dumps(body["discovery_vs_k1"], indent=1))
        out.write_text(json.dumps(body, indent=1) + "\n")
        return
    if a.memory:
        result = _memory(a.threads or len(os.sched_getaffinity(0)))
        print(json.dumps(result, indent=1))
        out = a.out or RESULTS / "throughput_memory.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        return
    out = a.out or RESULTS / "throughput.json"
    # the other engines' runs in the file stay (each engine's from one invocation)
    kept = json.loads(out.read_text())["runs"] if out.exists() else []
    runs: list[dict] = [r for r in kept if r["engine"] not in a.engines]

    def write() -> None:  # after every configuration: a long run keeps what it measured
        base = {r["engine"]: r for r in runs if r["k"] == 1}
        for r in runs:
            if r["engine"] in base and r["k"] != 1:
                ratio = r["problems_per_hour"] / base[r["engine"]]["problems_per_hour"]
                r["ratio_problems_per_hour_vs_k1"] = round(ratio, 2)
        body = {"suite": "fresh_very_hard", "budget": a.budget}
        out.write_text(json.dumps({**body, "runs": runs}, indent=1) + "\n")

    for engine in a.engines:
        for k in a.ks:
            cmd = [sys.executable, __file__, "--one", engine, str(k), "--budget", str(a.budget)]
            cmd += ["--threads", str(a.threads), "--redis-url", a.redis_url]
            cmd += ["--schedule", a.schedule]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{engine} K={k} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            r = json.loads(line[len("RESULT ") :])
            runs.append(r)
            print(
                f"{engine:>5} K={k}: {r['problems_per_hour']:7.1f} problems/h, "
                f"{r['attempts_per_second']:6.2f} attempts/s, solved {r['solved']}/8, "
                f"mean {r['mean_attempts']}, busy {r['busy_fraction']}, "
                f"CPU {r['cpu_utilisation']:.0%}, "
                f"peak RSS {r['peak_rss_mb']} MB",
                flush=True,
            )
            write()
    for r in runs:
        if "ratio_problems_per_hour_vs_k1" in r:
            ratio = r["ratio_problems_per_hour_vs_k1"]
            print(f"ratio {r['engine']} K={r['k']}/K=1 problems per hour = {ratio:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
