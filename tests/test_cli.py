"""The command boundary: bad input is one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from hpsearch.cli.main import main

from .support import REPO


def call(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == f"error: {expected}"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"search_space": {"lr": {"type": "float", "low": -1, "high": 0.1, "log": False}}},
         "search_space.lr.low: must be > 0, got -1"),
        ({"study": {"n_trials": 0}}, "study.n_trials: must be > 0, got 0"),
        ({"train": {"lern_rate": 0.1}}, "train.lern_rate: unknown hyperparameter 'lern_rate' (did you mean 'lr'?)"),
    ],
)
def test_bad_space_is_one_line_exit_2(capsys, write_space, override, expected):
    space = write_space(override)
    for command in ("validate", "run"):
        code, _, err = call(capsys, command, str(space))
        assert_one_line_error(code, err, expected)


def test_missing_file(capsys, workdir):
    code, _, err = call(capsys, "run", "nope.yaml")
    assert_one_line_error(code, err, "nope.yaml: no such file")


def test_bad_option_values_name_the_option(capsys, write_space):
    space = str(write_space())
    code, _, err = call(capsys, "run", space, "--n-trials", "0")
    assert_one_line_error(code, err, "--n-trials: must be > 0, got 0")
    code, _, err = call(capsys, "run", space, "--timeout", "soon")
    assert code == 2
    assert err.startswith("error: --timeout: ")
    assert len(err.strip().splitlines()) == 1
    code, _, err = call(capsys, "run", space, "--n-trials", "ten")
    assert code == 2
    assert "'ten' is not a valid integer" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = call(capsys, "run", space, "--no-such-option")
    assert code == 2
    assert "--no-such-option" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_study_and_nothing_run_yet(capsys, workdir):
    code, _, err = call(capsys, "status")
    assert_one_line_error(code, err, "SPACE: no study has been run from this folder yet; give SPACE or --study NAME")
    code, _, err = call(capsys, "best", "--study", "ghost")
    assert_one_line_error(code, err, "--study: no study named 'ghost' in studies/journal.log; it holds no study yet")


def test_validate_prints_the_resolved_space(capsys, write_space):
    code, out, err = call(capsys, "validate", str(write_space()))
    assert code == 0, err
    assert "valid" in out
    assert "sampler:" in out
    assert "searching 2 hyperparameter(s)" in out
    assert "lr: float in [0.003, 0.03], log" in out
    tpe = write_space({"study": {"n_trials": 40, "sampler": {"name": "tpe"}}}, name="tpe.yaml")
    code, out, err = call(capsys, "validate", str(tpe))
    assert code == 0, err
    assert "# tpe: 10 random start-up trials of 40" in out


def test_train_refuses_a_file_with_a_search_space(capsys, write_space):
    code, _, err = call(capsys, "train", str(write_space()))
    assert code == 2
    assert err.startswith("error: search_space: train takes fixed values")


def test_help_lists_every_command(capsys):
    code, out, _ = call(capsys, "--help")
    assert code == 0
    for command in ("run", "validate", "status", "best", "train", "ui"):
        assert command in out


@pytest.mark.parametrize("path", sorted(str(p) for p in REPO.glob("*/*.yaml")
                                         if p.parent.name in ("spaces", "examples")))
def test_every_shipped_space_validates(capsys, path):
    code, out, err = call(capsys, "validate", path)
    assert code == 0, err
    assert "valid" in out


@pytest.mark.parametrize(("argv", "code"), [(["--version"], 0), (["status", "--format", "xml"], 2)])
def test_the_hpsearch_process_exits_with_its_code_after_threads_and_exit_handlers(tmp_path, argv, code):
    """The `hpsearch` process skips Python's module teardown at exit: what a normal exit does must still happen."""
    import subprocess
    import sys

    script = (
        "import atexit, sys, threading, time\n"
        "from hpsearch.cli.main import main\n"
        "atexit.register(lambda: print('exit handler ran', flush=False))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread finished', flush=False))).start()\n"
        # an idle pool thread, as MLflow's artifact uploads leave: stopped by threading's exit hooks, never joined
        "import concurrent.futures; concurrent.futures.ThreadPoolExecutor(1).submit(lambda: None).result()\n"
        f"sys.argv = ['hpsearch', *{argv!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == code, result.stderr
    assert result.stdout.splitlines()[-2:] == ["thread finished", "exit handler ran"]  # printed, not lost
