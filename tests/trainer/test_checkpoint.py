"""Checkpoint directories on disk: atomic publish and replace, recovery after a crash, the prune contract.

The faults are injected by leaving the disk as a crash at each point would leave it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.checkpoint import (
    CorruptCheckpointError,
    prune_listed,
    publish,
    read_manifest,
    recover,
    step_dir,
    verify,
    write_manifest,
)


def sealed(directory: Path, *, step: int, attempt: int, payload: bytes = b"weights") -> Path:
    """A finished, unpublished checkpoint: files plus a manifest."""
    directory.mkdir(parents=True)
    (directory / "__0_0.distcp").write_bytes(payload)
    (directory / "sub").mkdir()
    (directory / "sub" / "common.pt").write_bytes(payload[::-1])
    write_manifest(directory, step=step, tokens=step * 512, attempt=attempt)
    return directory


def contents(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_publish_renames_a_sealed_directory_into_place(tmp_path):
    tmp = sealed(tmp_path / ".tmp-a0-step-00000004", step=4, attempt=0)
    final = step_dir(tmp_path, 4)
    publish(tmp, final)
    assert contents(tmp_path) == ["step-00000004"]
    assert verify(final).attempt == 0


def test_publishing_a_step_again_replaces_it_and_leaves_nothing_aside(tmp_path):
    final = step_dir(tmp_path, 4)
    publish(sealed(tmp_path / ".tmp-a0-step-00000004", step=4, attempt=0), final)
    publish(sealed(tmp_path / ".tmp-a1-step-00000004", step=4, attempt=1, payload=b"newer"), final)
    assert contents(tmp_path) == ["step-00000004"]
    assert verify(final).attempt == 1


def test_a_replace_interrupted_between_its_renames_gets_the_old_checkpoint_back(tmp_path):
    # The crash came after `step-4 → .old-step-4` and before `.tmp → step-4`.
    old = sealed(tmp_path / ".old-step-00000004", step=4, attempt=0)
    expected = read_manifest(old).sha256()
    sealed(tmp_path / ".tmp-a1-step-00000004", step=4, attempt=1, payload=b"newer")

    recover(tmp_path, attempt=1)

    assert contents(tmp_path) == ["step-00000004"]
    assert verify(step_dir(tmp_path, 4)).sha256() == expected


def test_a_replace_interrupted_before_its_delete_keeps_the_new_checkpoint(tmp_path):
    sealed(tmp_path / ".old-step-00000004", step=4, attempt=0)
    publish(sealed(tmp_path / ".tmp-a1-step-00000004", step=4, attempt=1), step_dir(tmp_path, 4))
    recover(tmp_path, attempt=1)
    assert contents(tmp_path) == ["step-00000004"]
    assert verify(step_dir(tmp_path, 4)).attempt == 1


def test_recovery_deletes_this_attempts_leftover_temp_dirs_only(tmp_path):
    publish(sealed(tmp_path / ".tmp-a2-step-00000002", step=2, attempt=2), step_dir(tmp_path, 2))
    (tmp_path / ".tmp-a2-step-00000004").mkdir()  # this attempt died while writing step 4
    (tmp_path / ".tmp-a2-step-00000004" / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / ".tmp-a1-step-00000006").mkdir()  # a superseded attempt may still be saving

    recover(tmp_path, attempt=2)

    assert contents(tmp_path) == [".tmp-a1-step-00000006", "step-00000002"]
    verify(step_dir(tmp_path, 2))


def test_recovery_of_a_directory_that_does_not_exist_yet_is_a_no_op(tmp_path):
    recover(tmp_path / "absent", attempt=0)
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda c: __import__("shutil").rmtree(c), "does not exist"),
        (lambda c: (c / "manifest.json").unlink(), "has no manifest.json"),
        (lambda c: (c / "__0_0.distcp").write_bytes(b"wei"), "truncated"),
        (lambda c: (c / "__0_0.distcp").write_bytes(b"weighs!"), "does not match its sha256"),
        (lambda c: (c / "stray.pt").write_bytes(b""), "unexpected files stray.pt"),
        (lambda c: (c / "manifest.json").write_text("{"), "unreadable manifest.json"),
    ],
    ids=["missing-dir", "missing-manifest", "truncated", "changed", "extra-file", "bad-manifest"],
)
def test_verify_names_the_checkpoint_and_what_is_wrong(tmp_path, damage, expected):
    checkpoint = step_dir(tmp_path, 4)
    publish(sealed(tmp_path / ".tmp", step=4, attempt=0), checkpoint)
    damage(checkpoint)
    with pytest.raises(CorruptCheckpointError, match=expected) as caught:
        verify(checkpoint)
    assert caught.value.path == str(checkpoint) and str(checkpoint) in str(caught.value)


# --- the service's prune list ---------------------------------------------------------------------


def published(tmp_path: Path, step: int, attempt: int, payload: bytes = b"weights") -> tuple[Path, str]:
    final = step_dir(tmp_path, step)
    publish(sealed(tmp_path / f".tmp-a{attempt}-{final.name}", step=step, attempt=attempt, payload=payload), final)
    return final, read_manifest(final).sha256()


def entry(path: Path, sha: str, *, step: int = 0, attempt: int = 0) -> dict:
    return {"path": str(path), "step": step, "attempt": attempt, "manifest_sha256": sha}


def test_a_listed_checkpoint_is_deleted_only_while_its_manifest_has_the_listed_sha(tmp_path):
    doomed, doomed_sha = published(tmp_path, 6, attempt=0)
    replaced, old_sha = published(tmp_path, 8, attempt=0)
    replaced, _ = published(tmp_path, 8, attempt=1, payload=b"newer")  # a newer one at the same path
    kept, _ = published(tmp_path, 4, attempt=0)

    deleted = prune_listed(
        [
            entry(doomed, doomed_sha, step=6),
            entry(replaced, old_sha, step=8),
            entry(tmp_path / "step-00000010", "0" * 64, step=10),  # already gone
        ],
        attempt=1,
    )

    assert deleted == [doomed]
    assert contents(tmp_path) == ["step-00000004", "step-00000008"]
    assert verify(replaced).attempt == 1 and verify(kept).step == 4


def test_a_prune_entry_that_is_not_a_checkpoint_directory_is_ignored(tmp_path):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "manifest.json").write_text(json.dumps({"step": 0, "tokens": 0, "attempt": 0, "files": {}}))
    sha = read_manifest(precious).sha256()
    assert prune_listed([entry(precious, sha), {"path": str(precious)}, "junk"], attempt=0) == []
    assert precious.is_dir()


def test_a_delete_cut_short_earlier_does_not_block_the_next_one(tmp_path):
    doomed, sha = published(tmp_path, 6, attempt=0)
    leftover = tmp_path / ".tmp-a1-deleted-step-00000006"  # a crash mid-rmtree last time
    leftover.mkdir()
    (leftover / "__0_0.distcp").write_bytes(b"half")
    assert prune_listed([entry(doomed, sha, step=6)], attempt=1) == [doomed]
    assert contents(tmp_path) == []
