"""Broken and hostile space files: each is refused with exit 2 and one short line naming the field, fast,
never a traceback (non-finite and oversized numbers, duplicate keys, dot-only study names, deep nesting,
aliases, merge keys, control bytes, huge values); and the files a space file leads to (a teacher's export), a
FIFO given as one, worker counts. Each kind is a table: a new finding is one more row."""

import time

import pytest
import yaml

from hpsearch.cli.main import main
from hpsearch.core.checks import shown
from hpsearch.spec import strict_yaml
from hpsearch.spec.study_spec import SpecError, apply_overrides, load_spec, parse_spec

from .helpers import BASE, edited

TASK = "task: {model: {name: mobilenet_v2, weights: none}, data: {name: fake}}\n"
HEAD = "study: {name: t}\n" + TASK
LONGEST = 430  # no message is longer than this, whatever the file holds (SpecError: 120-char path, 300-char message)
INT64 = "must be < 9223372036854775808"


def study(fields: str) -> str:
    return f"study: {{name: t, {fields}}}\n" + TASK


# (id, file text, the message after "<file>: " or the dotted path; {file} is the file's path)
CASES = [
    # non-finite numbers, wherever a number goes (also parsed from text: 1e999)
    ("train-inf", HEAD + "train: {lr: .inf}\n", "train.lr: must be a finite number, got inf"),
    ("train-minus-inf", HEAD + "train: {lr: -.inf}\n", "train.lr: must be a finite number, got -inf"),
    ("train-nan", HEAD + "train: {momentum: .nan}\n", "train.momentum: must be a finite number, got nan"),
    ("train-text-inf", HEAD + "train: {lr: 1e999}\n", "train.lr: must be a finite number, got '1e999'"),
    ("low-nan", HEAD + "search_space:\n  lr: {type: float, low: .nan, high: 0.1}\n",
     "search_space.lr.low: must be a finite number, got nan"),
    ("high-inf", HEAD + "search_space:\n  lr: {type: float, low: 0.1, high: .inf}\n",
     "search_space.lr.high: must be a finite number, got inf"),
    ("high-text-inf", HEAD + "search_space:\n  lr: {type: float, low: 0.1, high: 1e999}\n",
     "search_space.lr.high: must be a finite number, got '1e999'"),
    ("step-nan", HEAD + "search_space:\n  dropout: {type: float, low: 0.1, high: 0.5, step: .nan}\n",
     "search_space.dropout.step: must be a finite number, got nan"),
    ("choice-inf", HEAD + "search_space:\n  batch_size: {type: categorical, choices: [32, .inf]}\n",
     "search_space.batch_size.choices[1]: must be a finite number, got inf"),
    ("when-nan", HEAD + "train: {epochs: 2}\n"
     "search_space:\n  lr: {type: float, low: 0.01, high: 0.1, when: {epochs: .nan}}\n",
     "search_space.lr.when.epochs: must be a finite number, got nan"),
    ("val-fraction-nan", "study: {name: t}\ntask: {model: {name: mobilenet_v2, weights: none}, "
     "data: {name: fake, val_fraction: .nan}}\n", "task.data.val_fraction: must be a finite number, got nan"),
    ("timeout-inf", study("timeout: .inf"), "study.timeout: must be a duration like 8h, 30m, 90s or 1h30m, got inf"),
    ("timeout-text-inf", study("timeout: '" + "9" * 400 + "'"),
     f"study.timeout: must be at most 100 years, got {shown('9' * 400)}"),
    ("pruner-nan", study("pruner: {name: threshold, lower: .nan}"),
     "study.pruner.lower: must be a finite number, got nan"),
    ("sampler-inf", study("sampler: {name: tpe, prior_weight: .inf}"),
     "study.sampler.prior_weight: must be a finite number, got inf"),
    # integers too large for a float, or for int64 where an integer goes
    ("float-bound-10e400", HEAD + "search_space:\n  lr: {type: float, low: 0.1, high: 1" + "0" * 400 + "}\n",
     "search_space.lr.high: must be a finite number, got an integer of about 401 digits"),
    ("int-bound-10e30", HEAD + "search_space:\n  batch_size: {type: int, low: 1, high: 1" + "0" * 30 + "}\n",
     f"search_space.batch_size.high: {INT64}, got 1" + "0" * 30),
    ("train-int-10e400", HEAD + "train: {batch_size: 1" + "0" * 400 + "}\n",
     f"train.batch_size: {INT64}, got an integer of about 401 digits"),
    ("n-trials-10e30", study("n_trials: 1" + "0" * 30), f"study.n_trials: {INT64}, got 1" + "0" * 30),
    ("hex-6000-digits", HEAD + "train: {epochs: 0x" + "f" * 5000 + "}\n",
     f"train.epochs: {INT64}, got an integer of about 6021 digits"),
    ("decimal-5000-digits", HEAD + "train: {epochs: 1" + "0" * 5000 + "}\n",
     f"{{file}}: invalid YAML at line 3, column 17: cannot read {shown('1' + '0' * 5000)} as int: "
     "Exceeds the limit (4300 digits) for integer string conversion"),
    ("device-10e30", HEAD + "resources: {devices: [1" + "0" * 30 + "]}\n",
     "resources.devices: must be auto, cpu, or GPU indices like 0,1 or [0, 1], got [1" + "0" * 30 + "]"),
    ("bad-timestamp", HEAD + "tracking: {experiment: 2024-13-45}\n",
     "{file}: invalid YAML at line 3, column 24: cannot read '2024-13-45' as timestamp: month must be in 1..12"),
    # duplicate keys, at any level (quoted or not, a key is the same key)
    ("duplicate-section", HEAD + "study: {name: u}\n", "{file}: duplicate key 'study' (line 3)"),
    ("duplicate-bound", HEAD + "search_space:\n  lr:\n    type: float\n    low: 0.01\n    high: 0.1\n    'low': 0.02\n",
     "search_space.lr: duplicate key 'low' (line 8)"),
    ("duplicate-in-flow", study("sampler: {name: tpe, seed: 1, seed: 2}"),
     "study.sampler: duplicate key 'seed' (line 1)"),
    ("duplicate-in-list-item", HEAD + "resources: {devices: [{a: 1, a: 2}]}\n",
     "resources.devices[0]: duplicate key 'a' (line 3)"),
    # study names made of dots would be paths out of studies/
    ("name-dot", "study: {name: .}\n" + TASK, "study.name: must not be only dots, got '.'"),
    ("name-dot-dot", "study: {name: '..'}\n" + TASK, "study.name: must not be only dots, got '..'"),
    ("name-too-long", "study: {name: " + "n" * 129 + "}\n" + TASK,
     f"study.name: must be at most 128 characters, got {shown('n' * 129)}"),
    # nesting that would exhaust the composer's recursion
    ("deep-lists", HEAD + "train: {lr: " + "[" * 100_000 + "]" * 100_000 + "}\n",
     "{file}: invalid YAML at line 3, column 61: nested deeper than 50 levels"),
    ("deep-mappings", HEAD + "train: " + "{a: " * 40_000 + "1" + "}" * 40_000 + "\n",
     "{file}: invalid YAML at line 3, column 201: nested deeper than 50 levels"),
    # aliases, and so alias bombs
    ("alias", HEAD + "x: &a [1]\ny: *a\n",
     "{file}: invalid YAML at line 4, column 4: aliases are not allowed in a space file, got *a"),
    ("billion-laughs", "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
     + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)),
     "{file}: invalid YAML at line 2, column 8: aliases are not allowed in a space file, got *a"),
    # huge values are quoted through the capped repr
    ("long-string", HEAD + "train: {optimizer: '" + "a" * 200_000 + "'}\n",
     f"train.optimizer: must be one of sgd, adam, adamw, rmsprop, got {shown('a' * 200_000)}"),
    ("long-list", HEAD + "train: {lr: [" + ", ".join(["1"] * 20_000) + "]}\n",
     "train.lr: must be a number, got [1, 1, 1, 1, 1, 1, ...]"),
    ("too-large-file", HEAD + "#" + "x" * 300_000 + "\n", "{file}: is larger than 256 KiB: not a space file"),
    # control bytes, which PyYAML refuses before it reads a line (the message names the byte, never prints it)
    ("control-nul", HEAD + "train: {optimizer: 'a\x00b'}\n",
     "{file}: invalid YAML at line 3, column 22: control character U+0000 is not allowed"),
    ("control-esc", HEAD + "train: {optimizer: sgd}  # \x1b[2J\n",
     "{file}: invalid YAML at line 3, column 28: control character U+001B is not allowed"),
    ("control-bel-in-key", "\x07: 1\n" + HEAD,
     "{file}: invalid YAML at line 1, column 1: control character U+0007 is not allowed"),
    # merge keys: `<<` values never meet the duplicate-key check, and the first merged mapping wins silently
    ("merge-key-twice", "study: {name: t, <<: {n_trials: 3}, <<: {n_trials: 4}}\n" + TASK,
     "{file}: invalid YAML at line 1, column 18: merge keys (<<) are not allowed in a space file"),
    ("merge-key-list", "study:\n  name: t\n  <<: [{n_trials: 3}, {n_trials: 4}]\n" + TASK,
     "{file}: invalid YAML at line 3, column 3: merge keys (<<) are not allowed in a space file"),
    # a bound on the worker processes (each holds a copy of the data and the model)
    ("trials-per-device-huge", HEAD + "resources: {trials_per_device: 1000000000}\n",
     "resources.trials_per_device: must be at most 64, got 1000000000"),
    # low == high: refused by decision (see space._parse_param), also when only the floats are equal
    ("int-range-of-one", HEAD + "search_space:\n  batch_size: {type: int, low: 64, high: 64}\n",
     "search_space.batch_size: low equals high (to fix a value, put it under train), got low=64, high=64"),
    ("float-range-of-one",
     HEAD + "search_space:\n  lr: {type: float, low: 100000000000000000, high: 100000000000000001}\n",
     "search_space.lr: low equals high (to fix a value, put it under train), "
     "got low=100000000000000000, high=100000000000000001"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_by_load_spec_and_validate(tmp_path, capsys, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    expected = message.format(file=path)
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == expected
    assert time.monotonic() - started < 10  # whatever the file holds (torchvision's import is ~2 s of it)
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.splitlines() == [f"error: {expected}"]
    assert len(err) < LONGEST


def test_huge_keys_and_tags_make_short_messages(tmp_path):
    for text in (
        HEAD + "search_space:\n  ? " + "k" * 200_000 + "\n  : 1\n",  # an explicit key may be any length
        HEAD + "? " + "k" * 200_000 + "\n: 1\n",
        HEAD + "train: !" + "t" * 100_000 + " 1\n",
    ):
        path = tmp_path / "s.yaml"
        path.write_text(text)
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert len(str(info.value)) < LONGEST
        assert "\n" not in str(info.value)


def test_a_dot_only_file_stem_is_no_study_name(tmp_path):
    path = tmp_path / "..yaml"  # stem '.'
    path.write_text("study: {}\n" + TASK)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == "study.name: the file's stem '.' is not a valid study name: set study.name"


def test_names_with_dots_among_other_characters_are_fine():
    assert parse_spec(edited("study.name", "v1.2")).study.name == "v1.2"
    assert parse_spec(edited("study.name", ".hidden")).study.name == ".hidden"


def test_study_name_option_refuses_dots():
    with pytest.raises(SpecError) as info:
        apply_overrides(parse_spec(BASE), study_name="..")
    assert str(info.value) == "--study-name: must not be only dots, got '..'"


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CASES if c[0].startswith("control-")],
                         ids=[c[0] for c in CASES if c[0].startswith("control-")])
