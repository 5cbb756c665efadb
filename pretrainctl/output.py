"""How `pretrainctl` prints: JSON for `--json`, lines for people, refusals on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from pretrainctl.client import ApiError


def print_data(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        human(data)


def exit_on_api_error(exc: ApiError) -> None:
    """Print what the API refused, one problem a line, and exit 2 for a 422, else 1."""
    lines = exc.lines()
    click.echo(f"error ({exc.status_code}): {lines[0] if len(lines) == 1 else 'the spec was refused:'}", err=True)
    if len(lines) > 1:
        for line in lines:
            click.echo(f"  - {line}", err=True)
    sys.exit(2 if exc.status_code == 422 else 1)


def exit_refused(problems: list[tuple[str, str]]) -> None:
    """Print every (location, message) of a refused spec, one per line, and exit 2 (as a 422)."""
    click.echo("error: the spec was refused:", err=True)
    for loc, msg in problems:
        click.echo(f"  - {loc or 'body'}: {msg}", err=True)
    sys.exit(2)


def show_plan(plan: dict[str, Any]) -> None:
    params, memory, compute, advice = plan["params"], plan["memory"], plan["compute"], plan["advice"]
    click.echo(f"parameters   {params['total']:,} total, {params['non_embedding']:,} non-embedding, {params['active']:,} active")
    click.echo(f"vocabulary   {plan['vocab']['padded']:,} padded, {plan['vocab']['spare']:,} spare rows")
    verdict = "fits" if memory["fits"] else "DOES NOT FIT"
    click.echo(f"memory/GPU   {memory['per_gpu_gib']:.1f} GiB of {memory['capacity_gib']:.0f} GiB ({memory['utilisation']:.0%}): {verdict}")
    for part, gib in memory["breakdown"].items():
        if isinstance(gib, int | float):
            click.echo(f"  {part:<22} {gib:>9.2f} GiB")
    click.echo(f"compute      {compute['flops']:.3e} FLOPs (6ND {compute['flops_6nd']:.3e}), {compute['gpu_hours']:,.0f} GPU-hours, {compute['days']:.1f} days at MFU {compute['mfu']:.0%}")
    for stage in plan["stages"]:
        click.echo(f"stage        {stage['name']}: {stage['train_iters']:,} iters ({stage['warmup_iters']:,} warmup) at seq {stage['seq_length']:,}")
    show_data_plan(plan.get("data"))
    if checkpoint := plan.get("checkpoint"):
        click.echo(f"checkpoint   {checkpoint['size_gib']:.1f} GiB ({checkpoint['per_node_gib']:.1f} GiB a node at {checkpoint['write_gib_per_s_per_node']:g} GiB/s: {checkpoint['write_s']:.0f} s); grace period after SIGTERM {checkpoint['termination_grace_s']} s")
    click.echo(f"advice       critical batch {advice['critical_batch_tokens']:,.0f} tokens vs {advice['batch_tokens']:,} in the spec; compute-optimal {advice['compute_optimal_tokens']:.3e} tokens")
    show_scaling(plan.get("scaling"))
    inverse = plan.get("inverse") or {}
    if budget := inverse.get("tokens_for_budget"):
        click.echo(f"inverse      {budget['gpus']:,} GPUs × {budget['days']:g} days at MFU {budget['mfu']:.0%} see {budget['tokens']:.3e} tokens")
    if deadline := inverse.get("gpus_for_deadline"):
        click.echo(f"inverse      {deadline['token_budget']:.3e} tokens in {deadline['deadline_days']:g} days need {deadline['gpus']:,} GPUs ({deadline['nodes']:,} nodes)")
    for warning in plan.get("spec_warnings", []):
        click.echo(f"warning      {'.'.join(map(str, warning['loc']))}: {warning['msg']}")
    for warning in plan["warnings"]:
        click.echo(f"warning      {warning}")
    for problem in plan["problems"]:
        click.echo(f"REFUSED      {'.'.join(map(str, problem['loc']))}: {problem['msg']}")


def show_scaling(scaling: dict[str, Any] | None) -> None:
    """What the install's saved scaling law predicts for the spec's budget, beside the 6ND figures."""
    if scaling is None:
        click.echo("scaling      no law fitted (pretrainctl scaling fit RUNS.csv --save)")
        return
    ci = scaling["optimal_tokens_ci95"]
    band = f" [{ci[0]:.3e}, {ci[1]:.3e}]" if ci else ""
    click.echo(
        f"scaling      law {scaling['fit_id']}: C = 6ND {scaling['flops']:.3e} FLOPs → N*(C) {scaling['optimal_tokens']:.3e} tokens{band} "
        f"on {scaling['optimal_params']:.3e} params; the spec trains {scaling['tokens']:.3e} ({scaling['tokens_vs_optimal']:.2f}× optimal)"
    )
    line = f"             expected final loss {scaling['expected_loss']:.4f} ({scaling['optimal_loss']:.4f} at the optimum)"
    if scaling.get("expected_accuracy") is not None:
        line += f"; benchmark accuracy {scaling['expected_accuracy']:.3f} (NLL {scaling['expected_nll']:.4f})"
    click.echo(line)
    for note in scaling["notes"]:
        click.echo(f"             {note}")


def show_data_plan(data: dict[str, Any] | None) -> None:
    """Per stage and source: tokens planned, the source's size and the epochs; then the run."""
    if not data:
        return
    trained = data.get("train_share", 1.0)
    click.echo(
        f"data         tokens planned per source, its size and the epochs of its {trained:.1%} trained on "
        f"(warns over {data['max_source_epochs']:g})"
    )
    stage_width = max(len(stage["stage"]) for stage in data["stages"])
    channel_width = max(len(",".join(total["channels"])) for total in data["sources"])
    for stage in data["stages"]:
        for source in stage["sources"]:
            planned = _tokens(source["tokens_planned"])
            click.echo(f"  {stage['stage']:<{stage_width}}  {source['channel']:<{channel_width}}  {source['weight']:>6.1%}  {planned:>7} of {_size(source)}")
    for total in data["sources"]:
        mark = "  OVER LIMIT" if total["over_limit"] else ""
        epochs = "size unknown" if total["epochs"] is None else f"{total['epochs']:.2f} epochs{mark}"
        channels = ",".join(total["channels"])
        click.echo(f"  {'run':<{stage_width}}  {channels:<{channel_width}}  {'':>6}  {_tokens(total['tokens_planned']):>7}: {epochs}  ({total['path']})")


