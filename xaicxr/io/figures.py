"""Pictures: heatmap overlays, template panels, confusion matrices and ROC curves (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from . import atomic  # noqa: E402

CMAP = "jet"
OUTLINE = "white"


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Gray image (H, W) in [0, 1] and heatmap in [0, 1] -> RGB float (H, W, 3)."""
    colour = plt.get_cmap(CMAP)(np.clip(heatmap, 0, 1))[..., :3]
    gray = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    weight = alpha * np.clip(heatmap, 0, 1)[..., None] ** 0.5
    return np.clip((1 - weight) * gray + weight * colour, 0.0, 1.0)


def save(fig, path: Path, *, tight: bool = True) -> str:
    """Write the figure atomically and return its file name (for the HTML). ``tight`` trims the
    margins, at the cost of drawing the figure twice; a figure laid out by hand has none to trim."""
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path.name


def template_panel(templates: dict[str, np.ndarray], backgrounds: dict[str, np.ndarray | None],
                   counts: dict[str, int], title: str, path: Path) -> str:
    """One column per class: the template over the class's mean image, with a colour bar."""
    names = list(templates)
    width, height = 3.1 * len(names) + 1.0, 3.4
    fig = plt.figure(figsize=(width, height))
    vmax = max(float(np.max(t)) for t in templates.values()) or 1.0
    for i, name in enumerate(names):
        ax = fig.add_axes(((0.1 + 3.1 * i) / width, 0.1 / height, 2.9 / width, 2.75 / height))
        bg = backgrounds.get(name)
        if bg is not None:
            ax.imshow(bg, cmap="gray", vmin=0, vmax=1)
        im = ax.imshow(templates[name], cmap=CMAP, vmin=0, vmax=vmax, alpha=0.5 if bg is not None else 1.0)
        ax.set_title(f"{name} (n={counts.get(name, '?')})")
        ax.axis("off")
    bar = fig.add_axes(((3.1 * len(names) + 0.2) / width, 0.35 / height, 0.12 / width, 2.3 / height))
    fig.colorbar(im, cax=bar, label="mean relevance")
    fig.suptitle(title, y=1 - 0.05 / height, va="top")
    return save(fig, path, tight=False)


