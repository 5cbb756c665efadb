"""The trainer reads its own counters back as plain data: a checkpoint directory is input, and a
pickle in it that would run code is refused by name before anything of it is built."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    TRAINER_STATE,
    CorruptCheckpointError,
    load_trainer_state,
    verify,
    write_manifest,
)
from trainer.config import TrainConfig
from trainer.step_guard import SkipReason, StepGuard, Verdict


class Payload:
    """What a writer of the checkpoint volume could leave: unpickling it opens (creates) a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def sealed_with(directory: Path, state: object) -> Path:
    """A checkpoint whose trainer state is `state`, sealed by a matching manifest: the manifest
    only proves the files are the ones its writer meant, not that the writer was the trainer."""
    directory.mkdir()
    torch.save(state, directory / TRAINER_STATE)
    write_manifest(directory, step=10, tokens=5120, attempt=0)
    return directory


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    checkpoint = sealed_with(tmp_path / "step-00000010", {"step": 10, "evil": Payload(marker)})
    verify(checkpoint)  # its manifest checks out: the volume's writer sealed it

    # The finding: the old `weights_only=False` load ran the payload.
    torch.load(checkpoint / TRAINER_STATE, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CorruptCheckpointError) as caught:
        load_trainer_state(checkpoint)
    assert caught.value.path == str(checkpoint) and TRAINER_STATE in str(caught.value)
    assert not marker.exists()


def test_the_trainers_own_state_loads_as_plain_data(tmp_path):
    guard = StepGuard(TrainConfig(skip_grad_norm_window=8, skip_grad_norm_min_history=4))
    for step, norm in enumerate([1.0, np.float64(1.2), 0.9]):  # numpy floats, as norms may be
        guard.record(step, Verdict(SkipReason.NONE, 0.0), norm, nonfinite=False)
    state = {
        "step": 10,
        "tokens": 5120,
        "rng": torch.get_rng_state(),
        "data_seed": 1234,
        "step_guard": guard.state_dict(),
    }
    loaded = load_trainer_state(sealed_with(tmp_path / "step-00000010", state))
    assert loaded["step_guard"] == {"history": [1.0, 1.2, 0.9], "spikes_in_a_row": 0}
    assert torch.equal(loaded["rng"], state["rng"]) and loaded["step"] == 10


def test_a_trainer_state_swapped_after_sealing_fails_the_manifest_before_loading(tmp_path):
    checkpoint = sealed_with(tmp_path / "step-00000010", {"step": 10})
    torch.save({"step": 99}, checkpoint / TRAINER_STATE)
    with pytest.raises(CorruptCheckpointError, match=TRAINER_STATE):
        verify(checkpoint)


def test_a_trainer_state_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(CorruptCheckpointError, match="not a mapping"):
        load_trainer_state(sealed_with(tmp_path / "step-00000010", [1, 2, 3]))