def show_job_data(account: dict[str, Any]) -> None:
    """`pretrainctl data`: per channel, planned against consumed tokens and the two mixes."""
    at = "no tokens reported yet" if account["step"] is None else f"at step {account['step']} (attempt {account['attempt']})"
    click.echo(f"job {account['job_id']}: {_tokens(account['tokens_planned'])} tokens planned; {at}")
    click.echo(f"  {'channel':<12} {'planned':>8} {'by now':>8} {'consumed':>8} {'mix plan':>8} {'mix real':>8} {'epochs':>7}")
    for channel in account["channels"]:
        def count(value: int | None) -> str:
            return "-" if value is None else _tokens(value)

        def share(value: float | None) -> str:
            return "-" if value is None else f"{value:.1%}"

        epochs = "-" if channel["epochs_consumed"] is None else f"{channel['epochs_consumed']:.3f}"
        click.echo(
            f"  {channel['channel']:<12} {count(channel['tokens_planned']):>8} {count(channel['tokens_expected']):>8} "
            f"{count(channel['tokens_consumed']):>8} {share(channel['share_planned']):>8} {share(channel['share_consumed']):>8} {epochs:>7}"
        )


def _size(source: dict[str, Any]) -> str:
    if source["size_tokens"] is None:
        return f"? ({source['size_note']})"
    return f"{_tokens(source['size_tokens'])} ({source['size_basis']}) = {source['epochs']:.2f} epochs"


def _tokens(count: int) -> str:
    """1,234 → 1.2K, 3.4e9 → 3.4B: token counts at a glance."""
    for bound, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= bound:
            return f"{count / bound:.1f}{suffix}"
    return str(count)


def progress_line(progress: dict[str, Any]) -> str:
    """Steps done of all stages, the pace and when it should end, on one line."""
    line = f"{progress['steps_done']}/{progress['total_steps']} steps ({progress['percent']:.1f}%)"
    if progress.get("tokens_per_s") is not None:
        line += f", {progress['tokens_per_s']:,.0f} tokens/s"
    if progress.get("eta_s") is not None:
        line += f", ETA {duration(progress['eta_s'])}"
    return line


def show_goodput(goodput: dict[str, Any]) -> None:
    """`pretrainctl goodput`: where the wall time went, per category, and the plan beside it."""
    click.echo(
        f"job {goodput['job_id']} ({goodput['state']}): goodput {goodput['goodput']:.1%} of "
        f"{duration(goodput['wall_s'])} wall time"
    )
    for name, category in goodput["categories"].items():
        click.echo(f"  {name:<11} {duration(category['seconds']):>10} {category['fraction']:>7.1%}")
    if goodput["lost_steps"]:
        click.echo(f"  {goodput['lost_steps']} steps trained and thrown away")
    planned = goodput.get("planned_training_s")
    click.echo(
        f"  training   {duration(goodput['realised_training_s'])} realised"
        + (f", {duration(planned)} planned" if planned is not None else "")
    )


def duration(seconds: float) -> str:
    """4.2s, 3m12s, 5h03m, 2d04h."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours == 0:
        return f"{minutes}m{secs:02d}s"
    days, hours = divmod(hours, 24)
    return f"{hours}h{minutes:02d}m" if days == 0 else f"{days}d{hours:02d}h"
