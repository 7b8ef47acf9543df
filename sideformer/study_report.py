"""What a search found, for people: a table of the top trials and the PNGs Optuna users expect.

`sideformer study report` writes it for any study; `sideformer tune` writes it after its search. The
plots are Optuna's own (`optuna.visualization.matplotlib`): the best value over time, the parameters'
importances (fANOVA), and every trial's intermediate values, finished trials drawn in colour over the
pruned ones in grey.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from sideformer.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

TOP = 10


@dataclass
class StudyReport:
    table: str
    pngs: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Plots that could not be drawn, each with the reason (e.g. importances need two completed trials)."""


def top_trials_table(study: optuna.Study, top: int = TOP) -> str:
    """The `top` completed trials, best first, with their state counts in the heading."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    heading = (
        f"study {study.study_name!r}: {len(trials)} trial(s), {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed, "
        f"{counts[TrialState.RUNNING]} running, {counts[TrialState.WAITING]} waiting"
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete.sort(key=lambda t: t.value, reverse=maximize)
    objective = study.user_attrs.get("objective", "value")
    keys = sorted({k for t in complete[:top] for k in t.params})
    header = ["rank", "trial", objective, "epochs", "minutes", *keys]
    rows = [header]
    for rank, t in enumerate(complete[:top], 1):
        minutes = (t.datetime_complete - t.datetime_start).total_seconds() / 60 if t.datetime_start else 0.0
        rows.append(
            [str(rank), str(t.number), f"{t.value:.4f}", str(len(t.intermediate_values)), f"{minutes:.1f}"]
            + [_short(t.params.get(k)) for k in keys]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([heading, *lines]) if complete else f"{heading}; no completed trial yet"


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def write_study_report(study: optuna.Study, out: str | Path, top: int = TOP) -> StudyReport | None:
    """The table, and PNGs written atomically into `out`; None when the study has no finished trial."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if not trials:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display in a pod or a CI job
    from optuna.visualization import matplotlib as plots

    out = Path(out)
    report = StudyReport(top_trials_table(study, top))
    drawers = {
        "optimization_history.png": lambda: plots.plot_optimization_history(study),
        "param_importances.png": lambda: plots.plot_param_importances(study),
        "intermediate_values.png": lambda: _intermediate_values(study, trials),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        for name, draw in drawers.items():
            try:
                axes = draw()
            except (ValueError, RuntimeError) as exc:  # e.g. importances need 2+ completed trials
                report.skipped.append(f"{name}: {exc}")
                continue
            report.pngs.append(_save(axes.figure, out / name))
    return report


def _intermediate_values(study: optuna.Study, trials: list[FrozenTrial]):  # -> matplotlib Axes
    """Optuna's intermediate-values plot, restyled: pruned trials grey and thin, finished ones in colour."""
    from optuna.visualization import matplotlib as plots

    axes = plots.plot_intermediate_values(study)
    state = {f"Trial{t.number}": t.state for t in trials}
    for line in axes.get_lines():
        if state.get(line.get_label()) == TrialState.PRUNED:
            line.set_color("0.7")
            line.set_linewidth(0.8)
            line.set_zorder(1)
        else:
            line.set_linewidth(2.0)
            line.set_zorder(2)
    legend = axes.get_legend()
    if legend is not None:
        legend.remove()
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    axes.set_title(f"Intermediate values: {len(trials) - pruned} finished (colour), {pruned} pruned (grey)")
    axes.set_xlabel("epoch")
    return axes


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.set_size_inches(9, 5.5)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def describe(report: StudyReport | None, study_name: str) -> str:
    if report is None:
        return f"study {study_name!r} has no finished trial yet: nothing to report."
    lines = [report.table, *(f"wrote {path}" for path in report.pngs)]
    lines += [f"not drawn: {reason}" for reason in report.skipped]
    return "\n".join(lines)
