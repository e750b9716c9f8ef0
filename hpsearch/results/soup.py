"""`hpsearch soup`: the best checkpoints of a fine-tuning search (and of its confirmation's seeds) averaged into one
network, greedily or uniformly (engine/soup.py for the arithmetic and its source).

Only models fine-tuned from the same starting weights, of the same architecture, head and input size, average into
something meaningful; anything else is refused in one line. The soup's BatchNorm statistics are measured again on
the training split, it is scored on the validation split (which the greedy choice reads) and reported on the test
split beside the best single ingredient, written as an export (`best.yaml`, `model.pt`, `trial.json` in
studies/<study>/soup/) and logged as a child run of the study's parent run listing its ingredients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.core import record_keys
from hpsearch.core.errors import UsageError
from hpsearch.core.hparams import TASK_CHOICES
from hpsearch.spec.spec_types import Spec

METHODS = ("greedy", "uniform")


@dataclass
class Candidate:
    name: str  # "trial 7" or "trial 7 seed 2"
    trial: FrozenTrial
    study: optuna.Study  # the search's, or its confirmation's
    value: float


@dataclass
class SoupResult:
    method: str
    metric: str
    ingredients: list[str]  # kept, best first
    tried: list[tuple[str, float]]
    val: dict[str, float]  # the soup's val_loss, val_accuracy
    test: dict[str, float]
    best_single: dict[str, Any]  # name, val, test of the best ingredient alone
    candidates: int
    batchnorm_images: int
    state: dict[str, Any] = field(repr=False, default_factory=dict)


def candidates(study: optuna.Study, spec: Spec, top: int | None, confirm: optuna.Study | None) -> list[Candidate]:
    """The search's COMPLETE trials (the `top` best, or all), then its confirmation's seeds, best first."""
    maximize = spec.study.direction == "maximize"
    found = [Candidate(f"trial {t.number}", t, study, float(t.value))
             for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if confirm is not None:
        found += [Candidate(f"trial {t.user_attrs[record_keys.ATTR_CONFIRM_OF]} seed "
                            f"{t.user_attrs[record_keys.ATTR_CONFIRM_INDEX]}", t, confirm, float(t.value))
                  for t in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    found.sort(key=lambda c: -c.value if maximize else c.value)
    if not found:
        raise UsageError(f"soup: study {study.study_name!r} has no complete trial to average")
    return found if top is None else found[:top]


def check_ingredients(spec: Spec, found: list[Candidate]) -> None:
    """One line, exit 2, for what cannot be averaged: from scratch, other starting weights, another architecture,
    head or input size (the weights' own shapes are checked when they are loaded)."""
    if len(found) < 2:
        raise UsageError(f"--top: a soup needs at least 2 ingredients, the study has {len(found)} to offer")
    if spec.study.multi:
        raise UsageError("soup: a multi-objective study ranks by no single score for the greedy soup to keep; "
                         "average the trials of a single-objective study")
    first = found[0]
    starts = {c.name: c.trial.user_attrs.get(record_keys.ATTR_START_WEIGHTS) for c in found}
    scratch = [n for n, s in starts.items() if s == "none"]
    if scratch or spec.task.model.weights in (None, "none"):
        raise UsageError(f"soup: {(scratch or [first.name])[0]} was trained from scratch (weights none): each such "
                         "trial starts from its own random weights, so their average is meaningless; a soup "
                         "averages models fine-tuned from the same pretrained weights")
    unknown = [n for n, s in starts.items() if s is None]
    if unknown:
        raise UsageError(f"soup: {unknown[0]} does not record its starting weights (trained before hpsearch "
                         "recorded them): run the study again to make trials a soup can use")
    other = next((n for n, s in starts.items() if s != starts[first.name]), None)
    if other:
        raise UsageError(f"soup: {other} started from {starts[other]}, {first.name} from {starts[first.name]}: "
                         "only models fine-tuned from the same weights average into one")
    for key in TASK_CHOICES:  # a searched backbone or input size
        values = {c.name: c.trial.params.get(key) for c in found}
        odd = next((n for n, v in values.items() if v != values[first.name]), None)
        if odd:
            raise UsageError(f"soup: {odd} has {key}={values[odd]}, {first.name} {key}={values[first.name]}: "
                             f"the ingredients must share their {'architecture' if key == 'model' else key}")


def make_soup(spec: Spec, found: list[Candidate], method: str, storage: str | None, tracking_uri: str,
              device: str, say: Any) -> SoupResult:
    """Load every ingredient's checkpoint, cook the soup, measure it and the best ingredient alone."""
    from hpsearch.engine import soup
    from hpsearch.engine.train import evaluate
    from hpsearch.orchestration.builders import load_task_data
    from hpsearch.results.tables import trial_record
    from hpsearch.results.winner_weights import checkpoint_file, has_checkpoint, load_weights, trial_model
    from hpsearch.spec.study_spec import with_task_choices

    check_ingredients(spec, found)
    ingredients = []
    for c in found:
        record = trial_record(c.study, c.trial, storage, tracking_uri)
        if not has_checkpoint(record):
            raise UsageError(f"soup: {c.name} has no stored checkpoint ({record['checkpoint_note']}); set "
                             "tracking.checkpoints: complete, or leave it out with --top")
        with checkpoint_file(record, tracking_uri, "soup") as path:
            ingredients.append(soup.Ingredient(c.name, load_weights(path), c.value))
    keys = list(ingredients[0].state)
    for ing in ingredients[1:]:
        shapes = {k: tuple(v.shape) for k, v in ing.state.items()}
        if list(ing.state) != keys or any(shapes[k] != tuple(ingredients[0].state[k].shape) for k in keys):
            raise UsageError(f"soup: {ing.name}'s weights do not fit {ingredients[0].name}'s (another head or "
                             "architecture): the ingredients must be the same network")
    params = found[0].trial.params
    task_spec = with_task_choices(spec, params)
    data = load_task_data(task_spec, device)
    model = trial_model(spec, params, ingredients[0].state).to(device)
    images = {"seen": 0}

    def measure(state: dict[str, Any], split: Any, averaged: bool = True) -> dict[str, float]:
        model.load_state_dict(state)
        if averaged and soup.has_batchnorm(model):
            batches = (x for x, _ in data.train.batches(256, shuffle=False, augment=False, drop_last=False))
            images["seen"] = soup.recompute_batchnorm(model, batches)
        loss, accuracy = evaluate(model, split, device=device)
        return {"loss": loss, "accuracy": accuracy}

    metric = spec.study.metric
    maximize = spec.study.direction == "maximize"
    key = "accuracy" if metric == "val_accuracy" else "loss"

    def score_of(state: dict[str, Any]) -> float:
        return measure(state, data.val)[key]

    say(f"soup: {method} over {len(ingredients)} ingredient(s), {', '.join(i.name for i in ingredients)}")
    cooked = (soup.greedy(ingredients, score_of, maximize) if method == "greedy"
              else soup.uniform(ingredients, score_of))
    averaged = len(cooked.kept) > 1  # a soup of one is the best ingredient as it is
    val, test = measure(cooked.state, data.val, averaged), measure(cooked.state, data.test, averaged)
    best = max(ingredients, key=lambda i: i.score if maximize else -i.score)
    # The best ingredient as it is (its own BatchNorm statistics: what the search measured), on both splits.
    single_val, single_test = measure(best.state, data.val, False), measure(best.state, data.test, False)
    return SoupResult(method, metric, cooked.kept, cooked.tried,
                      {"val_loss": val["loss"], "val_accuracy": val["accuracy"]},
                      {"test_loss": test["loss"], "test_accuracy": test["accuracy"]},
                      {"name": best.name, "val_accuracy": single_val["accuracy"], "val_loss": single_val["loss"],
                       "test_accuracy": single_test["accuracy"], "test_loss": single_test["loss"]},
                      len(ingredients), images["seen"] if averaged else 0, cooked.state)


def summary_lines(result: SoupResult) -> list[str]:
    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.4f}"

    single = result.best_single
    return [
        f"{result.method} soup of {len(result.ingredients)}/{result.candidates} ingredient(s): "
        f"{', '.join(result.ingredients)}",
        f"  soup:                val_accuracy {pct(result.val['val_accuracy'])}  test_accuracy "
        f"{pct(result.test['test_accuracy'])}"
        + (f"  (BatchNorm measured again on {result.batchnorm_images} training images)" if result.batchnorm_images
           else "  (no other ingredient kept the score up: the soup is the best model as it is)"),
        f"  best single ({single['name']}): val_accuracy {pct(single['val_accuracy'])}  test_accuracy "
        f"{pct(single['test_accuracy'])}",
    ]