def template_comparison(templates: dict[str, np.ndarray], title: str, path: Path) -> str:
    """Templates of one class from several runs side by side (one colour scale), then each
    one's difference from the first (diverging, symmetric scale), all in one row."""
    names = list(templates)
    reference = templates[names[0]]
    diffs = {name: templates[name] - reference for name in names[1:]}
    fig, axes = plt.subplots(1, len(names) + len(diffs), figsize=(2.6 * (len(names) + len(diffs)) + 1.2, 3.0),
                             squeeze=False)
    vmax = max(float(np.max(t)) for t in templates.values()) or 1.0
    lim = max((float(np.abs(d).max()) for d in diffs.values()), default=0.0) or 1.0
    for ax, name in zip(axes[0], names):
        im = ax.imshow(templates[name], cmap=CMAP, vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=8)
    for ax, name in zip(axes[0][len(names):], diffs):
        dm = ax.imshow(diffs[name], cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{name} - {names[0]}", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    fig.colorbar(im, ax=axes[0][:len(names)].tolist(), shrink=0.8, label="template")
    if diffs:
        fig.colorbar(dm, ax=axes[0][len(names):].tolist(), shrink=0.8, label="difference")
    fig.suptitle(title)
    return save(fig, path)


def components_panel(components: np.ndarray, explained: Sequence[float] | None, name: str,
                     title: str, path: Path) -> str:
    """Eigen-heatmaps of one class (diverging colours: a component has a sign)."""
    k = len(components)
    fig, axes = plt.subplots(1, k, figsize=(2.8 * k, 3.0), squeeze=False)
    for i, (ax, comp) in enumerate(zip(axes[0], components)):
        lim = float(np.abs(comp).max()) or 1.0
        ax.imshow(comp, cmap="RdBu_r", vmin=-lim, vmax=lim)
        share = f" ({100 * explained[i]:.1f} %)" if explained is not None and i < len(explained) else ""
        ax.set_title(f"{name} PC{i + 1}{share}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title)
    return save(fig, path)


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> str:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)")
    return save(fig, path)


def roc_figure(binary: dict[str, dict], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for task, b in binary.items():
        lo, hi = b["ci95"]["auc"]
        ax.plot(b["roc"]["fpr"], b["roc"]["tpr"], label=f"{task}: AUC {b['auc']:.3f} [{lo:.3f}, {hi:.3f}]")
        ax.plot(1 - b["specificity"], b["sensitivity"], "o", color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC (test); dots: Youden threshold from validation")
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


def overlay_grid(rows: Sequence[tuple | None], title: str, path: Path, columns: int = 6) -> str:
    """``rows`` of (caption, image, heatmap) or (caption, image, heatmap, outline), or None for
    an empty place; ``outline`` an (H, W) bool mask (the lesion or an expert's box) drawn as a
    contour, or None. A caption may hold line breaks, not more than two lines. One colour bar
    for every panel: the overlay shows the map clipped to [0, 1].

    The panels are tiled into one picture drawn on one set of axes (captions as text, outlines as
    one contour): a set of axes per panel costs matplotlib its ticks, titles and layout, three
    times the time of the whole figure drawn this way. Smaller images are centred in the tile of
    the largest."""
    panels = [p for p in rows if p is not None]
    n = len(rows)
    cols = min(columns, max(n, 1))
    lines = max((n + cols - 1) // cols, 1)
    height = max([p[1].shape[0] for p in panels], default=1)
    width = max([p[1].shape[1] for p in panels], default=1)
    gap, band = max(1, round(0.06 * width)), max(2, round(0.3 * height))
    tile_h, tile_w = band + height, width + gap
    canvas = np.ones((lines * tile_h, cols * tile_w - gap, 3))
    outlines = np.zeros(canvas.shape[:2], np.float32)
    captions = []
    for i, panel in enumerate(rows):
        if panel is None:
            continue
        caption, image, heat, *rest = panel
        row, col = divmod(i, cols)
        h, w = image.shape
        top, left = row * tile_h + band + (height - h) // 2, col * tile_w + (width - w) // 2
        canvas[top:top + h, left:left + w] = overlay(image, heat)
        if rest and rest[0] is not None:
            outlines[top:top + h, left:left + w] = np.asarray(rest[0], np.float32)
        captions.append((col * tile_w + width / 2, top - 0.5, caption))
    grid_w, bar_w, head, pad = 2.4 * cols, 0.9, 0.55, 0.1
    grid_h = grid_w * canvas.shape[0] / canvas.shape[1]
    total_w, total_h = pad + grid_w + bar_w, pad + grid_h + head
    fig = plt.figure(figsize=(total_w, total_h))
    ax = fig.add_axes((pad / total_w, pad / total_h, grid_w / total_w, grid_h / total_h))
    ax.set_axis_off()
    ax.imshow(canvas, interpolation="nearest")
    outlined = bool(outlines.any())
    if outlined:
        ax.contour(outlines, levels=[0.5], colors=OUTLINE, linewidths=1.0)
    for x, y, caption in captions:
        ax.text(x, y, caption, ha="center", va="bottom", fontsize=7)
    bar = fig.add_axes(((pad + grid_w + 0.25) / total_w, (pad + 0.15 * grid_h) / total_h, 0.12 / total_w, 0.7 * grid_h / total_h))
    fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=CMAP), cax=bar, label="relevance")
    fig.suptitle(title + (f"\n({OUTLINE} outline: the annotated lesion or box)" if outlined else ""), fontsize=9,
                 y=1 - 0.08 / total_h, va="top")
    return save(fig, path, tight=False)


def cascade_figure(result: dict, name: str, path: Path) -> str:
    """Cascading randomisation: Spearman (with its interval) and SSIM per step, top layer first;
    the reference level of two different images' maps as a band; the explained layer marked."""
    steps = result["cascade"]
    x = np.arange(len(steps))

    def series(key: str, part: int | None = None) -> np.ndarray:
        values = [s[key]["value"] if part is None else s[key]["ci95"][part] for s in steps]
        return np.array([np.nan if v is None else v for v in values], float)

    fig, ax = plt.subplots(figsize=(max(6.0, 0.36 * len(steps) + 2), 4.0))
    ax.fill_between(x, series("spearman", 0), series("spearman", 1), color="C0", alpha=0.2, lw=0)
    ax.plot(x, series("spearman"), "o-", color="C0", label="Spearman rank correlation")
    ax.plot(x, series("ssim"), "s--", color="C1", label="SSIM")
    ref = result["reference"]["spearman"]
    if ref["value"] is not None:
        lo, hi = (ref["ci95"][0] or ref["value"]), (ref["ci95"][1] or ref["value"])
        ax.axhspan(lo, hi, color="gray", alpha=0.3, label="two different images (reference)")
    marker = result.get("explained_layer_step")
    if marker is not None:
        ax.axvline(marker + 0.5, color="k", ls=":", label="left of the line: the layers above the explained one")
    ax.set_xticks(x, [s["name"] for s in steps], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("similarity to the trained model's maps")
    ax.set_xlabel("randomised from the top down to")
    ax.set_ylim(-0.4, 1.05)
    ax.set_title(f"{name}: cascading randomisation (Adebayo et al. 2018)")
    ax.legend(fontsize=7, loc="upper right")
    return save(fig, path)


def perturbation_figure(per_class: dict, baselines: dict, name: str, path: Path) -> str:
    """Mean deletion and insertion curves per class for each fill; dotted: a random order."""
    classes = list(per_class)
    fills = list(next(iter(per_class.values())))
    fig, axes = plt.subplots(len(fills), len(classes), figsize=(3.0 * len(classes), 2.6 * len(fills)),
                             squeeze=False, sharex=True, sharey=True)
    for row, fill in enumerate(fills):
        for col, cls in enumerate(classes):
            ax = axes[row][col]
            f = per_class[cls][fill]
            ax.plot(f["fractions"], f["deletion_curve"], color="C3", label="deletion")
            ax.plot(f["fractions"], f["insertion_curve"], color="C2", label="insertion")
            random = baselines.get(cls, {}).get("uniform", {}).get("faithfulness", {}).get(fill)
            if random:
                ax.plot(f["fractions"], random["deletion_curve"], color="C3", ls=":", lw=1)
                ax.plot(f["fractions"], random["insertion_curve"], color="C2", ls=":", lw=1,
                        label="random order (dotted)")
            ax.set_title(f"{cls} ({fill})", fontsize=9)
            ax.set_ylim(0, 1.02)
            if row == len(fills) - 1:
                ax.set_xlabel("fraction of pixels")
            if col == 0:
                ax.set_ylabel("class probability")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{name}: deletion (most relevant removed first) and insertion")
    height = 2.6 * len(fills)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / height, top=1 - 0.55 / height, wspace=0.08,
                        hspace=0.3)
    return save(fig, path, tight=False)
