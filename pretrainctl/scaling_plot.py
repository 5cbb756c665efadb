"""The scaling fit drawn into one PNG: iso-FLOP parabolas, N*(C) with its band and, with a
benchmark, its two steps. matplotlib on the Agg backend: no screen needed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def t_quantile(dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def law_band(law: dict[str, Any], flops: list[float]) -> tuple[list[float], list[float]] | None:
    """The 95% band of a power law's fitted mean at each budget; None with two points."""
    if law["dof"] < 1:
        return None
    (var_a, cov), (_, var_alpha) = law["log_covariance"]
    t = t_quantile(law["dof"])
    low, high = [], []
    for c in flops:
        x = math.log(c)
        half = t * math.sqrt(max(var_a + 2 * cov * x + var_alpha * x * x, 0.0))
        centre = math.log(law["A"]) + law["alpha"] * x
        low.append(math.exp(centre - half))
        high.append(math.exp(centre + half))
    return low, high


def draw(fit: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    benchmark = fit.get("benchmark")
    figure, axes = plt.subplots(1, 4 if benchmark else 2, figsize=(20 if benchmark else 11, 4.5))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(fit["groups"])))
    _isoflop(axes[0], fit, colours, np)
    _law(axes[1], fit, colours, np)
    if benchmark:
        _nll(axes[2], fit, benchmark, np)
        _accuracy(axes[3], fit, benchmark, np)
    from matplotlib.ticker import NullFormatter

    for ax in axes:  # decades labelled only: a sweep spans less than one, and minor labels collide
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_minor_formatter(NullFormatter())
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def _members(fit: dict[str, Any], group: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in fit["runs"] if abs(r["flops"] / group["flops"] - 1) <= 0.011]


def _isoflop(ax, fit, colours, np) -> None:
    for group, colour in zip(fit["groups"], colours, strict=True):
        runs = _members(fit, group)
        ax.scatter([r["tokens"] for r in runs], [r["loss"] for r in runs], color=colour, s=16)
        a, b, c = group["parabola"]
        low, high = group["tokens_range"]
        x = np.linspace(
            math.log(min(low, group["optimal_tokens"])),
            math.log(max(high, group["optimal_tokens"])),
            100,
        )
        ax.plot(np.exp(x), a * x * x + b * x + c, color=colour, label=f"C = {group['flops']:.2e}")
        ax.scatter(
            [group["optimal_tokens"]],
            [group["min_loss"]],
            color=colour,
            marker="*",
            s=120,
            edgecolor="black",
        )
    ax.set(
        xscale="log",
        xlabel="tokens",
        ylabel="held-out loss",
        title="iso-FLOP groups: parabolas and minima",
    )
    ax.legend(fontsize=7)


def _law(ax, fit, colours, np) -> None:
    law = fit["optimal_tokens"]
    groups = fit["groups"]
    low, high = law["x_range"]
    flops = list(np.geomspace(low / 3, high * 3, 60))
    band = law_band(law, flops)
    if band is not None:
        ax.fill_between(flops, *band, color="tab:blue", alpha=0.2, label="95% band")
    ax.plot(
        flops,
        [law["A"] * c ** law["alpha"] for c in flops],
        color="tab:blue",
        label=f"N* = {law['A']:.3g}·C^{law['alpha']:.3f}",
    )
    ax.scatter(
        [g["flops"] for g in groups],
        [g["optimal_tokens"] for g in groups],
        c=colours,
        marker="*",
        s=120,
        edgecolor="black",
        zorder=3,
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="compute C (FLOPs)",
        ylabel="compute-optimal tokens N*",
        title="N*(C) = A·C^alpha",
    )
    ax.legend(fontsize=8)


def _nll(ax, fit, benchmark, np) -> None:
    law = benchmark["nll"]
    groups = [g for g in fit["groups"] if g["optimal_nll"] is not None]
    ax.scatter(
        [r["flops"] for r in fit["runs"]],
        [r["nll"] for r in fit["runs"]],
        color="grey",
        s=10,
        label="runs",
    )
    ax.scatter(
        [g["flops"] for g in groups],
        [g["optimal_nll"] for g in groups],
        color="tab:orange",
        marker="*",
        s=120,
        edgecolor="black",
        label="compute-optimal",
    )
    flops = np.geomspace(law["x_range"][0] / 3, law["x_range"][1] * 3, 60)
    ax.plot(
        flops,
        law["A"] * flops ** law["alpha"],
        color="tab:orange",
        label=f"NLL* = {law['A']:.3g}·C^{law['alpha']:.3f}",
    )
    ax.set(
        xscale="log",
        xlabel="compute C (FLOPs)",
        ylabel="NLL of the correct answer",
        title="benchmark step 1: NLL from FLOPs",
    )
    ax.legend(fontsize=8)


def _accuracy(ax, fit, benchmark, np) -> None:
    s = benchmark["accuracy"]
    ax.scatter(
        [r["nll"] for r in fit["runs"]],
        [r["accuracy"] for r in fit["runs"]],
        color="grey",
        s=10,
        label="runs",
    )
    low, high = s["nll_range"]
    nll = np.linspace(low - 0.2 * (high - low), high + 0.2 * (high - low), 200)
    curve = s["floor"] + (s["ceiling"] - s["floor"]) / (
        1 + np.exp(np.clip(s["slope"] * (nll - s["midpoint"]), -700, 700))
    )
    ax.plot(nll, curve, color="tab:green", label="sigmoid")
    ax.set(
        xlabel="NLL of the correct answer",
        ylabel="accuracy",
        title="benchmark step 2: accuracy from NLL",
    )
    ax.legend(fontsize=8)