def record_soup(study: optuna.Study, spec: Spec, result: SoupResult, found: list[Candidate], storage: str | None,
                tracking_uri: str, out_dir: Any, force: bool) -> dict[str, Any]:
    """Write the soup as an export (the best ingredient's best.yaml, the soup's weights as model.pt, trial.json
    saying what it is) and log it as a child run of the study's parent run; returns trial.json's content."""
    import json
    from pathlib import Path

    from hpsearch.engine.torch_files import save_atomically
    from hpsearch.results.export import export_best
    from hpsearch.results.tables import trial_record
    from hpsearch.tracking import study_runs

    best = found[0]
    export_best(study, trial_record(best.study, best.trial, storage, tracking_uri), Path(out_dir), tracking_uri,
                force=force)
    out = Path(out_dir)
    save_atomically(result.state, out / "model.pt")
    record = {
        "soup": {"method": result.method, "ingredients": result.ingredients, "tried": result.tried,
                 "candidates": result.candidates, "batchnorm_images": result.batchnorm_images},
        "study_name": study.study_name, "metric": result.metric, **result.val, **result.test,
        "best_single": result.best_single, "configuration_of": best.name,
    }
    tracker = study_runs.StudyTracker(tracking_uri, spec.tracking.experiment)
    parent = study_runs.find_parent_run(tracker.client, tracker.experiment_id, study.study_name)
    run = study_runs.TrialRun.start(
        tracker.client, tracker.experiment_id, parent, study.study_name, best.trial.number,
        {"method": result.method, "ingredients": len(result.ingredients), "candidates": result.candidates},
        run_name=f"soup-{result.method}",
        extra_tags={record_keys.TAG_ROLE: "soup", record_keys.TAG_SOUP_INGREDIENTS: json.dumps(result.ingredients)})
    run.log_metrics({**result.val, **result.test, **{f"best_single_{k}": v for k, v in result.best_single.items()
                                                     if k != "name"}})
    run.finish("COMPLETE", checkpoint=result.state)
    record["mlflow_run_id"] = run.run_id
    (out / "trial.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record
