"""A stored job hands its spec back typed, as admission validated it, on Postgres and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from service import jobs
from service.admission import path_policy
from service.db import repo
from service.db.models import Job, Role
from service.db.session import get_sessionmaker
from service.jobspec import SPEC_VERSION, StoredSpecUnreadable
from service.planner import plan_job
from service.sources import sizes_for
from service.spec import JobSpec, TokenizerJobSpec, WatchdogSpec, validate_spec
from service.tokens import Principal

ALICE = Principal(name="alice", role=Role.SUBMITTER)


def read_back(settings, job_id: int) -> Job:
    """The job as another process reads it: a fresh session, nothing cached."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return repo.get_job(session, job_id=job_id)


def test_a_submitted_job_reads_back_as_the_models_admission_made(settings, session, tiny_spec):
    job_id = jobs.submit_job(session, raw=tiny_spec, principal=ALICE).id
    validated = validate_spec(tiny_spec)

    stored = read_back(settings, job_id)

    assert stored.spec_version == SPEC_VERSION
    assert isinstance(stored.spec, JobSpec)
    assert stored.spec == validated.spec
    assert stored.derivation.model == validated.model
    assert stored.derivation.total_train_iters == validated.derived.total_train_iters
    assert stored.memory_plan == plan_job(validated, source_sizes=sizes_for(validated.spec, path_policy(settings)))
    assert stored.memory_plan.data is not None and stored.memory_plan.data.sources[0].size_tokens is not None
    assert stored.watchdog == validated.spec.watchdog
    assert stored.spec is stored.spec  # parsed once per row


def test_a_tokenizer_job_has_no_derivation_plan_or_watchdog_of_its_own(settings, session):
    raw = {"name": "tok", "kind": "tokenizer", "mode": "train", "corpora": ["embedded:en"]}
    job_id = jobs.submit_job(session, raw=raw, principal=ALICE).id

    stored = read_back(settings, job_id)

    assert isinstance(stored.spec, TokenizerJobSpec)
    assert (stored.derivation, stored.memory_plan) == (None, None)
    assert stored.watchdog == WatchdogSpec()
    with pytest.raises(TypeError, match="tokenizer job"):
        stored.pretrain_spec  # noqa: B018


def test_a_spec_stored_before_a_field_existed_reads_with_the_models_default(settings, session, tiny_spec):
    tiny_spec["watchdog"]["max_nonfinite_steps"] = 7
    job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
    assert read_back(settings, job.id).watchdog.max_nonfinite_steps == 7
    older = dict(job.spec_document)
    older["watchdog"] = {k: v for k, v in older["watchdog"].items() if k != "max_nonfinite_steps"}
    session.execute(update(Job).where(Job.id == job.id).values(spec_document=older))
    session.commit()

    default = WatchdogSpec().max_nonfinite_steps
    assert read_back(settings, job.id).watchdog.max_nonfinite_steps == default != 7


def test_a_spec_stored_as_another_version_is_refused_not_misread(settings, session, tiny_spec):
    job = jobs.submit_job(session, raw=tiny_spec, principal=ALICE)
    session.execute(update(Job).where(Job.id == job.id).values(spec_version=SPEC_VERSION + 1))
    session.commit()

    with pytest.raises(StoredSpecUnreadable, match=f"version {SPEC_VERSION + 1}"):
        read_back(settings, job.id).spec  # noqa: B018
