"""Kueue on the manifests of both kinds: the queue and priority labels, and a workload created
suspended when a queue is named, so that Kueue admits it by unsuspending it."""

from __future__ import annotations

import dataclasses

import jsonschema
import pytest

from service.controller.manifests import (
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    render_manifests,
    render_trainjob_manifests,
)
from tests.service.controller.test_manifests import (
    CASES,
    pytorchjob_schema,
    templates,
    workload_for,
)
from tests.service.controller.test_trainer_config import make_settings
from tests.service.controller.test_trainjob_manifests import trainjob_schema


def pytorchjob(workload, settings):
    job = render_manifests(workload, settings)["pytorchjob"]
    jsonschema.Draft7Validator(pytorchjob_schema()).validate(job)
    return job, job["spec"]["runPolicy"].get("suspend")


def trainjob(workload, settings):
    job = render_trainjob_manifests(workload, settings)["trainjob"]
    jsonschema.Draft7Validator(trainjob_schema()).validate(job)
    return job, job["spec"].get("suspend")


RENDERERS = {"pytorchjob": pytorchjob, "trainjob": trainjob}


def tiny(**fields):
    make_raw, _ = CASES["tiny-cpu"]
    return dataclasses.replace(workload_for(make_raw()), **fields)


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_a_queued_workload_carries_its_queue_and_priority_and_starts_suspended(kind):
    job, suspend = RENDERERS[kind](tiny(queue="team-a", priority="urgent"), make_settings())
    labels = job["metadata"]["labels"]
    assert (labels[KUEUE_QUEUE_LABEL], labels[KUEUE_PRIORITY_LABEL]) == ("team-a", "urgent")
    assert suspend is True


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_without_a_queue_nothing_is_suspended_or_labelled_for_kueue(kind):
    job, suspend = RENDERERS[kind](tiny(), make_settings())
    assert suspend is None
    assert not {KUEUE_QUEUE_LABEL, KUEUE_PRIORITY_LABEL} & set(job["metadata"]["labels"])


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_the_jobs_own_queue_wins_over_the_installs(kind):
    settings = make_settings(scheduling_queue="everyone")
    job, suspend = RENDERERS[kind](tiny(queue="team-a"), settings)
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a" and suspend is True
    job, suspend = RENDERERS[kind](tiny(), settings)
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "everyone" and suspend is True


def test_the_kueue_priority_is_not_the_pods_priority_class():
    """Kueue's label names a WorkloadPriorityClass; a pod's priorityClassName a PriorityClass."""
    job, _ = pytorchjob(tiny(priority="urgent"), make_settings(priority_class="training-high"))
    for template in templates(job).values():
        assert template["spec"]["priorityClassName"] == "training-high"


def test_the_pods_grace_period_is_the_workloads():
    job, _ = pytorchjob(tiny(termination_grace_s=1234), make_settings())
    for template in templates(job).values():
        assert template["spec"]["terminationGracePeriodSeconds"] == 1234
