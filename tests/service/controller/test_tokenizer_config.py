"""A tokenizer job's library config: paths resolved where the settings say, unset options left out."""

from __future__ import annotations

from typing import Any

import pytest

from service.controller.tokenizer_config import render_tokenizer_config, tokenizer_output_dir
from service.controller.workload import unsaved_job
from service.db.models import Job
from service.spec import EMBEDDED_CORPORA, TokenizerOptionsSpec, validate_spec
from tests.service.controller.test_trainer_config import make_settings
from trainer.tokenizer.job import COMMON_KEYS, EXPAND_KEYS, TRAIN_KEYS


def tokenizer_spec(**changes: Any) -> dict[str, Any]:
    spec = {
        "name": "zh-tokenizer",
        "kind": "tokenizer",
        "mode": "train",
        "corpora": ["embedded:zh", "web/zh.jsonl", "/mnt/extra/zh"],
        "options": {"vocab_size": 32000},
    }
    return spec | changes


def render(raw: dict[str, Any], job_id: int = 42) -> dict[str, Any]:
    return render_tokenizer_config(stored(raw, job_id=job_id), make_settings())


def stored(raw: dict[str, Any], *, job_id: int = 42) -> Job:
    """The job row submit stores for a tokenizer spec (not added to a session)."""
    spec = validate_spec(raw).spec
    document = spec.model_dump(mode="json")
    return unsaved_job(
        name=spec.name, kind=spec.kind, spec=document, derived={}, plan=None, job_id=job_id
    )


def test_corpora_stay_embedded_absolute_or_go_under_the_data_root():
    config = render(tokenizer_spec())
    assert config["corpora"] == ["embedded:zh", "/data/web/zh.jsonl", "/mnt/extra/zh"]


def test_the_output_is_the_jobs_folder_on_the_checkpoint_volume():
    config = render(tokenizer_spec(), job_id=7)
    assert config["out"] == "/checkpoints/zh-tokenizer-7/tokenizer"
    assert config["out"] == tokenizer_output_dir(7, "zh-tokenizer", make_settings())


def test_unset_options_are_left_to_the_librarys_defaults():
    config = render(tokenizer_spec())
    assert config == {
        "mode": "train",
        "corpora": config["corpora"],
        "out": config["out"],
        "vocab_size": 32000,
    }


def test_an_expand_base_resolves_under_the_checkpoint_root_and_report_corpora_under_data():
    config = render(
        tokenizer_spec(
            mode="expand",
            options={
                "base": "zh-tokenizer-3/tokenizer",
                "add": 2000,
                "report_corpora": {"zh": "eval/zh.jsonl", "code": "embedded:code"},
            },
        )
    )
    assert config["base"] == "/checkpoints/zh-tokenizer-3/tokenizer"
    assert config["report_corpora"] == {"zh": "/data/eval/zh.jsonl", "code": "embedded:code"}


def test_a_rendered_config_holds_only_keys_the_library_accepts():
    train = render(tokenizer_spec(options={"vocab_size": 4000, "spare": 10, "probes": ["x"]}))
    assert set(train) <= COMMON_KEYS | TRAIN_KEYS
    expand = render(tokenizer_spec(mode="expand", options={"base": "/tok", "add": 10}))
    assert set(expand) <= COMMON_KEYS | EXPAND_KEYS


def test_the_spec_options_are_the_librarys_options():
    library = (COMMON_KEYS | TRAIN_KEYS | EXPAND_KEYS) - {"mode", "corpora", "out"}
    assert set(TokenizerOptionsSpec.model_fields) == library


def test_the_spec_knows_the_trainers_embedded_corpora():
    from trainer.data import EMBEDDED_CORPORA as TRAINER_EMBEDDED

    assert tuple(EMBEDDED_CORPORA) == tuple(TRAINER_EMBEDDED)


def test_a_stored_job_without_corpora_is_an_error_not_a_crash():
    job = unsaved_job(
        name="x", kind="tokenizer", spec={"name": "x", "kind": "tokenizer", "mode": "train"},
        derived={}, plan=None,
    )
    with pytest.raises(ValueError, match="corpora"):
        render_tokenizer_config(job, make_settings())
