"""The manifests a spec would launch, for a person to read before submitting (`pretrainctl render`)."""

from __future__ import annotations

from typing import Any

import yaml

from service.admission import OverMemory, admit
from service.settings import Settings
from service.spec import parse_spec_text

# The checkpoint volume's mount path when settings leave it to the backend (see settings.py).
POD_CHECKPOINT_ROOT = "/checkpoints"
REVIEW_JOB_ID = 0
REVIEW_TOKEN = "<minted at launch>"


def render_for_review(
    spec_text: str | bytes,
    *,
    attempt: int = 0,
    resume_from: str | None = None,
    settings: Settings,
) -> str:
    """The manifests a spec would launch, as multi-document YAML (`pretrainctl render`).

    The spec is admitted as a submission is, by `admit` (SpecInvalid lists every problem);
    the job id is a placeholder 0 and the token a placeholder string, both decided only at
    launch. The manifests are the kubernetes backend's, even when `settings` are for the
    local one, and of the kind it would create with them (`settings.kubernetes_workload`: a
    PyTorchJob or a TrainJob for a pretrain job).
    """
    # Imported here: the builder's module and the backend's kinds table import this package.
    from service.controller.backends.kubernetes.kinds import kind_of, workload_kinds
    from service.controller.workload import build_workload, unsaved_attempt, unsaved_job

    settings = _as_kubernetes(settings)
    admission = admit(parse_spec_text(spec_text), over_memory=OverMemory.REFUSE, settings=settings)
    spec = admission.validated.spec
    job = unsaved_job(
        name=spec.name,
        kind=spec.kind,
        spec=spec.model_dump(mode="json"),
        derived=admission.derived_document,
        plan=admission.plan_document,
    )
    workload = build_workload(
        job, unsaved_attempt(attempt), settings, resume_from=resume_from, ingest_token=REVIEW_TOKEN
    )
    manifests = kind_of(workload, workload_kinds(settings)).render(workload, settings)
    header = (
        f"# {spec.name} attempt {attempt}: job id {REVIEW_JOB_ID} and the ingest token are "
        "placeholders, set at launch\n"
    )
    return header + yaml.dump_all(
        manifests.values(), Dumper=_ReviewDumper, sort_keys=False, allow_unicode=True
    )


def _as_kubernetes(settings: Settings) -> Settings:
    """Settings as the kubernetes backend sees them, whichever backend this process runs."""
    if settings.backend == "kubernetes":
        return settings
    update: dict[str, Any] = {"backend": "kubernetes"}
    # A checkpoint root the local backend filled in under state_dir means nothing in a pod.
    if settings.checkpoint_root == str((settings.state_dir / "checkpoints").resolve()):
        update["checkpoint_root"] = POD_CHECKPOINT_ROOT
    return settings.model_copy(update=update)


class _ReviewDumper(yaml.SafeDumper):
    """Writes multi-line strings (the trainer.json) as literal blocks, for people to read."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReviewDumper.add_representer(str, _represent_str)
