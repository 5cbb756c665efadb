"""`make scaling-demo`'s design, without training: the specs it submits are iso-FLOP per
budget, admitted by the real admission, and span a strictly growing family of sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrainctl import scaling_demo
from service.admission import OverMemory, admit
from service.settings import Settings


@pytest.fixture(scope="module")
def admitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each spec of the sweep's design by name, with the plan admission gave it."""
    settings = Settings(state_dir=tmp_path_factory.mktemp("state"), environment="development")
    plans: dict[str, dict] = {}

    def params_of(spec: dict) -> int:
        plan = admit(spec, over_memory=OverMemory.REFUSE, settings=settings).plan
        assert plan is not None
        plans[spec["name"]] = plan.model_dump(mode="json")
        return plan.params.total

    runs = scaling_demo.design(params_of)
    for run in runs:
        params_of(run.spec)  # submission's own admission: refuses what would not run
    return {"runs": runs, "plans": plans}


def test_the_sweep_is_at_least_three_budgets_of_at_least_three_sizes(admitted):
    runs = admitted["runs"]
    budgets = sorted({run.budget for run in runs})
    assert len(budgets) >= 3
    for budget in budgets:
        assert len({run.size.name for run in runs if run.budget == budget}) >= 3


def test_runs_of_a_budget_agree_on_flops_within_one_percent(admitted):
    for budget in {run.budget for run in admitted["runs"]}:
        flops = [run.flops for run in admitted["runs"] if run.budget == budget]
        assert max(flops) / min(flops) - 1 < 0.01, (budget, flops)


def test_flops_are_six_times_the_planned_params_and_tokens(admitted):
    for run in admitted["runs"]:
        plan = admitted["plans"][run.spec["name"]]
        assert plan["params"]["total"] == run.params
        assert plan["compute"]["tokens"] == run.tokens
        assert plan["compute"]["flops_6nd"] == pytest.approx(run.flops, rel=1e-12)


def test_sizes_grow_strictly_and_tokens_shrink_with_them(admitted):
    for budget in {run.budget for run in admitted["runs"]}:
        group = [run for run in admitted["runs"] if run.budget == budget]
        params = [run.params for run in group]
        assert params == sorted(params) and len(set(params)) == len(params)
        tokens = [run.tokens for run in group]
        assert tokens == sorted(tokens, reverse=True) and len(set(tokens)) == len(tokens)


def test_every_run_ends_on_a_held_out_evaluation(admitted):
    for run in admitted["runs"]:
        assert run.spec["eval"]["interval_steps"] == run.steps
        assert run.steps >= 100  # whole steps keep each run within 0.5% of its budget


def test_a_design_off_its_budget_is_refused():
    with pytest.raises(ValueError, match="off the budget"):
        scaling_demo.design(lambda spec: 10**9, budgets={1e13: ("xs", "s", "m")})


def test_the_runs_csv_has_the_fit_s_columns(tmp_path: Path):
    size = scaling_demo.SIZES[0]
    run = scaling_demo.SweepRun(1e11, size, 1000, 200, scaling_demo.job_spec("x", size, 200))
    done = scaling_demo.Finished(run, job_id=1, state="succeeded", loss=2.5, wall_s=1.0)
    scaling_demo.write_runs_csv(tmp_path / "runs.csv", [done])
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert lines == ["params,tokens,flops,loss", "1000,204800,1.2288e+09,2.500000"]


def test_the_summary_names_each_group_s_minimum_and_the_law_with_its_intervals():
    fit = {
        "optimal_tokens": {
            "A": 0.3,
            "alpha": 0.54,
            "ci95": {"A": [0.1, 0.9], "alpha": [0.5, 0.58]},
        },
        "groups": [
            {
                "flops": 2.5e11,
                "runs": 4,
                "optimal_tokens": 1.9e6,
                "optimal_params": 21_930,
                "min_loss": 2.02,
            },
            {
                "flops": 1e12,
                "runs": 4,
                "optimal_tokens": 2.6e6,
                "optimal_params": 64_100,
                "min_loss": 1.6,
            },
        ],
        "benchmark": None,
        "warnings": ["group at 1e+12 FLOPs: its minimum lies outside the tokens it sampled"],
    }
    lines = scaling_demo.summary_lines(fit, [], wall_s=600)
    assert lines[0] == "== 2 iso-FLOP groups:"
    assert (
        "C = 2.5e+11 FLOPs: 4 runs, optimum N* = 1,900,000 tokens (21,930 params), loss 2.0200"
        in lines[1]
    )
    assert "alpha = 0.540 (95% CI 0.500 to 0.580), A = 0.3 (95% CI 0.1 to 0.9)" in lines[3]
    assert lines[4].startswith("   warning: group at 1e+12 FLOPs")
    assert lines[-1] == "== 0 runs, fitted and plotted in 10.0 min"