def test_control_bytes_in_any_command_s_file(tmp_path, capsys, command, text, message):
    """A `train` config is read as a space file is: the same one line naming its file and line."""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main([command, str(path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message.format(file=path)}"]


# (id, files written over a complete export, the line `validate` prints); {dir} is the export folder
TEACHER_CASES = [
    ("best-yaml-control-byte", {"best.yaml": "task: {model: {name: mobilenet_v3_small, weights: 'n\x1bone'}}\n"},
     "task.teacher.export: {dir}/best.yaml: invalid YAML at line 1, column 53: control character U+001B is not "
     "allowed"),
    ("best-yaml-merge-key",
     {"best.yaml": "task:\n  <<: {model: {name: alexnet}}\n  model: {name: mobilenet_v3_small}\n"},
     "task.teacher.export: {dir}/best.yaml: invalid YAML at line 2, column 3: merge keys (<<) are not allowed in a "
     "space file"),
    ("trial-json-deep", {"trial.json": "[" * 100_000 + "]" * 100_000},
     "task.teacher.export: {dir}/trial.json: nested too deeply to read"),
    ("trial-json-huge", {"trial.json": "[" * 200_000 + "]" * 200_000},
     "task.teacher.export: {dir}/trial.json: is larger than 256 KiB: not a trial record"),
]


@pytest.mark.parametrize(("files", "message"), [c[1:] for c in TEACHER_CASES], ids=[c[0] for c in TEACHER_CASES])
def test_hostile_teacher_files_are_blamed_on_the_teacher(tmp_path, capsys, files, message):
    import yaml as pyyaml

    from .helpers import BASE
    from .test_teacher_refusals import write_export

    export = write_export(tmp_path / "teacher")
    for name, text in files.items():
        (export / name).write_text(text)
    space = dict(BASE, task={"model": BASE["task"]["model"], "teacher": {"export": str(export)},
                             "data": {"name": "fake", "image_size": 16}})
    path = tmp_path / "s.yaml"
    path.write_text(pyyaml.safe_dump(space))
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message.format(dir=export)}"]


def test_a_fifo_or_a_device_is_no_space_file(tmp_path):
    """`validate` on a FIFO blocked forever in open(); a device never ends. Both are one line, at once."""
    import os

    from ..support import run_cli

    fifo = tmp_path / "s.yaml"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        result = run_cli("validate", str(path), cwd=tmp_path, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"error: {path}: is not a regular file"]


def test_trials_per_device_is_bounded_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(HEAD)
    with pytest.raises(SystemExit) as exc:
        main(["run", str(path), "--trials-per-device", "1000000000"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --trials-per-device: must be at most 64, got 1000000000"]


def test_no_more_workers_than_trials_left(monkeypatch):
    from hpsearch.orchestration.devices import plan_slots

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    assert len(plan_slots("auto", 64, gpu_count=2, trials_left=3)) == 3
    assert [s.gpu for s in plan_slots("auto", 4, gpu_count=2, trials_left=3)] == [0, 0, 1]
    # CPU slots split the cores between the trials there are
    assert [s.threads for s in plan_slots("cpu", "auto", gpu_count=0, cpu_count=8, trials_left=2)] == [4, 4]
    assert plan_slots("cpu", 3, gpu_count=0, cpu_count=2, trials_left=0) == []


def test_a_run_starts_no_more_workers_than_trials_left(tmp_path, monkeypatch):
    """`run` plans its slots for the trials left: 2 trials with --trials-per-device 8 start 2 workers."""
    from hpsearch.cli.live import LiveView
    from hpsearch.orchestration import runner

    class Planned(Exception):
        pass

    planned = []

    class Orchestrator:  # records the slots instead of starting a worker for each
        undelivered: list[str] = []

        def __init__(self, spec, study, slots, *args):
            planned.append(len(slots))

        def run(self, timeout):
            raise Planned

    monkeypatch.setattr(runner, "Orchestrator", Orchestrator)
    monkeypatch.chdir(tmp_path)  # the study's journal and MLflow store
    spec = apply_overrides(parse_spec(edited("study.n_trials", 2)), devices="cpu", trials_per_device="8")
    with pytest.raises(Planned):
        runner.run_study(spec, LiveView(spec.study.metric, spec.study.direction, 2, interactive=False))
    assert planned == [2]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("trials_per_device", "1000000000", "--trials-per-device: must be at most 64, got 1000000000"),
    ("timeout", "9" * 400, f"--timeout: must be at most 100 years, got {shown('9' * 400)}"),
    ("n_trials", "9" * 25, f"--n-trials: {INT64}, got {'9' * 25}"),
    ("n_trials", "²", "--n-trials: must be an integer, got '²'"),  # str.isdigit() is true of it, int() refuses it
    ("devices", "²", "--devices: must be auto, cpu, or GPU indices like 0,1 or [0, 1], got '²'"),
])
def test_options_parsed_from_text(option, value, message):
    with pytest.raises(SpecError) as info:
        apply_overrides(parse_spec(BASE), **{option: value})
    assert str(info.value) == message


def test_non_finite_values_given_as_python_data():
    """parse_spec (also fed by exports and trials' values) refuses them like the file reader does."""
    assert refusal_of(edited("train.lr", float("inf"))) == "train.lr: must be a finite number, got inf"
    assert refusal_of(edited("study.sampler", {"name": "tpe", "prior_weight": float("nan")})) == (
        "study.sampler.prior_weight: must be a finite number, got nan"
    )


def refusal_of(data) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return str(info.value)


def test_a_recursion_error_anywhere_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def too_deep(text, where):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(strict_yaml, "load", too_deep)
    path = tmp_path / "s.yaml"
    path.write_text(HEAD)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: nested too deeply to read"


def test_anchors_and_deep_enough_nesting_still_load(tmp_path):
    """What the strict loader keeps: an anchor alone, and nesting up to the cap."""
    path = tmp_path / "s.yaml"
    nested = "[" * (strict_yaml.MAX_DEPTH - 4) + "]" * (strict_yaml.MAX_DEPTH - 4)
    path.write_text(
        "study: &s {name: t, metric: val_accuracy, n_trials: 5}\n" + TASK
        + f"search_space:\n  lr: {{type: float, low: 0.001, high: 0.1}}\n# {nested}\n"
    )
    spec = load_spec(path)
    assert spec.study.n_trials == 5
    assert strict_yaml.load("a: " + "[" * (strict_yaml.MAX_DEPTH - 1) + "]" * (strict_yaml.MAX_DEPTH - 1), "f")


def test_exported_specs_hold_no_aliases():
    """`best --export` writes spec.to_dict() with yaml.safe_dump, which writes aliases for shared objects;
    the strict loader refuses aliases, so to_dict must share none."""
    text = yaml.safe_dump(parse_spec(BASE).to_dict())
    assert "&" not in text
    assert "*" not in text
