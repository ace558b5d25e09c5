"""Evaluation plots as PIL images (shown by ZenML, logged to MLflow)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from cxr.metrics.calibration_error import calibration_errors  # noqa: E402


def figure_image(fig: plt.Figure) -> Image.Image:
    """A matplotlib figure as a PNG-backed PIL image (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image


def roc_curves(y: np.ndarray, p: np.ndarray, label_names: list[str],
               mask: np.ndarray | None = None, max_overlaid: int = 4, title: str = "validation") -> Image.Image:
    """ROC curve per label (known labels only) with its AUC: overlaid for up to
    ``max_overlaid`` labels, else one small panel per label (14 overlaid curves are unreadable)."""
    grid = len(label_names) > max_overlaid
    cols = min(len(label_names), 5) if grid else 1
    rows = -(-len(label_names) // cols) if grid else 1
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows) if grid else (5.5, 5), squeeze=False)
    for j, name in enumerate(label_names):
        ax = axes.flat[j] if grid else axes.flat[0]
        keep = slice(None) if mask is None else mask[:, j]
        yj = (y[keep, j] > 0.5).astype(int)
        if len(np.unique(yj)) < 2:
            ax.set_title(f"{name}: one class", fontsize=8)
            continue
        fpr, tpr, _ = roc_curve(yj, p[keep, j])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {np.trapezoid(tpr, fpr):.3f})")
        if grid:
            ax.set_title(f"{name}  AUC {np.trapezoid(tpr, fpr):.3f}", fontsize=8)
    for ax in axes.flat[:len(label_names) if grid else 1]:
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01))
    for ax in axes.flat[len(label_names) if grid else 1:]:
        ax.axis("off")
    if grid:
        fig.supxlabel("false positive rate")
        fig.supylabel("true positive rate")
        fig.suptitle(f"ROC per label ({title})")
    else:
        axes.flat[0].set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({title})")
        axes.flat[0].legend(loc="lower right", fontsize=8)
    return figure_image(fig)


