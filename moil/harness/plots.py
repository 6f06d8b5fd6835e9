"""The report's figures, each a :class:`matplotlib.figure.Figure` of its own (no pyplot
state, no backend switch), built from plain numbers so a test can read what they show.

* :func:`loss_figure` — training task loss per arm over the steps;
* :func:`distance_figure` — each student's ``‖W̄ − Ŵ‖_F`` to its target over training,
  the value after the run's final closed-form fit (the one the report's table gives),
  and two floors: the rank-``r`` LowRank floor (Eckart–Young) and the LowRank floor at
  the student's stored size;
* :func:`spectrum_figure` — singular values of the teacher's, target's and student's
  update on one layer, with the ranks that explain the student's: ``r``, ``r + r_t``
  (a Hybrid's ``Ŵ − W0 = B A (I + U D) + W0 U D`` has rank up to ``r + r_t``) and the
  equal-size LowRank rank.
* :func:`validation_figure` — each arm's validation score over training (mean over seeds,
  each seed faint): whether it stopped improving;
* :func:`size_figure` — the stored-size curve: test metric against stored parameters,
  one line per method (:func:`moil.harness.size_curves.size_curves`).

Titles are wrapped and the figures use constrained layout, so nothing is cut off.
"""

from __future__ import annotations

import textwrap
from statistics import fmean

import attrs
from matplotlib.figure import Figure

from moil.harness.size_curves import Curve

__all__ = [
    "StudentDistance", "loss_figure", "validation_figure", "distance_figure", "spectrum_figure", "size_figure",
    "numerical_rank", "smooth",
]

TITLE_WIDTH = 76  # characters a title line holds at the figures' width and font size (≤ 10 pt)


def _title(ax, text: str, size: float = 10) -> None:
    ax.set_title("\n".join(textwrap.fill(part, TITLE_WIDTH) for part in text.split("\n")), fontsize=size)


def _figure() -> Figure:
    return Figure(figsize=(7.2, 5.6), layout="constrained")


def _legend(fig: Figure) -> None:
    """The legend below the axes, where it hides no curve (constrained layout makes room)."""
    fig.legend(loc="outside lower center", fontsize=7, ncols=1)


def smooth(values: list[float], alpha: float = 0.1) -> list[float]:
    """Exponential smoothing ``m_t = (1 − α) m_{t−1} + α v_t``, ``m_0 = v_1``."""
    out, current = [], values[0] if values else 0.0
    for v in values:
        current = (1 - alpha) * current + alpha * v
        out.append(current)
    return out


def _mean(seeds: list[list[float]]) -> list[float]:
    length = min(len(s) for s in seeds)
    return [fmean(s[i] for s in seeds) for i in range(length)]


def loss_figure(task: str, series: dict[str, list[list[float]]]) -> Figure:
    """``series``: ``{arm: [per-seed losses, one a step]}``; the mean over seeds, smoothed."""
    fig = _figure()
    ax = fig.subplots()
    for label, seeds in series.items():
        mean = _mean(seeds)
        ax.plot(range(1, len(mean) + 1), smooth(mean), label=f"{label} (n={len(seeds)})")
    ax.set_xlabel("training step")
    ax.set_ylabel("training task loss (EMA-smoothed)")
    _title(ax, f"{task}: learning curves (mean over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def validation_figure(
    task: str, metric: str, curves: list[tuple[str, list[int], dict[int, list[float]]]]
) -> Figure:
    """``curves``: ``(label, steps, {seed: values})`` per arm; the mean line, seeds faint."""
    fig = _figure()
    ax = fig.subplots()
    for i, (label, steps, seeds) in enumerate(curves):
        mean = _mean(list(seeds.values()))
        ax.plot(steps, mean, color=f"C{i}", marker="o", markersize=3, label=f"{label} (n={len(seeds)})")
        for values in seeds.values():
            ax.plot(steps, values, color=f"C{i}", alpha=0.25, linewidth=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"val {metric}")
    _title(ax, f"{task}: validation {metric} over training (mean over seeds; each seed faint; "
               "the last point is the run's own val score)")
    _legend(fig)
    ax.grid(alpha=0.3)
    return fig


@attrs.frozen
class StudentDistance:
    """What the distance plot shows of one student (lists: one entry per seed).

    Attributes:
      label: ``"<arm> · <student>"``.
      curves: ``‖W̄ − Ŵ‖_F`` logged at each training step, per seed.
      finals: the report's distance after training (and after the final fit), per seed.
      final_fit: the closed-form solver of the final fit (``"als"``, ``"svd"``), or ``None``.
      rank, floors: the low-rank rank ``r`` and the rank-``r`` LowRank floor per seed.
      equal_size_rank, equal_size_floors: the LowRank rank of the student's stored size
        and its floor per seed (``None``/empty for results written before they existed).
      steps: the run's last step, where a student without a curve (``FitOnly``) has its final mark.
    """

    label: str
    curves: list[list[float]]
    finals: list[float] = attrs.Factory(list)
    final_fit: str | None = None
    rank: int | None = None
    floors: list[float] = attrs.Factory(list)
    equal_size_rank: int | None = None
    equal_size_floors: list[float] = attrs.Factory(list)
    steps: int = 0


