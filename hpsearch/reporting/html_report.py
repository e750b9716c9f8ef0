"""The study report: one self-contained HTML page and a PNG per plot, built from Optuna's visualizations.

`write_report(study, out)` writes `out/report.html` (plotly figures, plotly.js inlined once: the page opens
from disk with no network) and `out/<plot>.png` (Optuna's matplotlib plots on the Agg backend: no browser,
no display). A plot that does not apply to the study (no completed trial yet, a single trial, nothing
searched) is one sentence saying why; an error in one plot never stops the others.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
from optuna.importance import BaseImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core import record_keys
from hpsearch.core.outages import first_line
from hpsearch.reporting.html_page import _PAGE, _partial, _summary, _trials_table
from hpsearch.storage.stores import study_dir

REPORT_PAGE = "report.html"
SLICE_PARAMS = 3  # the slice plot shows the most important few: one panel per parameter
LEGEND_MAX_TRIALS = 20  # one legend entry per trial is noise beyond this
STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#2ca02c"}


def default_report_dir(study_name: str) -> Path:
    return study_dir(study_name, "report")


class NotDrawn(Exception):
    """A plot that does not apply to this study; its message is the sentence the page shows instead."""


@dataclass(frozen=True)
class RunLinks:
    """Where the trials table's links go: the MLflow UI's address and the study's experiment."""

    ui: str  # e.g. http://127.0.0.1:5000 (no credentials)
    experiment_id: str

    def url(self, run_id: str) -> str:
        return f"{self.ui.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"


@dataclass
class Report:
    page: Path
    images: list[Path] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # plot title → why it (or its PNG) is not drawn

    @property
    def files(self) -> list[Path]:
        return [self.page, *self.images]


@dataclass(frozen=True)
class _View:
    """What the plots are drawn against: the objective (a multi-objective study's first) and its name."""

    study: optuna.Study
    trials: list[FrozenTrial]
    target: Callable[[FrozenTrial], float] | None
    target_name: str
    importances: dict[str, float] | None
    importance_note: str | None

    @property
    def complete(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE]

    @property
    def multi(self) -> bool:
        return len(self.study.directions) > 1

    def params(self) -> list[str]:
        names: list[str] = []
        for t in self.complete:
            names += [p for p in t.params if p not in names]
        return names


class _Known(BaseImportanceEvaluator):
    """Importances computed once, handed to both backends' plots (each would compute them again)."""

    def __init__(self, importances: dict[str, float]):
        self.importances = importances

    def evaluate(self, study: Any, params: Any = None, *, target: Any = None) -> dict[str, float]:
        return dict(self.importances)


# ---------------------------------------------------------------- the plots


def _needs_complete(view: _View) -> None:
    if not view.complete:
        raise NotDrawn("No trial has completed yet, so there is no objective value to plot.")


def _needs_params(view: _View) -> None:
    _needs_complete(view)
    if not view.params():
        raise NotDrawn("The study searched no hyperparameters.")


def _history(vis: ModuleType, view: _View) -> Any:
    _needs_complete(view)
    return vis.plot_optimization_history(view.study, target=view.target, target_name=view.target_name)


def _intermediate(vis: ModuleType, view: _View) -> Any:
    if not any(t.intermediate_values for t in view.trials):
        raise NotDrawn("No trial reported intermediate values (per-epoch values), so there are no curves to plot.")
    figure = vis.plot_intermediate_values(view.study)
    if _is_matplotlib(vis):
        _mark_pruned_matplotlib(figure, view)
    else:
        _mark_pruned_plotly(figure, view)
    return figure


def _importances(vis: ModuleType, view: _View) -> Any:
    _needs_params(view)
    if view.importances is None:
        raise NotDrawn(view.importance_note or "Importances could not be computed.")
    if view.multi:  # Optuna draws one bar per objective itself
        return vis.plot_param_importances(view.study)
    return vis.plot_param_importances(view.study, evaluator=_Known(view.importances), target_name=view.target_name)


def _parallel(vis: ModuleType, view: _View) -> Any:
    _needs_params(view)
    return vis.plot_parallel_coordinate(view.study, target=view.target, target_name=view.target_name)


