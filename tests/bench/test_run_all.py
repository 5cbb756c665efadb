"""bench/run_all.py and harness.record, without running a real benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


harness = _load("harness")
run_all = _load("run_all")


def _strict_json(line: str) -> dict:
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


# --------------------------------------------------------------------------- record


def test_record_does_nothing_without_bench_results(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    harness.record("plan", "POST /v1/plan ms", 3.5, 0.75, 4.7)
    assert list(tmp_path.iterdir()) == []


def test_record_appends_json_lines(monkeypatch, tmp_path):
    out = tmp_path / "results.jsonl"
    monkeypatch.setenv("BENCH_RESULTS", str(out))
    harness.record(
        "api_submit", "submissions/s", 201.3, 641.0, 0.314, unit="req/s",
        baseline_name="GET /healthz same server", note="16 clients",
    )  # fmt: skip
    harness.record("plan", "plan_job() in-process ms", 1.25, float("nan"), float("inf"), unit="ms")
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    first, second = (_strict_json(line) for line in lines)
    assert first == {
        "bench": "api_submit",
        "figure": "submissions/s",
        "median": 201.3,
        "unit": "req/s",
        "baseline": 641.0,
        "baseline_name": "GET /healthz same server",
        "ratio": 0.314,
        "note": "16 clients",
    }
    assert second["baseline"] is None and second["ratio"] is None
    assert second["median"] == 1.25 and second["baseline_name"] == "" and second["note"] == ""


# --------------------------------------------------------------------------- the table


RECORDS = [
    {
        "bench": "api_submit", "figure": "submissions/s", "median": 201.34, "unit": "req/s",
        "baseline": 641.0, "baseline_name": "GET /healthz same server", "ratio": 0.31412,
        "note": "",
    },
    {
        "bench": "plan", "figure": "plan_job() in-process ms", "median": 1.2345, "unit": "ms",
        "baseline": None, "baseline_name": "", "ratio": None, "note": "p99 2 ms",
    },
    {
        "bench": "watchdog", "figure": "ingest points/s", "median": 41234.6, "unit": "points/s",
        "baseline": 812345.0, "baseline_name": "COPY into the same table", "ratio": 0.05076,
        "note": "",
    },
    {
        "bench": "controller_scale", "figure": "idle reconciles/s | x", "median": 0.0,
        "unit": "reconciles/s", "baseline": 0.0, "baseline_name": "N/10 jobs (100)",
        "ratio": None, "note": "",
    },
    {
        "bench": "plan", "figure": "POST /v1/plan ms", "median": 3.5, "unit": "ms",
        "baseline": 0.0251, "baseline_name": "GET /healthz same server", "ratio": 139.44,
        "note": "",
    },
]  # fmt: skip


def _rows(table: str) -> list[list[str]]:
    rows = []
    for line in table.strip().splitlines():
        assert line.startswith("| ") and line.endswith(" |"), line
        cells = [c.strip() for c in line[2:-2].replace("\\|", "\0").split(" | ")]
        rows.append([c.replace("\0", "|") for c in cells])
    return rows


def test_table_columns_and_formatting():
    rows = _rows(run_all.render_table(RECORDS))
    assert rows[0] == [
        "bench", "figure", "median", "unit", "baseline", "baseline median", "ratio",
    ]  # fmt: skip
    assert all(set(c) <= set("-: ") for c in rows[1])
    body = rows[2:]
    assert len(body) == len(RECORDS) and all(len(r) == 7 for r in rows)
    assert body[0] == [
        "api_submit", "submissions/s", "201.3", "req/s", "GET /healthz same server", "641.0",
        "0.31",
    ]  # fmt: skip
    assert body[1] == ["plan", "plan_job() in-process ms", "1.23", "ms", "-", "-", "-"]
    assert body[2][2] == "41,235" and body[2][5] == "812,345" and body[2][6] == "0.0508"
    assert body[3][1] == "idle reconciles/s | x"  # an escaped pipe stays in its cell
    assert body[3][2] == "0.00" and body[3][6] == "-"
    assert body[4][5] == "0.0251" and body[4][6] == "139.4"


def test_ratio_formatting():
    assert run_all.format_ratio(None) == "-"
    assert run_all.format_ratio(0.964) == "0.96"
    assert run_all.format_ratio(4.666) == "4.67"
    assert run_all.format_ratio(0.0123) == "0.0123"
    assert run_all.format_ratio(1234.5) == "1,234.5"


def test_report_header_and_notes():
    ok = run_all.ScriptRun("plan.py", ["python", "-u", "plan.py"], wall_s=12.4, records=RECORDS[1:2])
    report = run_all.render_report(
        [ok],
        [("gpu_check.sh", "needs an NVIDIA GPU")],
        when=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    )
    assert "- date: 2026-01-02 03:04 UTC" in report
    assert f"- machine: {run_all.machine()}" in report
    assert "torch " in report and "Python " in report
    assert "| bench | figure | median | unit | baseline | baseline median | ratio |" in report
    assert "- `plan.py`: ok, 12 s wall, 1 figure" in report
    assert "  - plan_job() in-process ms: p99 2 ms" in report
    assert "- `gpu_check.sh`: not run here: needs an NVIDIA GPU" in report


def test_figure_notes_shared_and_own():
    rows = [
        {"figure": "a", "note": "16 clients"},
        {"figure": "b", "note": "16 clients"},
        {"figure": "c", "note": "p99 3 ms"},
        {"figure": "d", "note": ""},
    ]
    assert run_all.figure_notes(rows) == ["a, b: 16 clients", "c: p99 3 ms"]
    assert run_all.figure_notes(rows[:2]) == ["16 clients"]  # about every figure
    assert run_all.figure_notes(rows[2:3]) == ["c: p99 3 ms"]


# --------------------------------------------------------------------------- discovery


def test_discovers_the_real_benchmarks():
    names = [p.name for p in run_all.discover(BENCH)]
    assert names == sorted(names)
    assert "harness.py" not in names and "run_all.py" not in names
    for expected in (
        "api_submit.py", "plan.py", "trainer_cpu.py", "controller_scale.py", "watchdog.py",
        "detector_trainer.py",
    ):  # fmt: skip
        assert expected in names
    skipped = dict(run_all.not_run(BENCH))
    assert "gpu_check.sh" in skipped and "GPU" in skipped["gpu_check.sh"]


def test_discovers_a_new_script(tmp_path):
    for name in ("harness.py", "run_all.py", "zeta.py", "alpha.py", "notes.txt", "gpu_check.sh"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.py").write_text("")
    assert [p.name for p in run_all.discover(tmp_path)] == ["alpha.py", "zeta.py"]
    assert [name for name, _ in run_all.not_run(tmp_path)] == ["gpu_check.sh"]


def test_quick_flags_only_those_a_script_defines(tmp_path):
    script = tmp_path / "plan.py"
    script.write_text('parser.add_argument("--requests", type=int, default=200)\n')
    assert run_all.quick_flags(script) == ["--requests", "50"]
    script = tmp_path / "api_submit.py"
    script.write_text('parser.add_argument("--rounds", type=int, default=5)\n')
    assert run_all.quick_flags(script) == ["--rounds", "2"]
    script = tmp_path / "brand_new.py"
    script.write_text('parser.add_argument("--rounds", type=int, default=5)\n')
    assert run_all.quick_flags(script) == []
    for real in run_all.discover(BENCH):  # every quick flag exists in its script
        flags = [f for f in run_all.quick_flags(real) if f.startswith("--")]
        assert flags == [f for f in run_all.QUICK.get(real.stem, []) if f.startswith("--")]


def test_every_benchmark_records_its_figures():
    """A benchmark that only prints would silently drop out of bench/RESULTS.md."""
    silent = [
        script.name
        for script in run_all.discover(BENCH)
        if "record(" not in script.read_text(encoding="utf-8")
    ]
    assert not silent, f"never call harness.record: {', '.join(silent)}"


# --------------------------------------------------------------------------- a run


def _fake_bench(tmp_path: Path) -> Path:
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "harness.py").write_text("raise SystemExit('harness is not a benchmark')\n")
    (bench / "run_all.py").write_text("raise SystemExit('run_all must not run itself')\n")
    (bench / "good.py").write_text(
        textwrap.dedent(
            f"""
            import sys

            sys.path.insert(0, {str(BENCH)!r})  # the real harness
            from harness import record

            print("good: figure")
            record("good", "things/s", 120.0, 100.0, 1.2, unit="things/s",
                   baseline_name="doing nothing", note="tiny")
            """
        )
    )
    (bench / "bad.py").write_text(
        textwrap.dedent(
            """
            import sys

            print("bad: about to fail")
            print("something broke: the database is gone", file=sys.stderr)
            sys.exit(1)
            """
        )
    )
    (bench / "gpu_check.sh").write_text("exit 99\n")
    return bench


def test_a_failing_script_fails_the_run_after_writing_the_report(tmp_path, capsys):
    bench = _fake_bench(tmp_path)
    assert run_all.main(["--bench-dir", str(bench)]) == 1
    out = capsys.readouterr()
    assert "good: figure" in out.out and "bad: about to fail" in out.out  # echoed
    assert "the database is gone" in out.err
    report = (bench / "RESULTS.md").read_text()
    rows = [r for r in report.splitlines() if r.startswith("| good ")]
    assert rows == ["| good | things/s | 120.0 | things/s | doing nothing | 100.0 | 1.20 |"]
    assert "- `bad.py`: **FAILED** (exit status 1)" in report
    assert "something broke: the database is gone" in report
    assert "- `good.py`: ok" in report and "  - things/s: tiny" in report
    assert "- `gpu_check.sh`: not run here:" in report


def test_only_runs_the_named_scripts(tmp_path, capsys):
    bench = _fake_bench(tmp_path)
    output = tmp_path / "out.md"
    assert run_all.main(["--bench-dir", str(bench), "--only", "good", "--output", str(output)]) == 0
    report = output.read_text()
    assert "| good | things/s |" in report and "bad.py" not in report
    assert "- only: good" in report
    with pytest.raises(SystemExit):
        run_all.main(["--bench-dir", str(bench), "--only", "missing"])


def test_a_section_another_script_wrote_survives_a_new_table(tmp_path):
    bench = _fake_bench(tmp_path)
    output = tmp_path / "out.md"
    section = "<!-- chaos: written by bench/chaos.py -->\n## Chaos\n37 trials, 0 violations\n<!-- /chaos -->"
    output.write_text(f"# old table\n| stale | row |\n\n{section}\n")
    assert run_all.main(["--bench-dir", str(bench), "--only", "good", "--output", str(output)]) == 0
    report = output.read_text()
    assert "| stale | row |" not in report and "| good | things/s |" in report
    assert report.count(section) == 1
    run_all.main(["--bench-dir", str(bench), "--only", "good", "--output", str(output)])
    assert output.read_text().count(section) == 1  # carried, not piled up
