"""`hpsearch confirm`: the K best configurations of a search, each retrained with S fresh training seeds, ranked by
their mean.

A search's winner is one run with one seed, picked as the highest of many: partly the luckiest. Retraining the top
configurations on the same train/validation split with other seeds measures each one's spread and ranks them by
what they do on average (with a 95% interval: mean ± t · sd / √S, Student's t with S - 1 degrees of freedom).

The retrainings are trials of their own study, `<study>-confirm`, in the same storage, each enqueued with its
configuration (the search trial's parameters) and its seed (attributes ATTR_CONFIRM_*), and run by the usual
parent and workers on the study's slots, sampling nothing (orchestration/queued.py): a killed worker, Ctrl-C and
`confirm` again, or a second machine finish what is missing and retrain nothing twice. Their MLflow runs are
children of one `confirm` run nested in the study's parent run. The result is kept in the search's study
(STUDY_CONFIRMED), where `best` reads it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core import record_keys
from hpsearch.core.checks import MAX_STUDY_NAME
from hpsearch.core.errors import UsageError
from hpsearch.core.seeding import trial_seed
from hpsearch.spec.spec_types import PrunerSpec, SamplerSpec, Spec
from hpsearch.spec.study_spec import CONFIRM_MULTI, CONFIRM_PBT

SUFFIX = "-confirm"
# Student's t, two-sided 95%, by degrees of freedom (S - 1); beyond the table, the normal's 1.96 is close enough.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}


def confirm_study_name(name: str) -> str:
    confirm = f"{name}{SUFFIX}"
    if len(confirm) > MAX_STUDY_NAME:
        raise UsageError(f"--study: {name!r} is too long to name its confirmation {confirm!r} "
                         f"(at most {MAX_STUDY_NAME} characters)")
    return confirm


def t95(degrees: int) -> float:
    """Student's t for a two-sided 95% interval; between the table's rows the one below (a wider interval)."""
    if degrees < 1:
        return math.nan
    if degrees > 30:
        return 1.96
    return _T95[max(d for d in _T95 if d <= degrees)]


def check_confirmable(spec: Spec, what: str) -> None:
    if spec.study.multi:
        raise UsageError(f"{what}: {CONFIRM_MULTI}")
    if spec.study.scheduler is not None:
        raise UsageError(f"{what}: {CONFIRM_PBT}")


def top_configurations(study: optuna.Study, spec: Spec, top: int) -> list[FrozenTrial]:
    """The `top` best COMPLETE trials of the search, best first (one per configuration: a retry's is its own)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UsageError(f"study {study.study_name!r} has no complete trial to confirm; run the search first")
    maximize = spec.study.direction == "maximize"
    ranked = sorted(complete, key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]
    return ranked[:top]


def confirm_seed(study_seed: int, trial_number: int, index: int) -> int:
    """Training seed `index` (1..S) of the configuration of trial `trial_number`: never the search's own
    (trial_seed(study_seed, trial_number)), the same for a retraining run again."""
    return trial_seed(study_seed + 1_000_003 * index, trial_number)


def confirm_spec(spec: Spec, retrainings: int) -> Spec:
    """The confirmation study's spec: the search's, under its own name, with no pruner and no sampling."""
    study = dataclasses.replace(spec.study, name=confirm_study_name(spec.study.name), n_trials=retrainings,
                                sampler=SamplerSpec("random", {"seed": spec.study.seed}), pruner=PrunerSpec("none", {}),
                                timeout=None, confirm=None)
    return dataclasses.replace(spec, study=study)


def enqueue_missing(confirm: optuna.Study, configurations: list[FrozenTrial], seeds: int, study_seed: int) -> int:
    """Enqueue each (configuration, seed) the confirmation study has never had; returns how many."""
    have = {(t.user_attrs.get(record_keys.ATTR_CONFIRM_OF), t.user_attrs.get(record_keys.ATTR_CONFIRM_INDEX))
            for t in confirm.get_trials(deepcopy=False)}
    added = 0
    for config in configurations:
        for index in range(1, seeds + 1):
            if (config.number, index) in have:
                continue  # done, running, waiting, or failed and retried by the usual rules
            confirm.enqueue_trial(config.params, user_attrs={
                record_keys.ATTR_CONFIRM_OF: config.number, record_keys.ATTR_CONFIRM_INDEX: index,
                record_keys.ATTR_CONFIRM_SEED: confirm_seed(study_seed, config.number, index)})
            added += 1
    return added


def summarize(confirm: optuna.Study, configurations: list[FrozenTrial], seeds: int, metric: str,
              maximize: bool) -> dict[str, Any]:
    """Per configuration: the value of each seed that completed, their mean, sd and 95% interval; ranked by mean.
    A configuration none of whose seeds completed ranks last."""
    done: dict[tuple[int, int], FrozenTrial] = {}
    for t in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        done[(t.user_attrs[record_keys.ATTR_CONFIRM_OF], t.user_attrs[record_keys.ATTR_CONFIRM_INDEX])] = t
    rows: list[dict[str, Any]] = []
    for config in configurations:
        runs = [done[(config.number, i)] for i in range(1, seeds + 1) if (config.number, i) in done]
        values = [float(r.value) for r in runs if r.value is not None]
        mean = statistics.fmean(values) if values else math.nan
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        half = t95(len(values) - 1) * sd / math.sqrt(len(values)) if len(values) > 1 else math.nan
        rows.append({
            "trial": config.number, "params": config.params, "single_run_value": config.value,
            "seeds": [{"seed_index": r.user_attrs[record_keys.ATTR_CONFIRM_INDEX],
                       "seed": r.user_attrs[record_keys.ATTR_CONFIRM_SEED], "value": r.value,
                       "confirm_trial": r.number, "mlflow_run_id": r.user_attrs.get(record_keys.ATTR_RUN_ID)}
                      for r in runs],
            "n": len(values), "mean": mean, "sd": sd, "ci95": [mean - half, mean + half],
        })
    rows.sort(key=lambda r: (math.isnan(r["mean"]), -r["mean"] if maximize else r["mean"]))
    return {"metric": metric, "top": len(configurations), "seeds": seeds, "complete": sum(r["n"] for r in rows),
            "expected": len(configurations) * seeds, "ranking": rows,
            "winner": rows[0]["trial"] if rows and rows[0]["n"] else None}


def best_seed(row: dict[str, Any], maximize: bool) -> dict[str, Any]:
    """The confirmed configuration's seed whose weights an export hands back: the one that scored best."""
    seeds = [s for s in row["seeds"] if s["value"] is not None]
    return max(seeds, key=lambda s: s["value"] if maximize else -s["value"])


def describe(row: dict[str, Any]) -> str:
    """"0.9712 ± 0.0031 (95% 0.9635–0.9789, 3 seeds)" for a ranking row."""
    if not row["n"]:
        return "no seed completed"
    if row["n"] == 1:
        return f"{row['mean']:.4f} (1 seed)"
    low, high = row["ci95"]
    return f"{row['mean']:.4f} ± {row['sd']:.4f} (95% {low:.4f}–{high:.4f}, {row['n']} seeds)"


def run_confirmation(spec: Spec, study: optuna.Study, top: int, seeds: int, progress: Any
                     ) -> tuple[dict[str, Any], bool]:
    """Retrain what the confirmation lacks and keep its result in the search's study; (result, interrupted)."""
    from hpsearch.orchestration.runner import run_study
    from hpsearch.search.samplers import build_pruner, study_sampler
    from hpsearch.spec.redaction import masked_spec
    from hpsearch.storage import stores
    from hpsearch.tracking import study_runs

    check_confirmable(spec, "confirm")
    configurations = top_configurations(study, spec, top)
    cspec = confirm_spec(spec, len(configurations) * seeds)
    confirm, _ = stores.create_or_resume(masked_spec(cspec), study_sampler(cspec.study.sampler, cspec.search_space,
                                                                           cspec.study.n_trials),
                                         build_pruner(cspec.study.pruner), cspec.study.storage)
    added = enqueue_missing(confirm, configurations, seeds, spec.study.seed)
    progress.say(f"confirming the {len(configurations)} best configuration(s) of {spec.study.name!r} "
                 f"(trial(s) {', '.join(str(c.number) for c in configurations)}) over {seeds} seeds each: "
                 f"{added} retraining(s) to run, study {cspec.study.name!r}")
    study_runs.StudyTracker(spec.tracking.uri, spec.tracking.experiment).nested_study_run(
        cspec.study.name, spec.study.name, "confirm")
    summary = run_study(cspec, progress, queued_only=True)
    result = summarize(confirm, configurations, seeds, spec.study.metric, spec.study.direction == "maximize")
    study.set_user_attr(record_keys.STUDY_CONFIRMED, result)
    return result, summary.interrupted