def _slice(vis: ModuleType, view: _View) -> Any:
    _needs_params(view)
    ranked = list(view.importances or {}) or view.params()
    return vis.plot_slice(view.study, params=ranked[:SLICE_PARAMS], target=view.target,
                          target_name=view.target_name)


def _timeline(vis: ModuleType, view: _View) -> Any:
    return _timeline_matplotlib(view) if _is_matplotlib(vis) else _timeline_plotly(view)


def _is_matplotlib(vis: ModuleType) -> bool:
    return vis.__name__.endswith(".matplotlib")


def _pareto(vis: ModuleType, view: _View) -> Any:
    if not view.multi:
        raise NotDrawn("A single-objective study has no Pareto front.")
    _needs_complete(view)
    return vis.plot_pareto_front(view.study)


@dataclass(frozen=True)
class _PlotSpec:
    key: str  # the PNG's name
    title: str
    draw: Callable[[ModuleType, _View], Any]  # (optuna.visualization or its matplotlib twin, view) → figure
    caption: str = ""


PLOTS = (
    _PlotSpec("history", "Optimisation history", _history,
              "Every completed trial's value, with the best value so far."),
    _PlotSpec("intermediate", "Intermediate values", _intermediate,
              "Each trial's per-epoch curve; × marks where a pruned trial stopped."),
    _PlotSpec("importances", "Hyperparameter importances", _importances,
              "How much each hyperparameter explains the objective (Optuna's default evaluator)."),
    _PlotSpec("parallel", "Parallel coordinates", _parallel, "Every completed trial across all hyperparameters."),
    _PlotSpec("slice", "Slice plots", _slice, f"The objective against the {SLICE_PARAMS} most important "
                                              "hyperparameters."),
    _PlotSpec("timeline", "Timeline per device slot", _timeline,
              "When each trial ran, one row per device slot (GPU or CPU share), with how busy each slot was."),
    _PlotSpec("pareto", "Pareto front", _pareto, "The trials no other trial beats on every objective."),
)


# ---------------------------------------------------------------- the timeline per slot
# Optuna's plot_timeline has one row per trial; how busy each device was needs one row per slot.


@dataclass(frozen=True)
class _Bar:
    lane: str
    number: int
    state: str
    start: datetime
    end: datetime
    hover: str


def _slot_bars(trials: Sequence[FrozenTrial]) -> tuple[list[_Bar], dict[str, float]]:
    """One bar per started trial on its slot's row, and each row's busy fraction of the study's span."""
    started = sorted(((t.datetime_start, t) for t in trials if t.datetime_start is not None), key=lambda p: p[0])
    if not started:
        raise NotDrawn("No trial has started yet.")
    now = datetime.now(started[0][0].tzinfo)
    hosts = {t.user_attrs.get(record_keys.ATTR_HOST) for _, t in started}
    free_at: dict[str, datetime] = {}  # unrecorded rows, packed greedily: as many rows as trials ran at once
    bars = []
    for start, t in started:
        end = t.datetime_complete or now
        lane = _recorded_slot(t, multi_host=len(hosts) > 1)
        if lane is None:
            lane = next((name for name, free in free_at.items() if free <= start), f"unrecorded {len(free_at) + 1}")
            free_at[lane] = end
        value = "" if not t.values else ", value " + ", ".join(f"{v:.4g}" for v in t.values)
        bars.append(_Bar(lane, t.number, t.state.name, start, end,
                         f"trial {t.number} ({t.state.name}{value}), {(end - start).total_seconds():.1f}s"))
    span = (max(b.end for b in bars) - min(b.start for b in bars)).total_seconds()
    busy: dict[str, float] = {}
    for b in bars:
        busy[b.lane] = busy.get(b.lane, 0.0) + (b.end - b.start).total_seconds()
    return bars, {lane: (seconds / span if span > 0 else 1.0) for lane, seconds in sorted(busy.items())}


def _recorded_slot(trial: FrozenTrial, multi_host: bool) -> str | None:
    attrs = trial.user_attrs
    slot = attrs.get(record_keys.ATTR_SLOT)
    if slot is None and attrs.get(record_keys.ATTR_WORKER_PID) is not None:  # studies run before slots were recorded
        slot = f"worker pid {attrs[record_keys.ATTR_WORKER_PID]}"
    if slot is None:
        return None
    host = attrs.get(record_keys.ATTR_HOST)
    return f"{host} · {slot}" if multi_host and host else str(slot)


