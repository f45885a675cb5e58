"""Training curves and reliability diagrams as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

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
