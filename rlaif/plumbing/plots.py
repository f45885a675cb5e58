"""Training curves, reliability diagrams and refusal rates as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

# Marks the PNGs rlaif writes, so a rerun may replace them and nothing else.
PNG_SOFTWARE = "rlaif"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_curves(log_history: list[dict], keys: list[str], path: str | Path, title: str) -> None:
    """One panel per metric key; train and eval (`eval_` prefix) series on the same panel."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for prefix, style in (("", "-"), ("eval_", "o--")):
            points = [(e["step"], e[prefix + key]) for e in log_history if prefix + key in e]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, style, label=(prefix or "train_").rstrip("_"))
        ax.set_title(key)
        ax.set_xlabel("step")
        if ax.lines:  # a metric this trainer did not log leaves an empty panel, no legend
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)


def plot_reliability(
    bins: list[dict],
    path: str | Path,
    title: str,
    xlabel: str = "predicted P(chosen better)",
    ylabel: str = "observed frequency",
) -> None:
    """Predicted probability (mean per bin) against the observed frequency, with counts.

    The axes span the bins' range: [0, 1] for a reward model's P(first better), [0.5, 1] for a
    judge's confidence in the response it chose.
    """
    plt = _pyplot()
    low, high = bins[0]["low"], bins[-1]["high"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([low, high], [low, high], ":", color="grey", label="perfect calibration")
    used = [b for b in bins if b["count"]]
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o-", label="model")
    for b in used:
        ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7)
    margin = 0.02 * (high - low)  # markers on the edges stay whole
    ax.set_xlim(low - margin, high + margin)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)


def plot_refusal_rates(
    panels: dict[str, list[tuple[str, dict, dict]]], path: str | Path | BinaryIO, title: str
) -> None:
    """One panel per classifier; in each, a pair of bars per policy: the harmless rate
    (refusals of unsafe prompts, higher is better) and the over-refusal rate (refusals of safe
    prompts, lower is better), with their 95% intervals as error bars.

    `panels[classifier]` lists `(label, harmless, over_refusal)`, the rates as `rlaif eval
    refusals` writes them (`rate`, `ci95`); a rate of None (no prompts) leaves its bar out.
    """
    plt = _pyplot()
    groups = max(len(bars) for bars in panels.values())
    width = max(4.5, 1.0 + 0.9 * groups)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels), 4.0), squeeze=False, sharey=True
    )
    for ax, (classifier, bars) in zip(axes[0], panels.items(), strict=True):
        x = range(len(bars))
        for offset, index, name in ((-0.2, 1, "harmless"), (0.2, 2, "over-refusal")):
            heights, below, above = zip(*(_percent_bar(bar[index]) for bar in bars), strict=True)
            positions = [i + offset for i in x]
            ax.bar(positions, heights, 0.4, yerr=[below, above], capsize=3, label=name)
        tilt = len(bars) > 3  # long file names side by side overlap
        ax.set_xticks(
            list(x),
            [bar[0] for bar in bars],
            rotation=30 if tilt else 0,
            ha="right" if tilt else "center",
            fontsize=8,
        )
        ax.set_ylim(0, 100)
        ax.set_title(f"classifier: {classifier}")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("% of prompts refused (95% CI)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)


def _percent_bar(entry: dict) -> tuple[float, float, float]:
    """A rate's bar height and its error bar below and above, in percent."""
    if entry["rate"] is None:
        return (float("nan"), 0.0, 0.0)
    rate, (low, high) = 100 * entry["rate"], entry["ci95"]
    return (rate, rate - 100 * low, 100 * high - rate)