def distance_figure(task: str, students: list[StudentDistance]) -> Figure:
    """Distance to target over training (log scale), the post-training value marked at
    the last step and each student's floors as horizontal lines."""
    fig = _figure()
    ax = fig.subplots()
    for i, s in enumerate(students):
        color = f"C{i}"
        mean = _mean(s.curves) if s.curves else []
        if mean:
            ax.plot(range(1, len(mean) + 1), mean, color=color, label=f"{s.label}: during training (n={len(s.curves)})")
        if s.finals:
            end, final = len(mean) or s.steps, fmean(s.finals)
            what = f"after final fit ({s.final_fit.upper()})" if s.final_fit else "after training"
            ax.plot([end], [final], marker="*", markersize=14, linestyle="none", color=color,
                    markeredgecolor="black", label=f"{s.label}: {what} = {final:.4g} (the table's value)")
            if s.final_fit and mean and mean[-1] > 0 and final > 0:
                ax.annotate(what, xy=(end, final), xytext=(end, mean[-1]), ha="right", va="bottom", fontsize=8,
                            color=color, arrowprops={"arrowstyle": "->", "color": color})
        if s.floors:
            ax.axhline(fmean(s.floors), color=color, linestyle="--", linewidth=1,
                       label=f"rank-{s.rank} LowRank floor (Eckart–Young) = {fmean(s.floors):.4g}")
        if s.equal_size_floors:
            ax.axhline(fmean(s.equal_size_floors), color=color, linestyle=":", linewidth=1.5,
                       label=f"LowRank floor at the same stored size (rank {s.equal_size_rank}) "
                             f"= {fmean(s.equal_size_floors):.4g}")
    ax.set_xlabel("training step")
    ax.set_ylabel("‖W̄ − Ŵ‖_F, student to its target")
    ax.set_yscale("log")
    _title(ax, f"{task}: imitation — distance of each student to its momentum target "
               "(floors: no LowRank student of that rank gets closer; a Hybrid can)")
    _legend(fig)
    ax.grid(alpha=0.3)
    return fig


def numerical_rank(values: list[float], gap: float = 100.0) -> int:
    """The numerical rank of descending singular values ``s``: the index ``i`` of the
    largest drop ``s_i / s_{i+1}`` when it is at least ``gap`` (float rounding leaves a
    tail of tiny non-zero values past the true rank), else the count of ``s_i > 0``."""
    positive = [v for v in values if v > 0]
    if len(positive) < 2:
        return len(positive)
    ratios = [a / b for a, b in zip(positive, positive[1:])]
    best = max(range(len(ratios)), key=ratios.__getitem__)
    return best + 1 if ratios[best] >= gap else len(positive)


def spectrum_figure(title: str, student: str, info: dict) -> Figure:
    """``info``: one student's entry of :func:`moil.harness.imitation.imitation_report`
    (older results without ``transform_rank``/``equal_size_rank`` draw ``r`` alone)."""
    fig = _figure()
    ax = fig.subplots()
    shown = numerical_rank(info["spectrum_student"])
    for key, label in (("spectrum_teacher", "teacher update W − W0"),
                       ("spectrum_target", "target update W̄ − W0"),
                       ("spectrum_student", f"student update Ŵ − W0 ({student}): numerical rank {shown}")):
        values = info[key]
        ax.loglog(range(1, len(values) + 1), [max(v, 1e-12) for v in values], label=label)
    r, r_t = info["rank"], info.get("transform_rank")
    ax.axvline(r, color="gray", linestyle="--", label=f"low-rank rank r = {r}")
    if r_t:
        ax.axvline(r + r_t, color="black", linestyle=":",
                   label=f"r + r_t = {r + r_t}: the Hybrid's Ŵ − W0 = BA(I+UD) + W0·UD has rank ≤ r + r_t")
    same = info.get("equal_size_rank")
    if same is not None and same not in (r, r + (r_t or 0)):
        ax.axvline(same, color="tab:purple", linestyle="-.", linewidth=1,
                   label=f"LowRank rank at the student's stored size = {same}")
    ax.set_xlabel("singular value index (log scale: the ranks that matter are small)")
    ax.set_ylabel("singular value")
    floors = f"rank-{r} LowRank floor (Eckart–Young) {info['eckart_young_floor']:.4f}"
    if "equal_size_floor" in info:
        floors += f", LowRank floor at equal stored size (rank {same}) {info['equal_size_floor']:.4f}"
    _title(ax, f"{title}\nall target tensors: student's distance {info['distance']:.4f}; {floors}", size=9)
    _legend(fig)
    ax.grid(alpha=0.3)
    return fig


_MARKERS = "osD^v<>ph*"


def size_figure(task: str, metric: str, curves: list[Curve]) -> Figure:
    """Test ``metric`` (mean over seeds; bars ± the std over seeds where n > 1) against
    stored parameters (log scale), one line per curve; a curve of one size is a marker,
    and full fine-tuning (``Curve.reference``) also a dashed level across the plot."""
    fig = _figure()
    ax = fig.subplots()
    for i, curve in enumerate(curves):
        color, marker = f"C{i % 10}", _MARKERS[(i // 10 + i) % len(_MARKERS)]
        sizes, means = [p[0] for p in curve.points], [p[1] for p in curve.points]
        errors = [p[2] if p[3] > 1 else 0.0 for p in curve.points]
        seeds = sorted({p[3] for p in curve.points})
        n = f"n={seeds[0]}" if len(seeds) == 1 else f"n={seeds[0]}–{seeds[-1]}"
        ax.errorbar(sizes, means, yerr=errors if any(errors) else None, color=color, marker=marker, capsize=3,
                    linestyle="-" if curve.sizes >= 2 else "none", label=f"{curve.label} ({n})")
        if curve.reference:
            ax.axhline(fmean(means), color=color, linestyle="--", linewidth=1,
                       label=f"{curve.label}: level {fmean(means):.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("stored parameters (log scale)")
    ax.set_ylabel(f"test {metric} (mean over seeds)")
    _title(ax, f"{task}: stored-size curve — test {metric} against the parameters each method stores "
               "(mean over seeds, bars ± std over seeds)")
    _legend(fig)
    ax.grid(alpha=0.3, which="both")
    return fig
