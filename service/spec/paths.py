"""Where a spec may point: a path under a root the install allows, or a supported scheme.

Every path a job reads or writes (data sources, corpora, report corpora, the tokenizer,
checkpoint storage, an expand's base, a data job's inputs) is checked here, because the service and its trainer
pods read what these name and show what they read to every viewer: `/etc/passwd` as a
corpus became a vocabulary holding `root`. A path is accepted when it

- uses a scheme of `PathPolicy.schemes` (`s3://`, `embedded://`), never `file://`; or
- is a local path without `..` segments that, made absolute (a relative path lies under the
  field's base: the data root, or the checkpoint root for checkpoint paths), lies under one of
  `PathPolicy.roots`, and still does once this machine's symlinks are resolved.

The roots come from the settings (`Settings.allowed_path_roots`), so the rule runs where a
policy is known: `admission.admit`, which every way in goes through.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.spec.data import EMBEDDED_CORPUS_PREFIXES
from service.spec.problems import Problem, problem

if TYPE_CHECKING:
    from service.spec.data_job import DataJobSpec
    from service.spec.job import JobSpec
    from service.spec.tokenizer import TokenizerJobSpec

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")


@dataclass(frozen=True)
class PathPolicy:
    """The roots local paths must lie under, the schemes accepted instead, and the bases
    relative paths are joined to (both must lie under a root to be of use)."""

    roots: tuple[str, ...]
    schemes: tuple[str, ...]
    data_root: str
    checkpoint_root: str

    def problem(self, path: str, *, base: str) -> str | None:
        """Why `path` (relative ones under `base`) may not be used; None if it may."""
        if match := SCHEME.match(path):
            return self._scheme_problem(path, match)
        if ".." in path.split("/"):
            return f"{path!r} has a '..' segment; name the path under {self._roots_text()}"
        absolute = posixpath.normpath(posixpath.join(base, path))
        if not _under_any(absolute, self.roots):
            return f"{path!r} is outside the allowed roots; name a path under {self._roots_text()}"
        resolved = os.path.realpath(absolute)
        if not _under_any(resolved, tuple(os.path.realpath(root) for root in self.roots)):
            return (
                f"{path!r} resolves to {resolved!r} through a symlink, outside the allowed roots "
                f"({self._roots_text()})"
            )
        return None

    def _scheme_problem(self, path: str, match: re.Match[str]) -> str | None:
        scheme = f"{match.group(1).lower()}://"
        if match.group(2) and scheme in self.schemes:
            return None
        if scheme == "file://":
            return f"{path!r}: file:// URLs are not accepted; name a path under {self._roots_text()}"
        allowed = ", ".join(self.schemes) or "none"
        return (
            f"{path!r} uses an unsupported scheme (allowed: {allowed}); or name a path under "
            f"{self._roots_text()}"
        )

    def _roots_text(self) -> str:
        return ", ".join(self.roots)


def _under_any(path: str, roots: tuple[str, ...]) -> bool:
    return any(
        posixpath.commonpath([path, root]) == root for root in map(posixpath.normpath, roots)
    )


def job_path_problems(spec: JobSpec, policy: PathPolicy) -> Iterator[Problem]:
    """The pretraining spec's data sources, tokenizer, checkpoint storage and benchmark files."""
    for i, stage in enumerate(spec.stages):
        for j, source in enumerate(stage.data):
            yield from _checked(["stages", i, "data", j, "path"], source.path, policy.data_root, policy)
    if spec.tokenizer is not None:
        yield from _checked(["tokenizer", "path"], spec.tokenizer.path, policy.data_root, policy)
    if spec.checkpoint.storage is not None:
        storage = spec.checkpoint.storage
        yield from _checked(["checkpoint", "storage"], storage, policy.checkpoint_root, policy)
    for index, benchmark in enumerate(spec.evaluation.benchmarks):
        loc: list[str | int] = ["evaluation", "benchmarks", index, "path"]
        yield from _checked(loc, benchmark.path, policy.data_root, policy)


def tokenizer_path_problems(spec: TokenizerJobSpec, policy: PathPolicy) -> Iterator[Problem]:
    """The tokenizer job's corpora, report corpora and the base it expands (its output is the
    service's own choice, `<checkpoint_root>/<name>-<id>/tokenizer`)."""
    for index, corpus in enumerate(spec.corpora):
        yield from _checked_corpus(["corpora", index], corpus, policy)
    for name, corpus in (spec.options.report_corpora or {}).items():
        yield from _checked_corpus(["options", "report_corpora", name], corpus, policy)
    if spec.options.base is not None:
        yield from _checked(["options", "base"], spec.options.base, policy.checkpoint_root, policy)


def data_job_path_problems(spec: DataJobSpec, policy: PathPolicy) -> Iterator[Problem]:
    """The data job's inputs and tokenizer (its output is the service's own choice,
    `<checkpoint_root>/<name>-<id>/data/<output>`)."""
    for index, source in enumerate(spec.inputs):
        yield from _checked_corpus(["inputs", index], source, policy)
    if spec.tokenizer != "byte":
        yield from _checked(["tokenizer"], spec.tokenizer, policy.checkpoint_root, policy)


def _checked_corpus(loc: list[str | int], corpus: str, policy: PathPolicy) -> Iterator[Problem]:
    # `embedded:zh` is the tokenizer library's own spelling; its names are checked elsewhere.
    if not corpus.startswith(EMBEDDED_CORPUS_PREFIXES):
        yield from _checked(loc, corpus, policy.data_root, policy)


def _checked(loc: list[str | int], path: str, base: str, policy: PathPolicy) -> Iterator[Problem]:
    if (reason := policy.problem(path, base=base)) is not None:
        yield problem(loc, reason)
