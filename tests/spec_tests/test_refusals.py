"""Every refusal names the dotted path of the field and says what is wrong, in exactly these words."""

import copy

import optuna
import pytest
import yaml

from hpsearch.cli.main import main
from hpsearch.orchestration.builders import hparams_for
from hpsearch.search.suggest import suggest
from hpsearch.spec.study_spec import SpecError, fixed_spec, parse_spec

from .helpers import BASE, DELETE, edited, refusal

SGD_ADAMW = {"type": "categorical", "choices": ["sgd", "adamw"]}
BLOCKS_REQUIRED = ("required when freeze is partial (how many of the last stages train): "
                   "set it under train or search it")

CASES = [
    # top level
    ("studdy", {}, "studdy: unknown key 'studdy' (did you mean 'study'?)"),
    ("foo", 1, "foo: unknown key 'foo' (valid: study, task, train, search_space, resources, tracking)"),
    ("study", DELETE, "study: required"),
    ("task", DELETE, "task: required"),
    ("study", [1], "study: must be a mapping, got a list"),
    # study
    ("study.n_trails", 5, "study.n_trails: unknown key 'n_trails' (did you mean 'n_trials'?)"),
    ("study.n_trials", "ten", "study.n_trials: must be an integer, got 'ten'"),
    ("study.n_trials", True, "study.n_trials: must be an integer, got True"),
    ("study.n_trials", 2.5, "study.n_trials: must be an integer, got 2.5"),
    ("study.n_trials", 0, "study.n_trials: must be > 0, got 0"),
    ("study.name", "my study", "study.name: must be letters, digits, '.', '_' or '-', got 'my study'"),
    ("study.name", "", "study.name: must be letters, digits, '.', '_' or '-', got ''"),
    ("study.metric", "accuracy", "study.metric: must be one of val_accuracy, val_loss, train_loss, got 'accuracy'"),
    ("study.direction", "up", "study.direction: must be one of maximize, minimize, got 'up'"),
    ("study.direction", "minimize", "study.direction: must be maximize for val_accuracy, got 'minimize'"),
    ("study.timeout", "soon", "study.timeout: must be a duration like 8h, 30m, 90s or 1h30m, got 'soon'"),
    ("study.timeout", "0s", "study.timeout: must be > 0, got '0s'"),
    ("study.timeout", True, "study.timeout: must be a duration like 8h, 30m, 90s or 1h30m, got True"),
    ("study.storage", "", "study.storage: must be a non-empty string, got ''"),
    # sampler
    ("study.sampler", {"name": "tpee"}, "study.sampler.name: unknown sampler 'tpee' (did you mean 'tpe'?)"),
    ("study.sampler", {"seed": 1},
     "study.sampler.name: required (tpe, random, gp, cmaes, qmc, grid, nsgaii, nsgaiii)"),
    ("study.sampler", 3, "study.sampler: must be a mapping, got 3"),
    (
        "study.sampler",
        {"name": "tpe", "n_startup": 5},
        "study.sampler.n_startup: unknown key 'n_startup' (did you mean 'n_startup_trials'?)",
    ),
    ("study.sampler", {"name": "random", "foo": 1}, "study.sampler.foo: unknown key 'foo' (the random sampler takes: seed)"),
    (
        "study.sampler",
        {"name": "tpe", "n_startup_trials": "x"},
        "study.sampler.n_startup_trials: must be an integer, got 'x'",
    ),
    ("study.sampler", {"name": "tpe", "multivariate": 1}, "study.sampler.multivariate: must be true or false or null, got 1"),
    (
        "study.sampler",
        {"name": "tpe", "gamma": 0.1},
        "study.sampler.gamma: takes a Python object; it cannot be set from a spec file",
    ),
    (
        "study.sampler",
        {"name": "qmc", "qmc_type": "x"},
        "study.sampler: The `qmc_type='x'` is invalid. Choose either `halton` or `sobol`.",
    ),
    ("study.sampler", {"name": "tpe", "seed": -1}, "study.sampler.seed: must be in [0, 4294967295], got -1"),
    ("study.sampler", {"name": "tpe", "seed": None}, "study.sampler.seed: must be an integer, got None"),
    (
        "study.sampler",
        {"name": "grid"},
        "study.sampler: the grid sampler needs a finite set of values, but search_space.lr is a continuous "
        "float range: give it a step or make it categorical",
    ),
    (
        "study.sampler",
        {"name": "grid", "search_space": {}},
        "study.sampler.search_space: taken from search_space; remove it here",
    ),
    # pruner
    ("study.pruner", {"name": "hyperbnd"}, "study.pruner.name: unknown pruner 'hyperbnd' (did you mean 'hyperband'?)"),
    ("study.pruner", {"name": "percentile"}, "study.pruner.percentile: required by the percentile pruner"),
    (
        "study.pruner",
        {"name": "percentile", "percentile": 150},
        "study.pruner: Percentile must be between 0 and 100 inclusive, but got percentile=150.",
    ),
    (
        "study.pruner",
        {"name": "median", "n_startup_trials": -1},
        "study.pruner: Number of startup trials cannot be negative, but got n_startup_trials=-1.",
    ),
    ("study.pruner", {"name": "threshold"}, "study.pruner: the threshold pruner needs lower, upper or both"),
    ("study.pruner", {"name": "patient"}, "study.pruner.patience: required by the patient pruner"),
    (
        "study.pruner",
        {"name": "patient", "patience": 2, "wrapped_pruner": {"name": "medain"}},
        "study.pruner.wrapped_pruner.name: unknown pruner 'medain' (did you mean 'median'?)",
    ),
    (
        "study.pruner",
        {"name": "median", "wrapped_pruner": "none"},
        "study.pruner.wrapped_pruner: unknown key 'wrapped_pruner' "
        "(the median pruner takes: n_startup_trials, n_warmup_steps, interval_steps, n_min_trials)",
    ),
    ("study.pruner", {"name": "none", "x": 1}, "study.pruner.x: unknown key 'x' (the none pruner takes: none)"),
    # task.model
    ("task.model.name", DELETE, "task.model.name: required"),
    ("task.model", DELETE, "task.model.name: required"),
    ("task.model.name", "mobilenet_v9", "task.model.name: unknown model 'mobilenet_v9' (did you mean 'mobilenet_v2'?)"),
    ("task.model.wieghts", "none", "task.model.wieghts: unknown key 'wieghts' (did you mean 'weights'?)"),
    (
        "task.model.weights",
        "IMAGENET1K_V3",
        "task.model.weights: mobilenet_v2 has no weights 'IMAGENET1K_V3' "
        "(valid: none, IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, or a path to a state_dict file)",
    ),
    ("task.model.weights", "path/x.pt", "task.model.weights: file not found: path/x.pt"),
    ("task.model.weights", "x.pth", "task.model.weights: file not found: x.pth"),
    ("task.model.weights", 3, "task.model.weights: must be none, DEFAULT, a weights name or a file path, got 3"),
    # task.data
    ("task.data.name", DELETE, "task.data.name: required"),
    ("task.data.name", "cifar", "task.data.name: must be one of cifar10, cifar100, imagefolder, digits, fake, got 'cifar'"),
    ("task.data.val_fraction", 1.5, "task.data.val_fraction: must be in (0, 1), got 1.5"),
    ("task.data.val_fraction", 0, "task.data.val_fraction: must be in (0, 1), got 0"),
    ("task.data.image_size", 0, "task.data.image_size: must be > 0, got 0"),
    ("task.data.image_size", 32.0, "task.data.image_size: must be an integer, got 32.0"),
    ("task.data.augment", "heavy", "task.data.augment: must be one of standard, none, got 'heavy'"),
    ("task.data.download", "yes", "task.data.download: must be true or false, got 'yes'"),
    ("task.data.in_memory", "yes", "task.data.in_memory: must be auto, true or false, got 'yes'"),
    ("task.data.num_classes", 0, "task.data.num_classes: must be > 0, got 0"),
    ("task.data.samples", -5, "task.data.samples: must be > 0, got -5"),
    ("task.data.roots", "x", "task.data.roots: unknown key 'roots' (did you mean 'root'?)"),
    # train
    ("train.lern_rate", 0.1, "train.lern_rate: unknown hyperparameter 'lern_rate' (did you mean 'lr'?)"),
    ("train.cuda_graph", "off", "train.cuda_graph: unknown hyperparameter 'cuda_graph' (did you mean 'cuda_graphs'?)"),
    ("train.batch_size", 0, "train.batch_size: must be > 0, got 0"),
    ("train.batch_size", 12.5, "train.batch_size: must be a whole number, got 12.5"),
    ("train.optimizer", "adamx", "train.optimizer: must be one of sgd, adam, adamw, rmsprop, got 'adamx'"),
    ("train.nesterov", "yes", "train.nesterov: must be true or false, got 'yes'"),
    ("train.lr", "fast", "train.lr: must be a number, got 'fast'"),
    ("train.dropout", 1, "train.dropout: must be in [0, 1), got 1"),
    ("train.cuda_graphs", "on", "train.cuda_graphs: must be one of auto, off, got 'on'"),
    ("train.amp", True, "train.amp: must be one of auto, off, got True"),
    ("train", [], "train: must be a mapping, got a list"),
    # train: fine-tuning (BASE trains mobilenet_v2, 19 stages, for 2 epochs)
    ("train.freeze", "head", "train.freeze: must be one of none, backbone, partial, got 'head'"),
    ("train.freeze", "partial", f"train.unfrozen_blocks: {BLOCKS_REQUIRED}"),
    ("train.unfrozen_blocks", 20, "train.unfrozen_blocks: must be <= 19 (the stages mobilenet_v2 has), got 20"),
    ("train.unfrozen_blocks", -1, "train.unfrozen_blocks: must be >= 0, got -1"),
    ("train.unfreeze_epoch", 2, "train.unfreeze_epoch: must be < epochs (2), got 2"),
    ("train.unfreeze_epoch", 0, "train.unfreeze_epoch: must be > 0, got 0"),
    ("train.backbone_lr_scale", 0, "train.backbone_lr_scale: must be in (0, 1], got 0"),
    ("train.backbone_lr_scale", 1.5, "train.backbone_lr_scale: must be in (0, 1], got 1.5"),
    ("train.layer_decay", 0.0, "train.layer_decay: must be in (0, 1], got 0.0"),
    # train: distillation (BASE has no teacher)
    ("train.distill_alpha", 0.5, "train.distill_alpha: applies only with a teacher: set task.teacher, or remove it"),
    ("train.distill_alpha", 1.5, "train.distill_alpha: must be in [0, 1], got 1.5"),
    ("train.distill_temperature", 0, "train.distill_temperature: must be > 0, got 0"),
    # task.teacher (the ones that need files: test_teacher_refusals.py)
    ("task.teacher", "resnet50", "task.teacher: must be a mapping ({export: studies/<study>/best} or {model: NAME, weights: DEFAULT}), got 'resnet50'"),
    ("task.teacher", {}, "task.teacher: required: export (a folder `hpsearch best --export` wrote) or model (a torchvision model, with weights)"),
    ("task.teacher", {"export": "studies/x/best", "model": "resnet50"}, "task.teacher.model: an export names its own model and weights: give export, or model and weights, not both"),
    ("task.teacher", {"export": ""}, "task.teacher.export: must be a non-empty string, got ''"),
    ("task.teacher", {"model": "resnet50", "weigths": "DEFAULT"}, "task.teacher.weigths: unknown key 'weigths' (did you mean 'weights'?)"),
    ("task.teacher", {"model": "resnt50"}, "task.teacher.model: unknown model 'resnt50' (did you mean 'resnet50'?)"),
    ("task.teacher", {"model": "resnet50", "weights": "none"}, "task.teacher.weights: a teacher needs trained weights: DEFAULT, a weights name or a state_dict file, got none"),
    ("task.teacher", {"model": "resnet50", "weights": "nope/r50.pt"}, "task.teacher.weights: file not found: nope/r50.pt"),
    # the class count of torchvision's weights comes from their meta: nothing is downloaded
    ("task.teacher", {"model": "resnet50"}, "task.teacher.weights: resnet50 with weights DEFAULT predicts 1000 classes; the task (fake) has 10"),
    ("task.teacher", {"model": "resnet50", "weights": "IMAGENET1K_V1"}, "task.teacher.weights: resnet50 with weights IMAGENET1K_V1 predicts 1000 classes; the task (fake) has 10"),
    # search_space: names and entries
    ("search_space.lern_rate", {"type": "float"}, "search_space.lern_rate: unknown hyperparameter 'lern_rate' (did you mean 'lr'?)"),
    ("search_space.cuda_graphs", SGD_ADAMW, "search_space.cuda_graphs: is a setting, not a hyperparameter: set it under train"),
    ("search_space.lr", 0.1, "search_space.lr: must be a mapping with a type (to fix a value, put it under train), got 0.1"),
    ("search_space.lr.type", DELETE, "search_space.lr.type: required (float, int, categorical)"),
    ("search_space.lr.type", "loguniform", "search_space.lr.type: must be one of float, int, categorical, got 'loguniform'"),
    ("search_space.lr.lg", True, "search_space.lr.lg: unknown key 'lg' (did you mean 'log'?)"),
    ("search_space.optimizer.low", 1, "search_space.optimizer.low: unknown key 'low' (valid: type, choices, when)"),
    ("search_space.warmup_epochs", {"type": "float", "low": 1, "high": 5},
     "search_space.warmup_epochs.type: warmup_epochs takes whole numbers: use int or categorical, got 'float'"),
    ("search_space.lr.type", "int", "search_space.lr.type: lr takes real numbers: use float or categorical, got 'int'"),
    ("search_space.optimizer", {"type": "float", "low": 0, "high": 1},
     "search_space.optimizer.type: optimizer takes one of a fixed set of values: use categorical, got 'float'"),
    ("search_space.nesterov", {"type": "int", "low": 0, "high": 1},
     "search_space.nesterov.type: nesterov takes one of a fixed set of values: use categorical, got 'int'"),
    # search_space: ranges
    ("search_space.lr.high", DELETE, "search_space.lr.high: required"),
    ("search_space.lr", {"type": "float", "low": 0.1, "high": 0.01},
     "search_space.lr: low must be < high, got low=0.1, high=0.01"),
    # low == high: refused by decision (Optuna would accept it as a fixed value), see space._parse_param
    ("search_space.lr", {"type": "float", "low": 0.1, "high": 0.1},
     "search_space.lr: low equals high (to fix a value, put it under train), got low=0.1, high=0.1"),
    ("search_space.lr.low", 0, "search_space.lr.low: must be > 0 when log is true, got 0"),
    ("search_space.lr", {"type": "float", "low": -1, "high": 0.1}, "search_space.lr.low: must be > 0, got -1"),
    ("search_space.lr.low", "abc", "search_space.lr.low: must be a number, got 'abc'"),
    ("search_space.lr.log", "yes", "search_space.lr.log: must be true or false, got 'yes'"),
    ("search_space.dropout", {"type": "float", "low": 0.0, "high": 1},
     "search_space.dropout.high: must be in [0, 1), got 1"),
    ("search_space.batch_size", {"type": "int", "low": 0, "high": 64, "log": True},
     "search_space.batch_size.low: must be >= 1 when log is true, got 0"),
    ("search_space.batch_size", {"type": "int", "low": 0, "high": 64},
     "search_space.batch_size.low: must be > 0, got 0"),
    ("search_space.warmup_epochs", {"type": "int", "low": 2.5, "high": 6}, "search_space.warmup_epochs.low: must be an integer, got 2.5"),
    ("search_space.warmup_epochs", {"type": "int", "low": 2, "high": 6, "step": 0}, "search_space.warmup_epochs.step: must be > 0, got 0"),
    ("search_space.warmup_epochs", {"type": "int", "low": 2, "high": 6, "step": 1.5},
     "search_space.warmup_epochs.step: must be an integer, got 1.5"),
    ("search_space.warmup_epochs", {"type": "int", "low": 2, "high": 7, "step": 2},
     "search_space.warmup_epochs.step: high - low must be a multiple of step, got low=2, high=7, step=2"),
    ("search_space.dropout", {"type": "float", "low": 0.0, "high": 0.5, "step": 0.3},
     "search_space.dropout.step: high - low must be a multiple of step, got low=0.0, high=0.5, step=0.3"),
    ("search_space.lr.step", 0.01, "search_space.lr.step: cannot be combined with log: true"),
    # search_space: fine-tuning ranges and choices, every value checked
    ("search_space.unfrozen_blocks", {"type": "int", "low": 1, "high": 25},
     "search_space.unfrozen_blocks.high: must be <= 19 (the stages mobilenet_v2 has), got 25"),
    ("search_space.unfrozen_blocks", {"type": "categorical", "choices": [2, 30]},
     "search_space.unfrozen_blocks.choices[1]: must be <= 19 (the stages mobilenet_v2 has), got 30"),
    ("search_space.unfreeze_epoch", {"type": "int", "low": 1, "high": 3},
     "search_space.unfreeze_epoch.high: must be < epochs (2), got 3"),
    ("search_space.freeze", {"type": "categorical", "choices": ["none", "partial"]},
     f"train.unfrozen_blocks: {BLOCKS_REQUIRED}"),
    ("search_space.layer_decay", {"type": "float", "low": 0.5, "high": 1.2},
     "search_space.layer_decay.high: must be in (0, 1], got 1.2"),
    ("search_space.backbone_lr_scale", {"type": "float", "low": 0.0, "high": 1.0, "log": False},
     "search_space.backbone_lr_scale.low: must be in (0, 1], got 0.0"),
    ("search_space.distill_alpha", {"type": "float", "low": 0.0, "high": 1.5},
     "search_space.distill_alpha.high: must be in [0, 1], got 1.5"),
    ("search_space.distill_temperature", {"type": "float", "low": 1.0, "high": 8.0},
     "search_space.distill_temperature: applies only with a teacher: set task.teacher, or remove it"),
    # search_space: choices
    ("search_space.optimizer.choices", [], "search_space.optimizer.choices: must be a non-empty list, got []"),
    ("search_space.optimizer.choices", "sgd", "search_space.optimizer.choices: must be a non-empty list, got 'sgd'"),
    ("search_space.optimizer.choices", DELETE, "search_space.optimizer.choices: required"),
    ("search_space.optimizer.choices", ["sgd", "adamx"],
     "search_space.optimizer.choices[1]: must be one of sgd, adam, adamw, rmsprop, got 'adamx'"),
    ("search_space.optimizer.choices", ["sgd", "sgd"], "search_space.optimizer.choices[1]: 'sgd' is already choices[0]"),
    ("search_space.batch_size", {"type": "categorical", "choices": [32, 0]},
     "search_space.batch_size.choices[1]: must be > 0, got 0"),
    ("search_space.batch_size", {"type": "categorical", "choices": [32, 48.5]},
     "search_space.batch_size.choices[1]: must be a whole number, got 48.5"),
    # when:
    ("search_space.momentum.when", {"optimiser": "sgd"},
     "search_space.momentum.when.optimiser: 'optimiser' is not a parameter in search_space or train "
     "(did you mean 'optimizer'?)"),
    ("search_space.momentum.when", {"optimizer": "adam"},
     "search_space.momentum.when.optimizer: optimizer never takes 'adam' (its choices: sgd, adamw)"),
    ("search_space.momentum.when", {"optimizer": ["sgd", "rmsprop"]},
     "search_space.momentum.when.optimizer: optimizer never takes 'rmsprop' (its choices: sgd, adamw)"),
    ("search_space.momentum.when", {}, "search_space.momentum.when: must be a mapping of parameter: value or [values], got {}"),
    ("search_space.momentum.when", "sgd",
     "search_space.momentum.when: must be a mapping of parameter: value or [values], got 'sgd'"),
    ("search_space.momentum.when", {"optimizer": []}, "search_space.momentum.when.optimizer: must name at least one value"),
    ("search_space.momentum.when", {"momentum": 0.9}, "search_space.momentum.when.momentum: a parameter cannot depend on itself"),
    ("search_space.momentum.when", {"lr": 0.01},
     "search_space.momentum.when.lr: lr is a float range; a condition needs a categorical or int parameter"),
    ("search_space.momentum.when", {"epochs": 3}, "search_space.momentum.when.epochs: never true: train.epochs is 2"),
    ("search_space.momentum.when", {"epochs": 0}, "search_space.momentum.when.epochs: must be > 0, got 0"),
    # resources
    ("resources.devices", "gpu", "resources.devices: must be auto, cpu, or GPU indices like 0,1 or [0, 1], got 'gpu'"),
    ("resources.devices", [-1], "resources.devices: must be auto, cpu, or GPU indices like 0,1 or [0, 1], got [-1]"),
    ("resources.devices", [], "resources.devices: must be auto, cpu, or GPU indices like 0,1 or [0, 1], got []"),
    ("resources.devices", "0,1,0", "resources.devices: lists a GPU twice, got '0,1,0'"),
    ("resources.trials_per_device", 0, "resources.trials_per_device: must be > 0, got 0"),
    ("resources.trials_per_device", "many", "resources.trials_per_device: must be auto or a whole number > 0, got 'many'"),
    ("resources.gpus", 1, "resources.gpus: unknown key 'gpus' (valid: devices, trials_per_device)"),
    # tracking
    ("tracking.checkpoints", "best", "tracking.checkpoints: must be one of complete, all, none, got 'best'"),
    ("tracking.uri", "", "tracking.uri: must be a non-empty string, got ''"),
    ("tracking.experiment", 5, "tracking.experiment: must be a non-empty string, got 5"),
    ("tracking.experiement", "x", "tracking.experiement: unknown key 'experiement' (did you mean 'experiment'?)"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[c[0] for c in CASES])
def test_refusal(path, value, message):
    assert refusal(edited(path, value)) == message


def test_a_parameter_may_be_fixed_and_searched():
    # train: holds the fallback value, used when the searched one is absent (its when: is false).
    data = edited("train.lr", 0.1)
    spec = parse_spec(data)
    assert spec.train["lr"] == 0.1
    assert "lr" in spec.search_space


def test_condition_on_an_int_range():
    data = edited("search_space.warmup_epochs", {"type": "int", "low": 2, "high": 8, "step": 2})
    data["search_space"]["momentum"]["when"] = {"warmup_epochs": [4, 5]}
    assert refusal(data) == "search_space.momentum.when.warmup_epochs: warmup_epochs never takes 5 (it ranges over 2..8)"


def test_circular_conditions():
    data = edited("search_space.optimizer.when", {"momentum": 0.9})
    data["search_space"]["momentum"]["type"] = "categorical"
    data["search_space"]["momentum"]["choices"] = [0.9, 0.95]
    del data["search_space"]["momentum"]["low"], data["search_space"]["momentum"]["high"]
    assert refusal(data) == "search_space.momentum.when.optimizer: circular condition: optimizer → momentum → optimizer"


def test_not_a_mapping():
    assert refusal([1, 2]) == "spaces/t.yaml: must be a mapping of sections (study, task, train, search_space, resources, tracking), got a list"


def test_name_needs_a_file_or_a_value():
    data = edited("study.name", DELETE)
    assert refusal(data, source=None) == "study.name: required (there is no file to take the name from)"
    assert refusal(data, source="spaces/my space.yaml") == (
        "study.name: the file's stem 'my space' is not a valid study name: set study.name"
    )


def test_base_validates_so_each_refusal_is_its_one_edit(tmp_path, capsys):
    """The refusals above edit one field of BASE: `hpsearch validate` accepts BASE itself, unedited."""
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert exc.value.code == 0
    assert err == ""
    assert f"{path}: valid" in out
    assert "searching 3 hyperparameter(s)" in out


# plateau's factor is gamma, and ReduceLROnPlateau refuses a factor of 1: refused here, not mid-trial.
PLATEAU_OR_STEP = {"type": "categorical", "choices": ["step", "plateau"]}
GAMMA_TO_ONE = {"type": "float", "low": 0.1, "high": 1.0}
PLATEAU_GAMMA = "must be < 1 when scheduler is plateau (the factor that cuts lr), got"


def with_fields(**fields) -> dict:
    """BASE with each dotted field (written with __ for the dots) set."""
    data = copy.deepcopy(BASE)
    for path, value in fields.items():
        *parents, last = path.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return data


@pytest.mark.parametrize(("fields", "message"), [
    (dict(train__scheduler="plateau", train__gamma=1.0), f"train.gamma: {PLATEAU_GAMMA} 1.0"),
    (dict(train__scheduler="plateau", train__gamma=1), f"train.gamma: {PLATEAU_GAMMA} 1.0"),
    (dict(search_space__scheduler=PLATEAU_OR_STEP, train__gamma=1.0), f"train.gamma: {PLATEAU_GAMMA} 1.0"),
    (dict(train__scheduler="plateau", search_space__gamma=GAMMA_TO_ONE),
     f"search_space.gamma.high: {PLATEAU_GAMMA} 1.0"),
    (dict(search_space__scheduler=PLATEAU_OR_STEP, search_space__gamma={"type": "categorical", "choices": [0.5, 1.0]}),
     f"search_space.gamma.choices[1]: {PLATEAU_GAMMA} 1.0"),
    # searched for plateau among others: its range counts
    (dict(search_space__scheduler=PLATEAU_OR_STEP,
          search_space__gamma={**GAMMA_TO_ONE, "when": {"scheduler": ["step", "plateau"]}}),
     f"search_space.gamma.high: {PLATEAU_GAMMA} 1.0"),
    # searched for step only: plateau trials train with train's gamma
    (dict(search_space__scheduler=PLATEAU_OR_STEP, train__gamma=1.0,
          search_space__gamma={"type": "float", "low": 0.1, "high": 0.5, "when": {"scheduler": "step"}}),
     f"train.gamma: {PLATEAU_GAMMA} 1.0"),
    # a conditional scheduler falls back to train's plateau, and then gamma's condition is false too
    (dict(train__scheduler="plateau", train__gamma=1.0,
          search_space__scheduler={**PLATEAU_OR_STEP, "when": {"optimizer": "sgd"}},
          search_space__gamma={"type": "float", "low": 0.1, "high": 0.5, "when": {"scheduler": "plateau"}}),
     f"train.gamma: {PLATEAU_GAMMA} 1.0"),
])
def test_plateau_refuses_a_gamma_of_one(fields, message):
    assert refusal(with_fields(**fields)) == message


@pytest.mark.parametrize(("fields", "plateau_trains"), [
    # step with gamma 1: no decay, allowed
    pytest.param(dict(train__scheduler="step", train__gamma=1.0), False, id="step-with-gamma-1"),
    pytest.param(dict(train__scheduler="plateau", train__gamma=0.5), True, id="plateau-with-gamma-0.5"),
    pytest.param(dict(search_space__scheduler={"type": "categorical", "choices": ["step", "cosine"]},
                      search_space__gamma=GAMMA_TO_ONE), False, id="gamma-to-1-never-with-plateau"),
    # gamma searched for step only; plateau trials train with train's (default 0.1) gamma
    pytest.param(dict(search_space__scheduler=PLATEAU_OR_STEP,
                      search_space__gamma={**GAMMA_TO_ONE, "when": {"scheduler": "step"}}),
                 True, id="gamma-to-1-searched-for-step-only"),
    # gamma searched for every trial: train's 1.0 is never used
    pytest.param(dict(train__scheduler="plateau", train__gamma=1.0,
                      search_space__gamma={"type": "float", "low": 0.1, "high": 0.9}),
                 True, id="train-gamma-1-always-overridden"),
    # searched whenever plateau is chosen: train's 1.0 only meets step
    pytest.param(dict(search_space__scheduler=PLATEAU_OR_STEP, train__gamma=1.0,
                      search_space__gamma={"type": "float", "low": 0.1, "high": 0.9, "when": {"scheduler": "plateau"}}),
                 True, id="train-gamma-1-only-meets-step"),
])
def test_gamma_of_one_is_fine_where_plateau_never_meets_it(fields, plateau_trains):
    """Accepted, and rightly: no trial the space can draw trains plateau with gamma 1, and every trial's values
    make a fixed spec that `hpsearch train` (after `best --export`) accepts."""
    spec = parse_spec(with_fields(**fields))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    schedulers = set()
    for _ in range(30):
        trial = study.ask()
        searched = suggest(trial, spec.search_space, spec.train)
        hp = hparams_for(spec, searched)  # what the trial trains with
        schedulers.add(hp.scheduler)
        assert hp.scheduler != "plateau" or hp.gamma < 1, searched
        fixed_spec(spec, searched)
        study.tell(trial, 0.0)
    assert ("plateau" in schedulers) == plateau_trains  # where plateau can train, the check above met it


def test_fixed_spec_refuses_plateau_with_a_gamma_of_one():
    spec = parse_spec(BASE)
    with pytest.raises(SpecError) as info:
        fixed_spec(spec, {"scheduler": "plateau", "gamma": 1.0})
    assert str(info.value) == f"train.gamma: {PLATEAU_GAMMA} 1.0"


@pytest.mark.parametrize(("fields", "line"), [
    pytest.param(dict(train__scheduler="plateau", train__gamma=1.0), f"train.gamma: {PLATEAU_GAMMA} 1.0",
                 id="plateau-with-gamma-1"),
    pytest.param(dict(train__freeze="partial", train__unfrozen_blocks=25),
                 "train.unfrozen_blocks: must be <= 19 (the stages mobilenet_v2 has), got 25", id="unfrozen-blocks"),
])
def test_validate_command_refuses_with_one_line(tmp_path, capsys, fields, line):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(with_fields(**fields)))
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.strip().splitlines() == [f"error: {line}"]