def _lane_label(lane: str, busy: float) -> str:
    return f"{lane} ({busy:.0%} busy)"


def _timeline_plotly(view: _View) -> Any:
    import plotly.graph_objects as go

    bars, busy = _slot_bars(view.trials)
    fig = go.Figure()
    for state, color in STATE_COLORS.items():
        mine = [b for b in bars if b.state == state]
        if mine:
            fig.add_trace(go.Bar(
                name=state, orientation="h", marker={"color": color}, textposition="none",
                y=[_lane_label(b.lane, busy[b.lane]) for b in mine],
                x=[(b.end - b.start).total_seconds() * 1000 for b in mine],  # a date axis counts in ms
                base=[b.start.isoformat() for b in mine],
                text=[b.hover for b in mine], hovertemplate="%{text}<extra></extra>",
            ))
    fig.update_xaxes(type="date")
    fig.update_yaxes(categoryorder="category descending")
    fig.update_layout(title="Timeline Plot per Device Slot", barmode="overlay", xaxis_title="Datetime",
                      yaxis_title="Slot", showlegend=True)
    return fig


def _timeline_matplotlib(view: _View) -> Any:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    bars, busy = _slot_bars(view.trials)
    lanes = list(busy)
    _fig, ax = plt.subplots(figsize=(10, 1.5 + 0.45 * len(lanes)), tight_layout=True)
    for state, color in STATE_COLORS.items():
        mine = [b for b in bars if b.state == state]
        if mine:
            starts = mdates.date2num([b.start for b in mine])
            ends = mdates.date2num([b.end for b in mine])
            ax.barh([lanes.index(b.lane) for b in mine], ends - starts, left=starts, height=0.6, color=color,
                    edgecolor="white", linewidth=0.5, label=state)
    ax.set_yticks(range(len(lanes)), [_lane_label(lane, busy[lane]) for lane in lanes])
    ax.invert_yaxis()  # the first slot on top, as on the page
    ax.xaxis_date()
    ax.set_title("Timeline Plot per Device Slot")
    ax.set_xlabel("Datetime")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


# ---------------------------------------------------------------- marking pruned trials


def _pruned_ends(view: _View) -> list[tuple[int, int, float]]:
    """(trial number, last step, last value) of every pruned trial that reported a value."""
    ends = []
    for t in view.trials:
        if t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            ends.append((t.number, step, t.intermediate_values[step]))
    return ends


def _mark_pruned_plotly(fig: Any, view: _View) -> None:
    import plotly.graph_objects as go

    ends = _pruned_ends(view)
    if ends:
        fig.add_trace(go.Scatter(
            x=[s for _, s, _ in ends], y=[v for _, _, v in ends], mode="markers", name="pruned",
            marker={"symbol": "x", "size": 11, "color": "black"},
            text=[f"trial {n} pruned at step {s}" for n, s, _ in ends], hovertemplate="%{text}<extra></extra>",
        ))


def _mark_pruned_matplotlib(ax: Any, view: _View) -> None:
    ends = _pruned_ends(view)
    if ends:
        ax.scatter([s for _, s, _ in ends], [v for _, _, v in ends], marker="x", s=60, color="black",
                   zorder=3, label="pruned")
    lines = ax.get_lines()
    if len(lines) > LEGEND_MAX_TRIALS:  # keep only the marker's entry
        handles = [h for h in ax.collections if h.get_label() == "pruned"]
        if handles:
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1))
        elif ax.get_legend() is not None:
            ax.get_legend().remove()
    elif ends and len(lines) >= 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0.0)


# ---------------------------------------------------------------- building the files


def _view(study: optuna.Study, metric: str | None) -> _View:
    trials = study.get_trials(deepcopy=False)
    multi = len(study.directions) > 1
    names = study.metric_names or [metric or "Objective Value"] * len(study.directions)
    target: Callable[[FrozenTrial], float] | None = None
    target_name = names[0]
    if multi:  # the history, parallel coordinates and slices follow the first objective
        target, target_name = (lambda t: t.values[0]), f"{names[0]} (objective 1 of {len(study.directions)})"
    importances, note = None, None
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        note = f"Importances need at least two completed trials; this study has {len(complete)}."
    elif not multi:
        try:
            with warnings.catch_warnings():
                # Its evaluator warns (two lines on stderr, every report) when few trials fall in a range of
                # a parameter: with a few dozen trials that is the rule, and importances are an estimate anyway.
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study)
        except Exception as exc:
            note = f"Importances could not be computed: {first_line(exc)}."
    else:
        importances = {}  # Optuna ranks each objective itself; the slices take the first few parameters
    return _View(study, trials, target, target_name, importances, note)


