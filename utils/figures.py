"""Figures (matplotlib, no pyplot state): the mask picture of a run and the training curves of a report."""
import os
import textwrap

import numpy as np
import torch

from .mask_rules import jet
from .units import fraction_text


def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str) -> None:
    """Write `fig` to `path` atomically (utils.runs.atomic_write: a failed write leaves no partial file and names
    the path) in the format its extension names (PNG without one)."""
    from .runs import atomic_write
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt))


def save_mask_figure(path: str, x: torch.Tensor, cam: torch.Tensor | None, budget: torch.Tensor, eps: float,
                     eps_low: float, title: str) -> None:
    """A labelled PNG: row 'image' (x, (B, 3, H, W) in [0, 1]), row 'CAM' (cam (B, H, W) in jet, when given) and
    row 'budget' (budget shaped like x, averaged over the three colour channels, in units of 1/255, with a
    colour bar), a title and a caption saying how to read the budget row."""
    x = x.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    b = (budget.detach().float().cpu().expand(len(x), -1, -1, -1).mean(1) * 255).numpy()
    rows = [("image", None)] + ([("CAM", jet(cam.detach().cpu()).float().numpy())] if cam is not None else []) + \
        [("budget", None)]
    n = len(x)
    fig = _figure(1.3 * n + 1.2, 1.45 * len(rows) + 0.9)
    axes = fig.subplots(len(rows), n, squeeze=False)
    lo, hi = min(float(b.min()), 255 * eps_low), max(float(b.max()), 255 * eps)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    shown = None
    for r, (name, heat) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "image":
                ax.imshow(x[i].clip(0, 1), interpolation="nearest")
            elif name == "CAM":
                ax.imshow(heat[i], interpolation="nearest")
            else:
                shown = ax.imshow(b[i], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
        axes[r, 0].set_ylabel(name, fontsize=11)
    bar = fig.colorbar(shown, ax=axes[-1, :].tolist(), shrink=0.9, pad=0.01)
    bar.set_label("budget (1/255)")
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.0, f"budget: the L-inf budget of each pixel, mean of its three colour channels, in 1/255. "
                       f"eps = {fraction_text(eps)}, eps_low = {fraction_text(eps_low)}; a value in between means "
                       f"eps in some channels only.", ha="center", va="bottom", fontsize=7, wrap=True)
    _save(fig, path)


def save_curves(path: str, groups: dict) -> None:
    """Training curves: `groups` maps a label to {'epoch': [...], column: (mean list, std list or None)} for the
    columns natural, pgd20, budget_mean and eps_share; one line per group, a band of +-1 std over seeds."""
    panels = [("natural", "natural accuracy (%)"), ("pgd20", "PGD-20 accuracy (%)"),
              ("budget_mean", "mean budget (1/255)"), ("eps_share", "share of elements at eps")]
    panels = [p for p in panels if any(p[0] in g for g in groups.values())]
    fig = _figure(4.2 * len(panels), 3.4 + 0.22 * len(groups))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (col, title) in zip(axes, panels):
        for label, g in groups.items():
            if col not in g:
                continue
            ep = np.asarray(g["epoch"], dtype=float)
            mean, std = (np.asarray(v, dtype=float) if v is not None else None for v in g[col])
            line, = ax.plot(ep, mean, label=label, lw=1.5)
            if std is not None and np.isfinite(std).any():
                ax.fill_between(ep, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", fontsize=8, ncols=1 if len(groups) > 4 else len(groups))
    _save(fig, path)


def save_paired_differences(path: str, panels: list[dict]) -> None:
    """One panel per (difference, column), laid out as a grid with a row per difference (and data set) and a
    column per accuracy column: the per-seed differences A - B as dots (labelled by seed), their mean with its
    95% interval as an error bar (without an interval, the mean alone and the panel's 'note' saying
    why), zero as a grey line and, where a panel has 'mark' (a reference value such as a published effect), a
    dashed red line. Each panel is {'title', 'seeds', 'values', 'mean', 'ci95' ([lo, hi] or None), 'note' (why
    there is no interval, or None), 'mark' (float or None), 'mark_label', 'pair' (the difference's name),
    'where' (its data set and model where the panels span several, else None)}."""
    one_pair = len({(p["pair"], p.get("where")) for p in panels}) == 1
    rows = list(dict.fromkeys((p["pair"], p.get("where")) for p in panels))
    cols = list(dict.fromkeys(p["title"] for p in panels))
    fig = _figure(3.2 * len(cols), 3.8 * len(rows))
    if one_pair:
        fig.suptitle(panels[0]["pair"] + (f" ({panels[0]['where']})" if panels[0].get("where") else ""), fontsize=10)
    grid = fig.subplots(len(rows), len(cols), squeeze=False)
    axes = [grid[rows.index((p["pair"], p.get("where")))][cols.index(p["title"])] for p in panels]
    for ax in grid.flat:  # a difference without one of the columns leaves its cell empty
        if ax not in axes:
            ax.set_axis_off()
    for ax, p in zip(axes, panels):
        xs = np.linspace(-0.25, 0.25, len(p["values"])) if len(p["values"]) > 1 else np.zeros(1)
        ax.scatter(xs, p["values"], s=18, color="tab:blue", zorder=3, label="per seed")
        for x, v, s in zip(xs, p["values"], p["seeds"]):
            ax.annotate(str(s), (x, v), textcoords="offset points", xytext=(4, 2), fontsize=6, color="tab:blue")
        if p["ci95"] is not None:
            lo, hi = p["ci95"]
            ax.errorbar([0.6], [p["mean"]], yerr=[[p["mean"] - lo], [hi - p["mean"]]], fmt="o", color="black",
                        capsize=5, label="mean, 95% CI")
        else:
            ax.plot([0.6], [p["mean"]], "o", color="black", label="mean (no interval)")
            if p.get("note"):
                ax.text(0.5, 0.02, f"no 95% interval:\n{p['note']}", transform=ax.transAxes, ha="center",
                        va="bottom", fontsize=6, color="dimgrey")
        ax.axhline(0, color="grey", lw=0.8)
        if p.get("mark") is not None:
            ax.axhline(p["mark"], color="tab:red", ls="--", lw=1, label=p.get("mark_label") or "reference")
        ax.set_xlim(-0.6, 1.0)
        ax.set_xticks([])
        where = f"\n{p['where']}" if p.get("where") and not one_pair else ""
        pair = textwrap.fill(p["pair"], 46)  # long row names would run into the next panel's title
        ax.set_title(p["title"] if one_pair else f"{p['title']}\n{pair}{where}", fontsize=10 if one_pair else 7)
        ax.set_ylabel("difference (accuracy points)")
        ax.grid(alpha=0.3, axis="y")
    legend = {}  # every panel's entries, once each (a panel without an interval has its own)
    for ax in axes:
        for h, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, h)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", fontsize=8, ncols=len(legend))
    _save(fig, path)
