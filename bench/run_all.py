"""Run every benchmark in bench/ and write their headline figures to bench/RESULTS.md.

Each `bench/*.py` script (but this one and harness.py), in name order, runs as its own process
from the repository root with `BENCH_RESULTS` naming a file it appends its figures to
(`harness.record`, one JSON line a figure); its output is echoed as it comes. RESULTS.md gets a
header (date, machine, Python, torch), one table of every recorded figure, and notes per
script: its wall time, its figures' notes, and, for a failed one, the tail of its stderr.
Scripts that are not Python (`gpu_check.sh`) are listed as not run, with the reason.

A failed script does not stop the others; the file is written anyway and the exit status is 1.
`--only NAME` (repeatable) runs just those; `--quick` passes each script smaller sizes
(fewer rounds, requests, jobs), only flags its own argparse has, for a smoke run whose figures
are not to be quoted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
NOT_BENCHMARKS = {"harness.py", "run_all.py"}
STDERR_TAIL = 30

# Smaller sizes for --quick, per script; a flag is passed only if the script defines it.
QUICK: dict[str, list[str]] = {
    "api_submit": ["--requests", "100", "--rounds", "2"],
    "plan": ["--requests", "50"],
    "api_robustness": ["--cases", "5", "--rounds", "1", "--seconds", "3"],
    "trainer_cpu": ["--warmup", "1", "--rounds", "2", "--steps", "2"],
    "controller_scale": ["--jobs", "200", "--runs", "1", "--baseline-runs", "1"],
    "detector": ["--streams", "40", "--tuned", "20", "--per-scenario", "1", "--repeat", "1"],
    "watchdog": ["--requests", "2", "--rounds", "1", "--trials", "5"],
    "tokenizer": ["--repeat", "1", "--vocab", "32000", "--max-mb-per-channel", "1"],
    "data_prep": ["--mb", "5", "--repeat", "1"],
    "detector_trainer": ["--rounds", "1"],
    "chaos": ["--trials", "2"],
    "scrape": ["--large", "100000", "--runs", "5"],
    "data_loader": ["--rounds", "2", "--batches", "10", "--steps", "1"],
}

# Why a non-Python script in bench/ is not run here.
SKIPPED = {
    "gpu_check.sh": (
        "needs an NVIDIA GPU (an H200: bf16, CUDA torch) and wheels prepared in .whl/; "
        "run it by hand on a lent GPU machine: `bash bench/gpu_check.sh`"
    ),
}


@dataclass
class ScriptRun:
    name: str  # file name, e.g. "plan.py"
    command: list[str]
    returncode: int = 0
    wall_s: float = 0.0
    stderr_tail: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --------------------------------------------------------------------------- discovery


def discover(bench_dir: Path) -> list[Path]:
    """Every benchmark script in `bench_dir`, by name."""
    return sorted(
        p for p in bench_dir.glob("*.py") if p.is_file() and p.name not in NOT_BENCHMARKS
    )


def not_run(bench_dir: Path) -> list[tuple[str, str]]:
    """(name, why) for the scripts in `bench_dir` that are not Python benchmarks."""
    out = []
    for path in sorted(bench_dir.iterdir()):
        if path.is_file() and path.suffix in {".sh", ".bash"}:
            why = SKIPPED.get(path.name, "not a Python benchmark; run it by hand")
            if path.name == "gpu_check.sh":
                gpu = "an nvidia-smi" if shutil.which("nvidia-smi") else "no NVIDIA GPU"
                why = f"{why} (this machine: {os.cpu_count()} CPUs, {gpu})"
            out.append((path.name, why))
    return out


def quick_flags(script: Path) -> list[str]:
    """The --quick flags for `script`, keeping only those its argparse defines."""
    wanted = QUICK.get(script.stem, [])
    source = script.read_text(encoding="utf-8")
    flags: list[str] = []
    i = 0
    while i < len(wanted):
        flag, values = wanted[i], []
        i += 1
        while i < len(wanted) and not wanted[i].startswith("--"):
            values.append(wanted[i])
            i += 1
        if f'"{flag}"' in source or f"'{flag}'" in source:
            flags += [flag, *values]
    return flags


# --------------------------------------------------------------------------- running


def run_script(script: Path, extra: list[str], results: Path) -> ScriptRun:
    """Run one benchmark, echoing its output live; its figures are read from `results`."""
    command = [sys.executable, "-u", str(script), *extra]
    run = ScriptRun(name=script.name, command=command)
    env = {**os.environ, "BENCH_RESULTS": str(results)}
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        bufsize=1,
    )

    def pump(stream, sink, keep: collections.deque[str] | None) -> None:
        for line in stream:
            sink.write(line)
            sink.flush()
            if keep is not None:
                keep.append(line.rstrip("\n"))

    threads = [
        threading.Thread(target=pump, args=(process.stdout, sys.stdout, None), daemon=True),
        threading.Thread(target=pump, args=(process.stderr, sys.stderr, tail), daemon=True),
    ]
    for thread in threads:
        thread.start()
    run.returncode = process.wait()
    for thread in threads:
        thread.join()
    run.wall_s = time.perf_counter() - started
    run.stderr_tail = list(tail)
    run.records = read_records(results)
    return run


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


# --------------------------------------------------------------------------- the report


def format_number(value: float | None) -> str:
    """A figure at a precision that suits its size: 201.3, 3.52, 0.0123, 12,345."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_ratio(value: float | None) -> str:
    """Ratios to two decimals; three significant digits below 0.1, one decimal from 100."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.1f}"
    if magnitude >= 0.1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


TABLE_COLUMNS = ("bench", "figure", "median", "unit", "baseline", "baseline median", "ratio")


def render_table(records: list[dict]) -> str:
    """One Markdown table row per recorded figure."""
    lines = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "| --- | --- | ---: | --- | --- | ---: | ---: |",
    ]
    for r in records:
        cells = [
            r.get("bench", ""),
            r.get("figure", ""),
            format_number(r.get("median")),
            r.get("unit", ""),
            r.get("baseline_name", "") or ("-" if r.get("baseline") is None else ""),
            format_number(r.get("baseline")),
            format_ratio(r.get("ratio")),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model or platform.processor() or 'unknown CPU'}, {platform.system()} {platform.machine()}"


def torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"


def figure_notes(records: list[dict]) -> list[str]:
    """Each distinct note once, named by the figures it is about unless it is about them all."""
    by_note: dict[str, list[str]] = {}
    for r in records:
        if r.get("note"):
            by_note.setdefault(r["note"], []).append(r.get("figure", ""))
    return [
        note if len(figures) == len(records) > 1 else f"{', '.join(figures)}: {note}"
        for note, figures in by_note.items()
    ]


def render_report(
    runs: list[ScriptRun],
    skipped: list[tuple[str, str]],
    *,
    quick: bool = False,
    only: list[str] | None = None,
    when: datetime | None = None,
) -> str:
    when = when or datetime.now(UTC)
    records = [r for run in runs for r in run.records]
    out = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`bench/run_all.py`); each benchmark measures its baseline in the "
        "same run on the same machine, and ratio = median / baseline median as the benchmark "
        "defines it. Rerun `make bench` to refresh; on a shared machine the figures are noisy.",
        "",
        f"- date: {when:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- Python {platform.python_version()}, torch {torch_version()}",
    ]
    if quick:
        out.append("- mode: `--quick` (smaller sizes: a smoke run, not figures to quote)")
    if only:
        out.append(f"- only: {', '.join(only)}")
    out += ["", render_table(records)]

    out += ["## Notes", ""]
    for run in runs:
        status = "ok" if run.ok else f"**FAILED** (exit status {run.returncode})"
        figures = f"{len(run.records)} figure{'s' if len(run.records) != 1 else ''}"
        out.append(f"- `{run.name}`: {status}, {run.wall_s:.0f} s wall, {figures}")
        if run.ok and not run.records:
            out.append("  - recorded no figures: does it call `harness.record`?")
        out += [f"  - {line}" for line in figure_notes(run.records)]
        if not run.ok:
            args = " ".join(run.command[3:])
            out.append(f"  - command: `python {run.name}{' ' + args if args else ''}`")
            out.append("  - last lines of stderr:")
            out.append("")
            out.append("    ```")
            out += [f"    {line}" for line in run.stderr_tail or ["(nothing on stderr)"]]
            out.append("    ```")
    for name, why in skipped:
        out.append(f"- `{name}`: not run here: {why}")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- main


# A section another script writes into RESULTS.md (bench/chaos.py's, from `make chaos`):
# `<!-- NAME: written by ... -->` to `<!-- /NAME -->`, kept when the table is written anew.
KEPT_SECTION = re.compile(r"<!-- (\w+): written by .*?-->.*?<!-- /\1 -->", re.DOTALL)


def kept_sections(old: str) -> str:
    """The sections of `old` other scripts wrote, to carry into the new file."""
    return "".join("\n" + match.group(0) + "\n" for match in KEPT_SECTION.finditer(old))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this script (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="default: RESULTS.md in the bench directory")
    args = parser.parse_args(argv)
    bench_dir = args.bench_dir.resolve()
    output = args.output or bench_dir / "RESULTS.md"

    scripts = discover(bench_dir)
    skipped = not_run(bench_dir)
    if args.only:
        wanted = {Path(name).stem for name in args.only}
        known = [s.stem for s in scripts] + [Path(name).stem for name, _ in skipped]
        unknown = wanted - set(known)
        if unknown:
            names = ", ".join(known)
            parser.error(f"no benchmark named {', '.join(sorted(unknown))} (there are: {names})")
        scripts = [s for s in scripts if s.stem in wanted]
        skipped = [(name, why) for name, why in skipped if Path(name).stem in wanted]

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        for script in scripts:
            extra = quick_flags(script) if args.quick else []
            print(f"== {script.name} {' '.join(extra)}".rstrip(), flush=True)
            run = run_script(script, extra, Path(tmp) / f"{script.stem}.jsonl")
            verdict = "ok" if run.ok else f"FAILED with exit status {run.returncode}"
            print(f"== {script.name}: {verdict} in {run.wall_s:.0f} s", flush=True)
            runs.append(run)
    for name, why in skipped:
        print(f"== {name}: not run here: {why}", flush=True)

    kept = kept_sections(output.read_text(encoding="utf-8") if output.exists() else "")
    output.write_text(
        render_report(runs, skipped, quick=args.quick, only=args.only) + kept, encoding="utf-8"
    )
    failed = [run.name for run in runs if not run.ok]
    print(f"wrote {output}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