def _draw_all(view: _View, out: Path, report: Report) -> list[tuple[_PlotSpec, Any]]:
    """Every plot: its plotly figure (or None) for the page, its PNG written to `out`."""
    import matplotlib

    matplotlib.use("Agg")  # PNGs with no display and no browser
    import matplotlib.pyplot as plt
    import numpy as np
    import optuna.visualization as vis_plotly
    import optuna.visualization.matplotlib as vis_mpl

    drawn = []
    for spec in PLOTS:
        if spec.key == "pareto" and not view.multi:
            continue
        png = out / f"{spec.key}.png"
        png.unlink(missing_ok=True)  # never leave last time's picture beside this time's page
        figure = None
        for backend in ("plotly", "matplotlib"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna's "experimental" warnings for its matplotlib plots
                    if backend == "plotly":
                        figure = spec.draw(vis_plotly, view)
                    else:
                        axes = np.ravel(spec.draw(vis_mpl, view))  # a slice of several parameters: an array
                        tmp = _partial(png)
                        # One layout pass, then one draw (bbox_inches="tight" draws the figure twice).
                        axes[0].figure.tight_layout()
                        axes[0].figure.savefig(tmp, format="png", dpi=100)
                        tmp.replace(png)
                        report.images.append(png)
            except NotDrawn as exc:
                report.notes[spec.title] = str(exc)
                break  # the same sentence holds for the PNG
            except Exception as exc:  # one plot's failure is one sentence, never the report's
                what = "Not drawn" if backend == "plotly" else "Its PNG was not drawn"
                report.notes.setdefault(spec.title, f"{what}: {type(exc).__name__}: {first_line(exc)}")
            finally:
                plt.close("all")
                _partial(png).unlink(missing_ok=True)  # left only by a failed savefig
        drawn.append((spec, figure))
    return drawn


def write_report(study: optuna.Study, out: Path, *, links: RunLinks | None = None, command: str | None = None,
                 links_note: str | None = None) -> Report:
    """Write `out/report.html` and one PNG per plot; returns what was written and what was not drawn.

    `links` turns each trial's MLflow run id into a link to the MLflow UI; `command` is how to run the
    study again, shown on the page.
    """
    out.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # what a plot lacks is said on the page, not on stderr
    try:
        view = _view(study, study.user_attrs.get(record_keys.STUDY_METRIC))
        report = Report(out / REPORT_PAGE)
        drawn = _draw_all(view, out, report)
    finally:
        optuna.logging.set_verbosity(verbosity)
    sections = []
    first_figure = True
    for spec, figure in drawn:
        body = f"<p class='caption'>{html.escape(spec.caption)}</p>"
        try:
            if figure is not None:
                # plotly.js goes inline once, with the first figure: the page needs no network.
                body += figure.to_html(full_html=False, include_plotlyjs=first_figure, default_width="100%",
                                       default_height="480px", config={"displaylogo": False})
                first_figure = False
        except Exception as exc:
            report.notes.setdefault(spec.title, f"Not drawn: {type(exc).__name__}: {first_line(exc)}")
        if spec.title in report.notes:
            body += f"<p class='note'>{html.escape(report.notes[spec.title])}</p>"
        if (out / f"{spec.key}.png") in report.images:
            body += f"<p class='png'><a href='{spec.key}.png'>{spec.key}.png</a></p>"
        sections.append(f"<section id='{spec.key}'><h2>{html.escape(spec.title)}</h2>{body}</section>")
    page = _PAGE.format(
        title=html.escape(f"Study {study.study_name}"),
        summary=_summary(view, command),
        sections="\n".join(sections),
        table=_trials_table(study, links, links_note),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    tmp = _partial(report.page)
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(report.page)
    return report
