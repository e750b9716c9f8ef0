"""The cluster examples (examples/slurm/, examples/kubernetes/) stay runnable: shell syntax, the Job's shape,
credentials only from a Secret, and every hpsearch/mlflow option they use exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from hpsearch.cli.main import cli
from hpsearch.core.credentials import mask_url

from .support import REPO

SLURM = REPO / "examples" / "slurm"
JOB = REPO / "examples" / "kubernetes" / "hpsearch-job.yaml"
SHELL_FILES = [SLURM / "hpsearch-array.sbatch", SLURM / "mlflow-server.sh"]


def long_options(help_text: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))


def hpsearch_run_options() -> set[str]:
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0, result.output
    return long_options(result.output)


def assert_valid_run_command(argv: list[str]) -> None:
    assert argv[:2] == ["hpsearch", "run"], argv
    space = argv[2]
    assert not space.startswith("-")
    used = [a.split("=", 1)[0] for a in argv[3:] if a.startswith("--")]
    assert set(used) <= hpsearch_run_options(), used
    # credentials come from the environment, never the command line (`ps`, job records)
    assert "--storage" not in used
    assert "--tracking-uri" not in used


def test_run_reads_the_stores_from_the_environment_the_examples_set():
    help_text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "env var: HPSEARCH_STORAGE" in help_text
    assert "env var: MLFLOW_TRACKING_URI" in help_text


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_shell_files_parse(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_sbatch_runs_hpsearch_with_the_stores_from_the_environment():
    text = (SLURM / "hpsearch-array.sbatch").read_text()
    assert re.search(r"^#SBATCH --array=\d+-\d+", text, re.M)
    assert '"${HPSEARCH_STORAGE:?' in text
    assert '"${MLFLOW_TRACKING_URI:?' in text
    [line] = [ln for ln in text.splitlines() if ln.lstrip().startswith("srun hpsearch run")]
    argv = shlex.split(line)[1:]
    argv[2] = "spaces/mnv2_cifar.yaml" if argv[2] == "$space" else argv[2]
    assert_valid_run_command(argv)
    assert (REPO / argv[2]).exists()


def test_mlflow_server_script_uses_options_mlflow_has():
    text = (SLURM / "mlflow-server.sh").read_text()
    used = long_options(text.split("exec mlflow server", 1)[1])
    help_text = subprocess.run([sys.executable, "-m", "mlflow", "server", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert used, used - long_options(help_text)
    assert used <= long_options(help_text), used - long_options(help_text)


def test_kubernetes_job_shape_and_credentials():
    job = yaml.safe_load(JOB.read_text())
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    spec = job["spec"]
    assert isinstance(spec["parallelism"], int)
    assert spec["parallelism"] >= 2
    [container] = spec["template"]["spec"]["containers"]
    assert_valid_run_command(container["command"])
    assert (REPO / container["command"][2]).exists()
    env = {e["name"]: e for e in container["env"]}
    secret = env["HPSEARCH_STORAGE"]["valueFrom"]["secretKeyRef"]
    assert secret["name"]
    assert secret["key"]
    assert "MLFLOW_TRACKING_URI" in env
    for e in container["env"]:
        value = e.get("value")
        if value is not None:  # a literal in the Job: never a credential
            assert "PASSWORD" not in e["name"], e
            assert "TOKEN" not in e["name"], e
            assert mask_url(value) == value, e