def training_curves(history: pd.DataFrame, select_on: str = "val") -> Image.Image:
    """Train/val (and proxy) loss and AUC per epoch, the epoch kept by ``select_on`` circled."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(history["epoch"], history["train_loss"], marker="o", label="train loss")
    parts = [p for p in ("val", "proxy") if f"{p}_auc" in history]
    for part, colour in zip(parts, ("tab:green", "tab:purple")):
        left.plot(history["epoch"], history[f"{part}_loss"], marker="o", c=colour, label=f"{part} BCE")
        right.plot(history["epoch"], history[f"{part}_auc"], marker="o", c=colour, label=part)
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    best = history.index[history["kept"]][0] if "kept" in history else history[f"{select_on}_auc"].idxmax()
    right.scatter([history["epoch"][best]], [history[f"{select_on}_auc"][best]], s=120, facecolors="none",
                  edgecolors="red", label=f"kept ({select_on} {history[f'{select_on}_auc'][best]:.4f})")
    right.set(xlabel="epoch", ylabel="mean ROC AUC", title="validation AUC" + (" and proxy" if len(parts) > 1 else ""))
    right.legend()
    return figure_image(fig)


def confusion_matrices(report: pd.DataFrame) -> Image.Image:
    """One 2x2 confusion matrix per label at its tuned threshold."""
    n = len(report)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax, row in zip(axes.flat, report.itertuples()):
        matrix = np.array([[row.tn, row.fp], [row.fn, row.tp]])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > matrix.max() / 2 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["pred 0", "pred 1"],
               yticklabels=["true 0", "true 1"], title=f"{row.label} @ {row.threshold:.2f}")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return figure_image(fig)


def image_grid(imageset, count: int = 16, seed: int = 0) -> Image.Image:
    """A seeded sample of decoded images with their ids and positive labels, 4 per row."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(imageset), min(count, len(imageset)), replace=False))
    cols = min(4, len(pick))
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax, i in zip(axes.flat, pick):
        positives = [n for j, n in enumerate(imageset.label_names)
                     if imageset.mask[i, j] and imageset.labels[i, j] > 0.5]
        ax.imshow(imageset.images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{imageset.ids[i][:22]}\n{', '.join(positives) or '-'}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    return figure_image(fig)


def ssl_curves(history: pd.DataFrame, collapse_ratio: float) -> Image.Image:
    """SSL loss and embedding std (x sqrt(d)) per epoch, with the collapse threshold."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(history["epoch"], history["loss"], marker="o")
    left.set(xlabel="epoch", ylabel="loss", title="SSL loss")
    right.plot(history["epoch"], history["embedding_std"], marker="o", c="tab:green", label="embedding std x sqrt(d)")
    right.axhline(collapse_ratio, ls="--", c="red", label="collapse threshold")
    right.set(xlabel="epoch", ylabel="std x sqrt(d)", title="collapse monitor (1 = healthy)", ylim=(0, None))
    right.legend()
    return figure_image(fig)


def auc_by_set(gaps: pd.DataFrame) -> Image.Image:
    """Grouped bars of each label's AUC on val, proxy and external sets (a ``gap_table``)."""
    sets = [c for c in gaps.columns if c != "label" and not c.startswith("gap_")]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(gaps) * max(len(sets), 1) ** 0.5 + 2), 4))
    width = 0.8 / max(len(sets), 1)
    x = np.arange(len(gaps))
    for k, name in enumerate(sets):
        ax.bar(x + (k - (len(sets) - 1) / 2) * width, gaps[name].to_numpy(dtype=float), width, label=name)
    ax.set_xticks(x, gaps["label"], rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0.5, 1.0), ylabel="ROC AUC", title="AUC by evaluation set (val overstates a new site)")
    ax.legend(fontsize=8)
    return figure_image(fig)


def robustness_curves(table: pd.DataFrame) -> Image.Image:
    """Mean AUC against severity, one line per corruption, the clean AUC dashed (a
    ``robustness_table``)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    clean = float(table.loc[table["corruption"] == "none", "auc"].iloc[0])
    corrupted = table[table["corruption"] != "none"]
    for name, rows in corrupted.groupby("corruption"):
        ax.plot(rows["severity"], rows["auc"], marker="o", label=name)
    ax.axhline(clean, ls="--", c="black", label=f"clean {clean:.3f}")
    ax.set(xlabel="severity", ylabel="mean ROC AUC", xticks=sorted(corrupted["severity"].unique()),
           title=f"AUC under acquisition corruptions (mean {corrupted['auc'].mean():.3f})")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    return figure_image(fig)


def reliability_diagrams(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], n_bins: int = 15) -> Image.Image:
    """Observed frequency against mean predicted probability in equal-width bins, before and
    after calibration, one panel per set (``name -> (y, before, after)``, labels pooled), with a
    histogram of the calibrated scores underneath."""
    fig, axes = plt.subplots(2, len(curves), figsize=(4 * len(curves), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for (name, (y, before, after)), ax, hist in zip(curves.items(), axes[0], axes[1]):
        for stage, p, style in (("before", before, dict(c="grey", ls="--")), ("after", after, dict(c="C0"))):
            observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
            ece = calibration_errors(y, p, n_bins)["ece"]
            ax.plot(predicted, observed, marker="o", ms=3, label=f"{stage} (ECE {ece:.3f})", **style)
        ax.plot([0, 1], [0, 1], c="black", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name} ({len(y)} scores)", ylabel="observed frequency")
        ax.legend(fontsize=8, loc="upper left")
        hist.hist(after, bins=n_bins, range=(0, 1), color="C0")
        hist.set(xlabel="predicted probability", ylabel="count", yscale="log")
    fig.suptitle("Reliability")
    return figure_image(fig)
