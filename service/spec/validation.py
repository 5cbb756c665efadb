"""The entry point: a raw mapping to a `ValidatedSpec` with its derived numbers, or all problems."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, ValidationError

from service.presets import ModelArch
from service.spec.context import Context
from service.spec.data_job import ValidatedDataSpec, validate_data_spec
from service.spec.field_errors import problems_from_validation_error
from service.spec.job import DATA_KIND, JOB_KINDS, PRETRAIN_KIND, TOKENIZER_KIND, JobSpec
from service.spec.model import resolve_model
from service.spec.paths import PathPolicy, job_path_problems
from service.spec.problems import Problem, SpecInvalid, body_problem, kind_of
from service.spec.rules import RULES
from service.spec.stages import StagePlan
from service.spec.tokenizer import ValidatedTokenizerSpec, validate_tokenizer_spec
from service.spec.warning_rules import WARNINGS


class Derived(BaseModel):
    """Numbers the spec implies, computed once here so every consumer agrees on them."""

    world_size: int = Field(description="Training processes: nodes × gpus_per_node.")
    data_parallel: int = Field(
        description="Model replicas: world_size / (tensor × pipeline × context)."
    )
    num_microbatches: int = Field(description="Micro-batches each process runs per optimizer step.")
    stages: list[StagePlan] = Field(description="Steps and tokens of each stage, in order.")
    total_train_iters: int = Field(description="Optimizer steps over all stages.")
    warmup_iters: int = Field(
        description="Warmup steps, counted at the first stage's tokens per step."
    )


class ValidatedSpec(BaseModel):
    """A spec that passed every rule, with its resolved model and derived numbers."""

    spec: JobSpec = Field(description="The spec as submitted, with defaults filled in.")
    model: ModelArch = Field(description="The resolved architecture: preset merged with overrides.")
    warnings: list[Problem] = Field(
        description="Things that will work, but perhaps not as intended."
    )
    derived: Derived = Field(description="Step counts and parallel sizes the spec implies.")


def _derive(context: Context) -> Derived:
    """The step counts the spec implies; call only once every rule has passed."""
    assert context.data_parallel is not None and context.num_microbatches is not None
    plans = []
    for stage in context.spec.stages:
        step = context.tokens_per_step(stage)
        iters = stage.tokens // step
        plans.append(
            StagePlan(
                stage=stage.name,
                seq_length=stage.seq_length,
                rope_base=stage.rope_base or context.model.rope_base,
                tokens_per_step=step,
                train_iters=iters,
                tokens_trained=iters * step,
            )
        )
    return Derived(
        world_size=context.world_size,
        data_parallel=context.data_parallel,
        num_microbatches=context.num_microbatches,
        stages=plans,
        total_train_iters=sum(plan.train_iters for plan in plans),
        warmup_iters=math.ceil(context.spec.schedule.warmup_tokens / plans[0].tokens_per_step),
    )


def validate_spec(
    raw: dict, paths: PathPolicy | None = None
) -> ValidatedSpec | ValidatedTokenizerSpec | ValidatedDataSpec:
    """Parse and check a spec mapping; SpecInvalid lists every problem found.

    `kind` picks the schema: `pretrain` (the default, a JobSpec) or `tokenizer` (a
    TokenizerJobSpec, returned as a ValidatedTokenizerSpec) or `data` (a DataJobSpec, returned
    as a ValidatedDataSpec). With `paths` (admission always
    passes the install's), every path must be one the install allows (`paths.PathPolicy`).
    """
    if not isinstance(raw, dict):
        raise body_problem(f"the job spec must be a mapping of fields, not {kind_of(raw)}")
    kind = raw.get("kind", PRETRAIN_KIND)
    if kind == TOKENIZER_KIND:
        return validate_tokenizer_spec(raw, paths)
    if kind == DATA_KIND:
        return validate_data_spec(raw, paths)
    if isinstance(kind, str) and kind not in JOB_KINDS:
        raise SpecInvalid(
            [
                Problem(
                    loc=["kind"],
                    msg=f"unknown kind {kind!r}; use one of {', '.join(JOB_KINDS)}",
                    type="literal_error",
                )
            ]
        )
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecInvalid(problems_from_validation_error(error)) from None
    model, problems = resolve_model(spec.model)
    context = Context(spec=spec, resolved_model=model)
    problems += [problem for rule in RULES for problem in rule(context)]
    if paths is not None:
        problems += job_path_problems(spec, paths)
    if problems:
        raise SpecInvalid(problems)
    assert model is not None
    warnings = [warning for rule in WARNINGS for warning in rule(context)]
    for warning in warnings:
        warning.type = "warning"
    return ValidatedSpec(spec=spec, model=model, warnings=warnings, derived=_derive(context))
