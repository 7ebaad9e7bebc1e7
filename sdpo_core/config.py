"""SDPO hyper-parameters. Every field can be overridden per problem (the "sdpo" object)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

# Teacher-context templates as the authors' run renders them: the YAML block scalars (`|-`,
# no trailing newline) of verl/trainer/config/actor/actor.yaml in lasgroup/SDPO. TRL's
# dataclass defaults differ (trailing "\n\n" on solution and feedback, "\n" on the reprompt).
REPROMPT_TEMPLATE = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}"
FEEDBACK_TEMPLATE = (
    "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}"
)
# demonstration = best_so_far: the line after the shown attempt (the solution template's).
SCORE_TEMPLATE = "\nScore of this attempt: {score}"
# Output heads and token embeddings of the families users run: LoRA there is not what the
# trainer trains (its loss applies the frozen head to the decoder's hidden states) nor what
# vLLM serves, so target_modules may not name them.
EMBEDDING_MODULES = ("lm_head", "embed_tokens", "embed_out", "wte", "word_embeddings")


def _no_embedding_modules(value: list[str] | str) -> list[str] | str:
    bad = (
        [m for m in value if m.split(".")[-1] in EMBEDDING_MODULES]
        if isinstance(value, list)
        else []
    )
    if bad:
        raise ValueError(
            f"LoRA on {', '.join(bad)} is not supported: the trainer keeps the output head "
            "and the token embeddings frozen (its loss applies the base head to the "
            "decoder's hidden states) and vLLM does not serve LoRA there; list only the "
            'attention and MLP projections (or "all-linear")'
        )
    return value


TargetModules = Annotated[list[str] | Literal["all-linear"], AfterValidator(_no_embedding_modules)]


class SDPOConfig(BaseModel):
    """Test-time SDPO settings. Defaults follow the paper's test-time setting and the
    authors' run config (lasgroup/SDPO; docs/algorithm-options.md has the table, each rule's
    source), with a LoRA learning rate measured on the bundled toy model
    (benchmarks/discovery.py). A model's sdpo_defaults.json overrides them (docs/models.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # prompt: rendered with the model's chat template (sdpo_core/chat.py)
    system_prompt: str | None = Field(
        None, description="System message before the prompt (student and teacher alike)."
    )
    enable_thinking: bool | None = Field(
        None,
        description="Thinking switch of Qwen3-style chat templates; null = its default. A "
        "template with the switch gets false unless set (the authors' runs: "
        "apply_chat_template_kwargs enable_thinking false, user.yaml; sdpo_core/runtime.py).",
    )

    # rollout
    samples_per_step: int = Field(
        16,
        ge=1,
        le=256,
        description="Rollouts per SDPO step (the paper's test-time setting; their training "
        "runs sample 8 per question, sdpo.yaml rollout.n).",
    )
    max_new_tokens: int = Field(
        8192,
        ge=1,
        le=32768,
        description="Response length cap (the authors' max_response_length, user.yaml).",
    )
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, description="Seed for sampling and initialisation.")

    # optimiser (AdamW on the LoRA student)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    updates_per_batch: int = Field(1, ge=1, le=16, description="Optimizer steps per rollout batch.")
    micro_batch_size: int = Field(4, ge=1, le=256, description="Samples per forward/backward pass.")
    gradient_checkpointing: bool = Field(
        True,
        description="Keep one hidden state per layer in the student's forward pass and recompute "
        "the rest in backward: activation memory grows with the response length through the "
        "hidden states only, for one more student forward in backward (same loss and gradients).",
    )

    # LoRA
    lora_rank: int = Field(16, ge=1, le=512)
    lora_alpha: float = Field(32.0, gt=0.0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: TargetModules = "all-linear"

    # loss
    top_k: int | None = Field(20, ge=1, description="Top-K distillation; null = full vocabulary.")
    add_tail: bool = True
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="1 reverse KL, 0 forward KL.")
    is_clip: float | None = Field(2.0, gt=0.0, description="Importance-ratio clamp; null = off.")
    loss_aggregation: Literal["seq_mean_token_mean", "token_mean"] = Field(
        "seq_mean_token_mean",
        description="seq_mean_token_mean: each sample's token mean, averaged over all samples "
        "of the step, masked samples counting as zero (the authors' runs: verl token-mean on "
        "micro-batches of one sequence; TRL's SDPO); token_mean: one token mean over the "
        "step's unmasked tokens (long responses weigh more). docs/algorithm-options.md",
    )
    rollout_is: Literal["token"] | None = Field(
        "token",
        description="Rollout correction (the authors' sdpo.yaml, verl rollout_is: token): each "
        "token's loss weighs exp(trainer - sampling engine log-prob), capped at rollout_is_cap, "
        "against a mismatch between the engine and the trainer; null = off.",
    )
    rollout_is_cap: float = Field(
        2.0, gt=0.0, description="Upper cap of the rollout weights (verl rollout_is_threshold)."
    )

    # teacher
    teacher_regularization: Literal["ema", "trust_region"] = "ema"
    ema_rate: float = Field(0.01, gt=0.0, le=1.0)
    ema_target: Literal["delta", "factors"] = Field(
        "delta",
        description="EMA of the student's weight delta B·A (what the authors' full teacher copy "
        "averages when the base is frozen), or of the LoRA factors A and B separately (TRL's "
        "PEFT adapter rule; its delta lags). docs/algorithm-options.md",
    )
    trust_region_alpha: float = Field(0.01, gt=0.0, le=1.0)
    teacher_entropy_gate: float | None = Field(
        None,
        ge=0.0,
        description="Response positions where the teacher's entropy is at least this many "
        "nats (it does not know: e.g. a key its feedback does not name) weigh unsure_weight "
        "in the loss, so the student is not pulled back towards the teacher's ignorance; "
        "null = every position weighs 1 (the paper). docs/algorithm-options.md",
    )
    unsure_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="Loss weight of the positions teacher_entropy_gate picks."
    )
    demonstration: Literal["passing_sibling", "best_so_far"] = Field(
        "passing_sibling",
        description="The attempt a teacher is shown in the solution template: passing_sibling, "
        "a sibling that passed (the paper); best_so_far, the highest-scoring attempt so far "
        "(of this group and earlier steps), with its score (score_template) and the sample's "
        "own feedback. Never the sample itself. docs/algorithm-options.md",
    )
    reprompt_template: str = REPROMPT_TEMPLATE
    solution_template: str = SOLUTION_TEMPLATE
    feedback_template: str = FEEDBACK_TEMPLATE
    score_template: str = Field(
        SCORE_TEMPLATE, description="The line after a best_so_far demonstration; {score}."
    )
    max_feedback_chars: int = Field(2000, ge=0)
    feedback_with_solution: bool = Field(
        False,
        description="Keep a failing sample's feedback in its teacher context beside a passing "
        "sibling's solution; false = the solution alone (the authors' "
        "environment_feedback_only_without_solution: True).",
    )
    feedback_memory: int = Field(
        0,
        ge=0,
        le=16,
        description="Extra distinct feedback texts of earlier attempts in a failing sample's "
        "teacher context; 0 = the paper's rule (its own feedback only). "
        "docs/algorithm-options.md",
    )

    def merged(self, overrides: SDPOOverrides | dict[str, Any] | None) -> SDPOConfig:
        """A copy with `overrides` applied (only the fields they set) and validated."""
        if isinstance(overrides, BaseModel):
            overrides = overrides.model_dump(exclude_unset=True)
        if not overrides:
            return self
        return SDPOConfig.model_validate({**self.model_dump(), **overrides})


def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """`model`'s fields with their types, ranges and defaults, each optional to set: the
    set ones are `model_fields_set` (a default of null is a value here, e.g. top_k)."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in model.model_fields.items()}
    return create_model(
        name,
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__="Overrides of SDPO settings: only the fields given are applied.",
        **fields,
    )


# A problem's "sdpo" block: typed like SDPOConfig, applied over the model's defaults.
SDPOOverrides = _partial(SDPOConfig, "SDPOOverrides")