PARTIAL_OR_BACKBONE = {"type": "categorical", "choices": ["backbone", "partial"]}


@pytest.mark.parametrize(("fields", "message"), [
    # epochs searched: unfreeze_epoch must come before the fewest
    (dict(train__epochs=DELETE, search_space__epochs={"type": "int", "low": 3, "high": 6}, train__unfreeze_epoch=3),
     "train.unfreeze_epoch: must be < epochs (3 at the fewest, search_space.epochs.low), got 3"),
    # searched only for other freeze modes: a partial trial would have none
    (dict(search_space__freeze=PARTIAL_OR_BACKBONE,
          search_space__unfrozen_blocks={"type": "int", "low": 1, "high": 4, "when": {"freeze": "backbone"}}),
     f"train.unfrozen_blocks: {BLOCKS_REQUIRED}"),
    # searched when freeze is partial, but freeze itself can fall back to train's partial, where it is not searched
    (dict(train__freeze="partial", search_space__freeze={**PARTIAL_OR_BACKBONE, "when": {"optimizer": "sgd"}},
          search_space__unfrozen_blocks={"type": "int", "low": 1, "high": 4, "when": {"freeze": "partial"}}),
     f"train.unfrozen_blocks: {BLOCKS_REQUIRED}"),
])
def test_finetuning_refusals_across_fields(fields, message):
    data = with_fields(**{k: v for k, v in fields.items() if v is not DELETE})
    for path in (k for k, v in fields.items() if v is DELETE):
        section, key = path.split("__")
        del data[section][key]
    assert refusal(data) == message


@pytest.mark.parametrize("fields", [
    pytest.param(dict(train__freeze="partial", train__unfrozen_blocks=19, train__unfreeze_epoch=1), id="fixed"),
    pytest.param(dict(search_space__freeze=PARTIAL_OR_BACKBONE,
                      search_space__unfrozen_blocks={"type": "int", "low": 0, "high": 19, "when": {"freeze": "partial"}}),
                 id="searched-when-partial"),
    pytest.param(dict(train__epochs=4, search_space__unfreeze_epoch={"type": "int", "low": 1, "high": 3},
                      search_space__layer_decay={"type": "float", "low": 0.5, "high": 1.0},
                      search_space__backbone_lr_scale={"type": "float", "low": 0.01, "high": 1.0, "log": True}),
                 id="searched-rates"),
])
def test_finetuning_values_every_trial_can_train_with_are_accepted(fields):
    spec = parse_spec(with_fields(**fields))
    assert fixed_spec(spec, {}).train == spec.train
