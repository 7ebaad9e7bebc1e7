"""Pretrain the bundled toy model (minutes on 2 CPU cores).

    python -m sdpo_core.toy.pretrain --out sdpo_core/toy/model

Builds the tokenizer (sdpo_core/toy/tokenizer.py) and a small standard `LlamaForCausalLM`,
trains it on the toy-world mixture (sdpo_core/toy/world.py: plain prompts, prompts with
verifier feedback, multi-turn feedback, prompts with a correct solution; the target is
always the true table) with the loss on response tokens only (EOS included), and saves a
float32 safetensors checkpoint + tokenizer + generation config. Seeded and deterministic.

The bundled model is cycles 0-1 (the general mixtures; pretrain_log.json keeps their
history) followed by the reading cycles 2-4 (`READING_CYCLES`), which teach it to read
feedback about every key in either block. From the cycle-1 model (the bundled model at commit
9d0750b) they are reproduced by

    python -m sdpo_core.toy.pretrain --init-from CYCLE1_DIR --start-cycle 2 --out DIR

Response digits in the *input* are sometimes replaced by random digits while the targets
stay true: the digits of a table are independent, so this changes no optimal prediction,
but it teaches the model that its own earlier (possibly wrong) answers carry no
information, which is the situation of a teacher scoring a student's sampled attempt.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sdpo_core.config import SDPOConfig
from sdpo_core.toy.tokenizer import CHAT_TEMPLATE, GENERAL_TEXT, train_tokenizer
from sdpo_core.toy.world import (
    LATE_FAILURES,
    MIXTURE,
    READING_MIXTURE,
    RECALL_MIXTURE,
    REPAIR_MIXTURE,
    training_example,
)

IGNORE = -100
_REVEALED = re.compile(r"Input: (\S+)\nExpected Output: (\S+)")


@dataclass(frozen=True)
class ReadingCycle:
    """A cycle that teaches reading feedback about every key (world.READING_MIXTURE; the last
    one, world.REPAIR_MIXTURE, restores short tables' answers)."""

    steps: int
    lr: float
    mixture: dict[str, float]
    long_tables: bool  # at least 4..8 keys


# The bundled model's cycles 2-4, run from its cycle-1 model. Each draws its data from
# random.Random(READING_SEED) with attempts wrong at late keys (world.LATE_FAILURES), warms up
# for READING_WARMUP steps and decays over the second half.
READING_CYCLES = (
    ReadingCycle(3000, 2e-3, READING_MIXTURE, long_tables=True),
    ReadingCycle(5000, 2e-3, READING_MIXTURE, long_tables=True),
    ReadingCycle(1500, 1e-3, REPAIR_MIXTURE, long_tables=False),  # short tables' format back
)
READING_SEED, READING_WARMUP, READING_DECAY_FRAC = 7, 50, 0.5


@dataclass
class TrainArgs:
    out: str = "sdpo_core/toy/model"
    seed: int = 0
    steps: int = 6000
    batch_size: int = 16
    lr: float = 4e-3
    warmup: int = 100
    decay_frac: float = 1.0  # 1.0: cosine over the whole cycle; 0.2: constant, then 20% decay
    weight_decay: float = 0.01
    corrupt_prob: float = 0.3  # per response digit, in half of the examples
    threads: int = 1  # on a shared 2-core box one thread ran 3x faster than two
    eval_every: int = 200
    max_minutes: float = 75.0  # per cycle, a hard stop (the schedule is sized by `steps`)
    cycles: int = 2 + len(READING_CYCLES)  # through the last reading cycle
    init_from: str = ""  # resume: a directory this script saved after cycle start_cycle - 1
    start_cycle: int = 0
    recall_cycle: int = 1  # cycles from this one on train on RECALL_MIXTURE, with:
    recall_steps: int = 9000
    recall_lr: float = 2e-3
    recall_decay_frac: float = 0.25
    reading_cycle: int = 2  # cycles from this one follow READING_CYCLES
    # model
    hidden: int = 96
    layers: int = 4
    heads: int = 3  # head_dim 32 (vLLM's CPU attention supports 32, not 24)
    intermediate: int = 256
    init_std: float = 0.02


# ------------------------------------------------------------------ data


def chat_prefix(message: str) -> str:
    """The chat-template text before the response (what `apply_chat_template` renders)."""
    return f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Encoded:
    ids: list[int]  # prompt + response + EOS
    n_prompt: int  # tokens before the response
    message: str
    table: dict[str, str]


class Encoder:
    """Turns training examples into token ids, the way the solve loop does."""

    def __init__(self, tok: PreTrainedTokenizerFast) -> None:
        self.tok = tok
        self.eos = tok.eos_token_id
        self.digit_ids = torch.tensor([tok.convert_tokens_to_ids(str(d)) for d in range(10)])
        self.is_digit = torch.zeros(len(tok), dtype=torch.bool)
        self.is_digit[self.digit_ids] = True

    def encode(self, examples: list[tuple[str, str, dict[str, str]]]) -> list[Encoded]:
        prefixes = self.tok([chat_prefix(m) for m, _, _ in examples], add_special_tokens=False)
        answers = self.tok([a for _, a, _ in examples], add_special_tokens=False)
        return [
            Encoded(p + a + [self.eos], len(p), m, t)
            for p, a, (m, _, t) in zip(
                prefixes["input_ids"], answers["input_ids"], examples, strict=True
            )
        ]

    def collate(
        self, batch: list[Encoded], rng: random.Random | None = None, corrupt_prob: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Right-padded input_ids / attention_mask / labels [B, T]; labels only on responses."""
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            labels[i, e.n_prompt : len(e.ids)] = ids[i, e.n_prompt : len(e.ids)]
            mask[i, : len(e.ids)] = 1
        if rng is not None and corrupt_prob > 0:
            resp = labels != IGNORE
            gen = torch.Generator().manual_seed(rng.randrange(2**31))
            rows = torch.rand(len(batch), 1, generator=gen) < 0.5
            hit = torch.rand(ids.shape, generator=gen) < corrupt_prob
            hit &= resp & self.is_digit[ids] & rows
            ids[hit] = self.digit_ids[torch.randint(0, 10, (int(hit.sum()),), generator=gen)]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def cycle_setup(args: TrainArgs, cycle: int) -> tuple[TrainArgs, dict, random.Random]:
    """A cycle's schedule, `training_example` options and data stream: `MIXTURE`; from
    `recall_cycle` the recall-heavy `RECALL_MIXTURE` and the recall schedule; from
    `reading_cycle` the `READING_CYCLES`."""
    if cycle >= args.reading_cycle:
        spec = READING_CYCLES[cycle - args.reading_cycle]
        schedule = replace(
            args, steps=spec.steps, lr=spec.lr, warmup=READING_WARMUP, decay_frac=READING_DECAY_FRAC
        )
        data = {"mixture": spec.mixture, "late": LATE_FAILURES, "long_tables": spec.long_tables}
        return schedule, data, random.Random(READING_SEED)
    rng = random.Random(args.seed if cycle == 0 else f"{args.seed}-cycle-{cycle}")
    if cycle >= args.recall_cycle:
        schedule = replace(
            args, steps=args.recall_steps, lr=args.recall_lr, decay_frac=args.recall_decay_frac
        )
        return schedule, {"mixture": RECALL_MIXTURE}, rng
    return args, {}, rng


def batches(
    enc: Encoder, rng: random.Random, cfg: SDPOConfig, batch_size: int, kw: dict, pool: int = 16
):
    """Endless length-bucketed batches: draw `pool` batches' worth, sort by length, shuffle.
    `kw`: the cycle's `training_example` options (`cycle_setup`)."""
    while True:
        examples = enc.encode([training_example(rng, cfg, **kw) for _ in range(batch_size * pool)])
        examples.sort(key=lambda e: len(e.ids))
        chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        rng.shuffle(chunks)
        yield from chunks


# ------------------------------------------------------------------ model


def build_model(args: TrainArgs, tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        initializer_range=args.init_std,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        dtype="float32",
    )
    return LlamaForCausalLM(config)


def response_loss(model: LlamaForCausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over response tokens; the LM head runs only where there is a label."""
    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state  # [B, T, H]
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1: [B, T-1]
    sel = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][sel])  # [M, V]
    return F.cross_entropy(logits, targets[sel])


# ------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(
    model: LlamaForCausalLM, enc: Encoder, sets: dict[str, list[Encoded]]
) -> dict[str, float]:
    """Per kind: response loss; p(true digit) at revealed keys; max prob at unrevealed keys."""
    model.eval()
    out: dict[str, float] = {}
    for kind, examples in sets.items():
        losses, p_rev, p_max_unrev, n_tok = 0.0, [], [], 0
        for i in range(0, len(examples), 64):
            chunk = examples[i : i + 64]
            b = enc.collate(chunk)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            tgt = b["labels"][:, 1:]
            ce = F.cross_entropy(
                logits[:, :-1].flatten(0, 1), tgt.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            losses += float(ce)
            n_tok += int((tgt != IGNORE).sum())
            probs = logits[:, :-1].softmax(-1)  # [B, T-1, V]
            for j, e in enumerate(chunk):
                revealed = dict(_REVEALED.findall(e.message))
                if "Correct solution:" in e.message:
                    revealed = dict(e.table)
                keys = list(e.table)
                pos = [t for t in range(e.n_prompt, len(e.ids)) if enc.is_digit[e.ids[t]]]
                for key, t in zip(keys, pos, strict=True):
                    p = probs[j, t - 1]
                    if key in revealed:
                        p_rev.append(float(p[e.ids[t]]))
                    else:
                        p_max_unrev.append(float(p[enc.digit_ids].max()))
        out[f"{kind}/loss"] = losses / max(n_tok, 1)
        if p_rev:
            out[f"{kind}/p_revealed"] = sum(p_rev) / len(p_rev)
        if p_max_unrev:
            out[f"{kind}/pmax_hidden"] = sum(p_max_unrev) / len(p_max_unrev)
    model.train()
    return out


# ------------------------------------------------------------------ main


def lr_at(step: int, args: TrainArgs) -> float:
    """Linear warmup, then constant (`decay_frac` < 1: warmup-stable-decay) or cosine, down to
    5% of the peak over the last `decay_frac` of the cycle."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    decay_start = args.warmup + (1 - args.decay_frac) * (args.steps - args.warmup)
    frac = max(0.0, step - decay_start) / max(1.0, args.steps - decay_start)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def save(out: Path, model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, log: dict) -> None:
    """Checkpoint + tokenizer + generation config + training log into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _patch_tokenizer_config(out)
    GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None
    ).save_pretrained(out)
    (out / "pretrain_log.json").write_text(json.dumps(log, indent=1) + "\n")


def check_args(args: TrainArgs) -> None:
    """ValueError naming the flag when `args` asks for cycles no recipe defines."""
    if args.cycles > args.reading_cycle + len(READING_CYCLES):
        raise ValueError(
            f"--cycles {args.cycles}: at most {args.reading_cycle + len(READING_CYCLES)} "
            f"(reading cycles start at {args.reading_cycle}; READING_CYCLES has "
            f"{len(READING_CYCLES)})"
        )


def pretrain(args: TrainArgs) -> dict:
    """Train `args.cycles` cosine cycles of `args.steps` steps each (fresh AdamW and data stream
    per cycle); `--init-from DIR --start-cycle K` resumes after cycle K - 1 saved in DIR."""
    check_args(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = SDPOConfig()
    out = Path(args.out)
    t0 = time.time()

    corpus_rng = random.Random(args.seed + 1)
    corpus = [
        chat_prefix(m).replace("<|im_start|>", "").replace("<|im_end|>", "") + a
        for m, a, _ in (training_example(corpus_rng, cfg) for _ in range(5000))
    ] + [GENERAL_TEXT] * 4
    tok = train_tokenizer(corpus)
    model = build_model(args, tok)
    log: dict = {"args": asdict(args), "cycles": []}
    if args.init_from:
        model = LlamaForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
        tok = PreTrainedTokenizerFast.from_pretrained(args.init_from)
        log["cycles"] = json.loads((Path(args.init_from) / "pretrain_log.json").read_text()).get(
            "cycles", []
        )[: args.start_cycle]
    enc = Encoder(tok)
    n_params = sum(p.numel() for p in model.parameters())
    log |= {"params": n_params, "vocab": len(tok)}
    print(f"vocab {len(tok)}  params {n_params:,}  tokenizer {time.time() - t0:.1f}s", flush=True)

    eval_rng = random.Random(args.seed + 2)
    eval_sets = {
        kind: enc.encode([training_example(eval_rng, cfg, kind) for _ in range(64)])
        for kind in MIXTURE
    }
    late = {"late": 1.0, "long_tables": True}  # attempts wrong at late keys only
    eval_sets["feedback_late"] = enc.encode(
        [training_example(eval_rng, cfg, "feedback", **late) for _ in range(64)]
    )
    for cycle in range(args.start_cycle, args.cycles):
        cargs, data, rng = cycle_setup(args, cycle)

        def checkpoint(history: list[dict], cycle: int = cycle) -> None:
            save(out, model, tok, log | {"partial": {"cycle": cycle, "history": history}})

        history = train_cycle(model, enc, eval_sets, rng, data, cfg, cargs, cycle, checkpoint)
        log["cycles"].append({"cycle": cycle, "args": asdict(cargs), "history": history})
        log["train_seconds"] = round(sum(c["history"][-1]["seconds"] for c in log["cycles"]), 1)
        log["final"] = history[-1]
        save(out, model, tok, log)
        print(f"saved {out} after cycle {cycle}  ({time.time() - t0:.0f}s total)", flush=True)
    return log


def train_cycle(
    model: LlamaForCausalLM,
    enc: Encoder,
    eval_sets: dict[str, list[Encoded]],
    rng: random.Random,
    data_options: dict,
    cfg: SDPOConfig,
    args: TrainArgs,
    cycle: int,
    checkpoint: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """One warmup + cosine cycle of `args.steps` AdamW steps; returns the eval history."""
    opt = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay
    )
    data = batches(enc, rng, cfg, args.batch_size, data_options)
    history: list[dict] = []
    ema, tokens = None, 0
    t_train = time.time()
    model.train()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, args)
        batch = enc.collate(next(data), rng, args.corrupt_prob)
        loss = response_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += int(batch["attention_mask"].sum())
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        elapsed = time.time() - t_train
        if step % 25 == 0:
            print(
                f"cycle {cycle} step {step:5d}  loss {ema:.4f}  lr {lr_at(step - 1, args):.2e}  "
                f"{elapsed:6.0f}s  {tokens / elapsed:,.0f} tok/s",
                flush=True,
            )
        stop = elapsed > args.max_minutes * 60
        if step % args.eval_every == 0 or step == args.steps or stop:
            metrics = {"cycle": cycle, "step": step, "seconds": round(elapsed, 1)}
            metrics |= {"train_loss": round(ema, 4)}
            metrics |= {k: round(v, 4) for k, v in evaluate(model, enc, eval_sets).items()}
            history.append(metrics)
            print("eval " + json.dumps(metrics), flush=True)
            if checkpoint is not None:
                checkpoint(history)
        if stop:
            print(f"time limit reached at step {step}", flush=True)
            break
    return history


def _patch_tokenizer_config(out: Path) -> None:
    """Keep the chat template inside tokenizer_config.json too, and name the generic fast
    tokenizer class, so older transformers (and vLLM's pinned one) load it as well."""
    path = out / "tokenizer_config.json"
    conf = json.loads(path.read_text())
    conf["tokenizer_class"] = "PreTrainedTokenizerFast"
    conf["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(conf, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, value in asdict(TrainArgs()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = TrainArgs(**vars(parser.parse_args(argv)))
    try:
        check_args(args)
    except ValueError as err:
        parser.error(str(err))  # exit 2 with usage, not a traceback
    pretrain(args)


if __name__ == "__main__":
    main()
