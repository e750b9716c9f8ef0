"""One command for the first GPU: the CUDA tests, the throughput benchmarks and a short real search, in one page.

    python3 benchmarks/gpu_check.py                     # writes $OUT/gpu-check.md, else docs/gpu-check-results.md
    python3 benchmarks/gpu_check.py --parts tests run   # only some parts
    python3 benchmarks/gpu_check.py --out /tmp/check.md --tests-budget 240

Parts, each in its own subprocess with its own time budget; a part that fails or times out is
recorded and the next one runs:

  tests       python -m pytest -m "not slow" tests/trainer_tests (every CUDA-gated test lives there), first;
              its result is pytest's own counts (its JUnit XML report): any failure or error fails it
  throughput  benchmarks/trial_throughput.py --device cuda: images/s of the seed pipeline vs the
              Trainer (eager, CUDA graphs), and a warm trial's time to its first step
  parallel    benchmarks/parallel.py --only gpu: aggregate throughput at trials_per_device 1, 2, 4
  run         python -m hpsearch run on generated data with trials_per_device 2, in a temporary folder

The default budgets add up to 320 s, so that the whole check ends within 6 minutes and a failed first
try leaves device time to fix and rerun. This script imports only the standard library and runs with
the GPU machine's own python3; the parts get the repository root on PYTHONPATH (hpsearch need not be
installed), after the wheels in --wheels (default .whl/, made by benchmarks/gpu_wheels.sh), unpacked.
A part whose modules are missing before it starts (optuna, mlflow) is skipped, saying which; a tests
part whose collection aborts is skipped with pytest's reason, and fails the check: no test ran.
Exits 2 at once where torch sees no CUDA device; else 0 when every part passed or was skipped, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"  # benchmarks/gpu_wheels.sh downloads them there (git-ignored; the device run carries it)
TAIL_LINES = 30
GRACE_S = 5  # after a budget runs out: SIGINT (pytest and hpsearch print what they have), then SIGKILL
PARTS = ("tests", "throughput", "parallel", "run")
# 320 s in all: with the grace periods and start-up, the check ends within 6 minutes.
BUDGETS = {"tests": 140, "throughput": 55, "parallel": 65, "run": 60}
NEEDS = {"tests": ["pytest"], "throughput": ["torchvision"], "parallel": ["optuna", "mlflow"],
         "run": ["click", "yaml", "optuna", "mlflow"]}

# The short search of the `run` part: a handful of MobileNetV2 trials from scratch on random data
# (nothing downloaded). --allow-cpu shrinks it to what 2 CPU cores train in a minute.
RUN_SIZES: dict[str, dict[str, Any]] = {
    "cuda": {"n_trials": 6, "samples": 10_000, "batch_size": [128, 256], "epochs": [2, 3]},
    "cpu": {"n_trials": 4, "samples": 384, "batch_size": [32, 64], "epochs": [1, 2]},
}
THROUGHPUT_ARGS = {"cuda": ["--device", "cuda", "--steps", "100"],
                   "cpu": ["--device", "cpu", "--steps", "2", "--batch-sizes", "32"]}
PARALLEL_TRIALS = 4  # at each trials_per_device: 4 fill one round at 4 per GPU

# Run in the parts' own environment (their PYTHONPATH, their torch), so the parent never holds a CUDA context.
PROBE = r"""
import json, platform, torch
info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "python": platform.python_version(),
        "cuda": torch.cuda.is_available()}
try:
    import torchvision
    info["torchvision"] = torchvision.__version__
except ImportError:
    info["torchvision"] = "not installed"
if info["cuda"]:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), memory_gib=p.total_memory / 2**30,
                capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version())
    try:  # private, but the only way torch tells the CUDA version the driver supports
        v = torch._C._cuda_getDriverVersion()
        info["driver_cuda"] = f"{v // 1000}.{v % 1000 // 10}"
    except Exception:
        pass
print(json.dumps(info))
"""
FIND_MISSING = r"""
import importlib.util, sys
missing = []
for name in sys.argv[1:]:
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        missing.append(name)
print(" ".join(missing))
"""


@dataclass
class Part:
    name: str
    title: str
    budget: float
    outcome: str = "not run"  # passed | failed | timed out | skipped | not run
    detail: str = ""  # what the outcome rests on: counts, an exit status, why it was skipped
    blocking: bool = False  # a skip that fails the check all the same (tests collected nothing)
    seconds: float = 0.0
    command: str = ""
    tail: str = ""  # the last lines of output, shown for a part that did not pass
    data: dict = field(default_factory=dict)

    def set(self, outcome: str, detail: str = "", blocking: bool = False) -> None:
        self.outcome, self.detail, self.blocking = outcome, detail, blocking

    @property
    def status(self) -> str:
        return f"{self.outcome}: {self.detail}" if self.detail else self.outcome

    @property
    def passed(self) -> bool:
        return self.outcome == "passed" or (self.outcome == "skipped" and not self.blocking)


@dataclass
class Outcome:
    returncode: int | None  # None: killed at the budget
    output: str
    seconds: float


VENDOR: list[str] = []  # folders of unpacked wheels, put on the parts' PYTHONPATH after the repository


def child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The repo root first, then the carried wheels, then whatever was there.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), *VENDOR, os.environ.get("PYTHONPATH", "")] if p)
    return env


def unpack_wheels(folder: Path, into: Path) -> list[str]:
    """Unpack every wheel in `folder` into `into` (a wheel is a zip of what site-packages would hold: no pip
    needed); the names of the wheels."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(into)
    return [w.name for w in wheels]


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def execute(cmd: list[str], timeout: float, cwd: Path = REPO) -> Outcome:
    """Run cmd in its own process group with output to a file (no pipe a worker could keep open)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            try:
                rc: int | None = proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                rc = None
                signal_group(proc.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=GRACE_S)
            seconds = time.perf_counter() - start
        finally:
            # Ends what the part left behind (DataLoader or trial workers: the group is its own),
            # and the part itself when this script is interrupted (its own session gets no Ctrl-C).
            if signal_group(proc.pid, signal.SIGKILL):
                proc.wait()
        log.seek(0)
        return Outcome(rc, log.read(), seconds)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def missing_modules(names: list[str]) -> list[str]:
    out = execute([sys.executable, "-c", FIND_MISSING, *names], timeout=60)
    return out.output.split() if out.returncode == 0 else []


def timed_out(part: Part, out: Outcome) -> str:
    return f"after {out.seconds:.0f}s (budget {part.budget:.0f}s)"


def run_step(part: Part, cmd: list[str], timeout: float, cwd: Path = REPO) -> Outcome:
    """Run one command of a part and set its outcome from the exit alone (a module missing at run time is a
    failure like any other); the caller refines it from what the command wrote."""
    part.command = shlex.join(cmd)
    out = execute(cmd, timeout, cwd)
    part.seconds += out.seconds
    part.tail = tail(out.output)
    if out.returncode is None:
        part.set("timed out", timed_out(part, out))
    elif out.returncode == 0:
        part.set("passed")
    else:
        part.set("failed", f"exit {out.returncode}")
    return out


def read_junit(path: Path) -> dict | None:
    """pytest's own account of a run from its JUnit XML report: counts, failing and erroring tests, skip
    reasons and collection errors; None when pytest wrote no report."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    report: dict = {"counts": {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
                               "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]},
                    "failures": [], "skips": [], "collection_errors": []}
    for case in root.iter("testcase"):
        classname, test = case.get("classname") or "", case.get("name") or ""
        # A module that failed to collect has no classname: its dotted path is the name.
        name = f"{_module_name(classname)}::{test}" if classname else _module_name(test)
        for kind in ("failure", "error"):
            element = case.find(kind)
            if element is None:
                continue
            report["failures"].append(name)
            if element.get("message") == "collection failure":
                report["collection_errors"].append(f"{name}: {error_line(element.text or '')}")
        skipped = case.find("skipped")
        if skipped is not None:
            report["skips"].append(f"{name}: {skipped.get('message', '')}")
    return report


def _module_name(classname: str) -> str:
    """A test's module (and class) from its JUnit classname, without the folders above the module: pytest
    derives those from its rootdir, so they differ with where the repository and the tests lie."""
    parts = classname.split(".")
    start = max((i for i, part in enumerate(parts) if part.startswith("test")), default=0)
    return ".".join(parts[start:])


def error_line(text: str) -> str:
    """The line of a pytest traceback that says what went wrong (its last `E   ...` line), else its last line."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    return errors[-1] if errors else (lines[-1].strip() if lines else "no output")


def judge_tests(part: Part, out: Outcome, report: dict | None, cuda: bool) -> None:
    """The tests part's outcome from pytest's counts: any failure or error fails it, a collection that
    aborted (no test ran) skips it with pytest's reason, and fails the check."""
    rc = out.returncode
    if report is None:
        if rc in (2, 4):  # interrupted, or a conftest that cannot be imported: pytest says why in its output
            part.set("skipped", f"collection aborted: {error_line(out.output)}", blocking=True)
        elif rc is not None:
            part.set("failed", f"exit {rc}, no report from pytest")
        return  # timed out before pytest wrote a report: run_step said so
    part.data = report
    c = report["counts"]
    counts = f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped"
    if report["collection_errors"]:
        part.set("skipped", "collection aborted: " + "; ".join(report["collection_errors"]), blocking=True)
    elif rc == 5:
        part.set("skipped", "pytest collected no tests", blocking=True)
    elif rc is None:
        part.set("timed out", f"{timed_out(part, out)}; {counts} by then")
    elif c["failed"] or c["errors"] or rc != 0:
        part.set("failed", counts + ("" if rc in (0, 1) else f" (pytest exit {rc})"))
    elif cuda and any("CUDA" in reason for reason in report["skips"]):
        part.set("failed", f"{counts}; tests that need CUDA were skipped on a CUDA machine")
    else:
        part.set("passed", counts)


# ------------------------------------------------------------------------------------------- parts


def part_tests(part: Part, args, tmp: Path) -> None:
    report = tmp / "junit.xml"
    # -o addopts= : the GPU machine has no pytest-xdist, which the project's addopts (-n 2) would need.
    cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-m", "not slow", "-p", "no:cacheprovider",
           "-rfEs", f"--junitxml={report}", *args.tests]
    out = run_step(part, cmd, part.budget)
    # pytest writes its report after a SIGINT too, so a timed-out run still says what ran.
    judge_tests(part, out, read_junit(report), cuda=args.kind == "cuda")


def part_throughput(part: Part, args, tmp: Path) -> None:
    path = tmp / "throughput.json"
    cmd = [sys.executable, "benchmarks/trial_throughput.py", *THROUGHPUT_ARGS[args.kind], "--json", str(path)]
    run_step(part, cmd, part.budget)
    if part.passed:
        part.data = json.loads(path.read_text())


def part_parallel(part: Part, args, tmp: Path) -> None:
    path = tmp / "parallel.json"
    out = run_step(part, [sys.executable, "benchmarks/parallel.py", "--only", "gpu", "--gpu-trials",
                          str(PARALLEL_TRIALS), "--json", str(path)], part.budget)
    if not part.passed:
        return
    part.data = json.loads(path.read_text()).get("gpu_trials_per_device", {})
    if not part.data:
        part.set("skipped", "parallel.py saw no CUDA device")
    # Its printed lines carry the aggregate images/s (computed from its own space's sizes).
    for k, ips in re.findall(r"trials_per_device (\d+)_workers: .*?~([\d,]+) train img/s", out.output):
        part.data.get(f"{k}_workers", {})["images_per_second"] = float(ips.replace(",", ""))


def part_run(part: Part, args, tmp: Path) -> None:
    sizes = RUN_SIZES[args.kind]
    work = tmp / "run"
    work.mkdir()
    space: dict = {
        "study": {"name": "gpu-check", "n_trials": sizes["n_trials"], "sampler": {"name": "random", "seed": 0},
                  "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1}},
        "task": {"model": {"name": "mobilenet_v2", "weights": "none"},
                 "data": {"name": "fake", "samples": sizes["samples"], "image_size": 32}},
        # Floats written with a dot: PyYAML reads a JSON 1e-05 as a string.
        "search_space": {"lr": {"type": "float", "low": 0.003, "high": 0.3, "log": True},
                         "batch_size": {"type": "categorical", "choices": sizes["batch_size"]},
                         "epochs": {"type": "int", "low": sizes["epochs"][0], "high": sizes["epochs"][1]}},
        "resources": {"devices": "auto", "trials_per_device": 2},
    }
    (work / "space.yaml").write_text(json.dumps(space, indent=2))  # JSON is YAML: no pyyaml needed here
    stores = ["--storage", str(work / "studies/journal.log"), "--tracking-uri", f"sqlite:///{work}/mlruns/mlflow.db"]
    part.data["space"] = space
    # Stop starting trials at half the budget, so the ones running can finish inside 80% of it;
    # the last 20% reads the trials back.
    hp = [sys.executable, "-m", "hpsearch"]
    out = run_step(part, [*hp, "run", "space.yaml", "--timeout", f"{part.budget * 0.5:.0f}s", *stores],
                   part.budget * 0.8, cwd=work)
    part.data["wall_s"] = out.seconds
    run_passed, run_tail = part.passed, part.tail
    listing = execute([*hp, "status", "space.yaml", "--format", "json", *stores],
                      max(10.0, part.budget - part.seconds), cwd=work)
    part.seconds += listing.seconds
    try:
        part.data["trials"] = json.loads(listing.output[listing.output.index("["):])
    except ValueError:
        if run_passed:
            part.set("failed", "could not list the trials")
        part.tail = tail(run_tail + "\n" + listing.output)
        return
    states = [t["state"] for t in part.data["trials"]]
    part.data["states"] = {s: states.count(s) for s in sorted(set(states))}
    if run_passed and "FAIL" in states:
        part.set("failed", f"{states.count('FAIL')} trial(s) FAIL")


RUNNERS = {"tests": part_tests, "throughput": part_throughput, "parallel": part_parallel, "run": part_run}
TITLES = {"tests": "CUDA tests (pytest)", "throughput": "trial throughput", "parallel": "packing (trials per device)",
          "run": "hpsearch run, trials_per_device 2"}


# ------------------------------------------------------------------------------------------ report


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def section_tests(p: Part) -> list[str]:
    d = p.data
    lines = [f"`{p.command}`", "", f"Result: {p.status}."]
    if d.get("failures"):
        lines += ["", "Failing:", *[f"- `{name}`" for name in d["failures"]]]
    if d.get("skips"):
        lines += ["", "Skipped (on a GPU, a skip saying 'needs CUDA' means CUDA was not used):",
                  *[f"- {s}" for s in d["skips"]]]
    return lines


PIPELINES = {"seed": "(a) seed: DataLoader (2 workers) + PIL, fp32", "eager": "(b) hpsearch Trainer, eager",
             "graphs": "(c) hpsearch Trainer, CUDA graph"}


def section_throughput(p: Part) -> list[str]:
    d = p.data
    sizes = list(d["images_per_second"])
    modes = list(dict.fromkeys(m for bs in sizes for m in d["images_per_second"][bs]))
    rows = []
    for mode in modes:
        cells = []
        for bs in sizes:
            ips = d["images_per_second"][bs].get(mode)
            ratio = d["ratio_vs_seed"][bs].get(mode, 1.0 if mode == "seed" else None)
            cells.append("n/a" if ips is None else f"{ips:,.0f} img/s ({ratio:.2f}x)")
        rows.append([PIPELINES.get(mode, mode), *cells])
    lines = [f"`{p.command}` — {d['device']}, torch {d['torch']}, torchvision {d['torchvision']}", "",
             "Images/s of each pipeline, and its ratio to the seed pipeline (DataLoader + PIL, fp32):", ""]
    lines += table(["pipeline", *[f"batch {bs}" for bs in sizes]], rows)
    lines += ["", "Warm start: a second trial at an already-seen batch size, from its start to its first step "
              "(and, with CUDA graphs, to its first graph replay):", ""]
    warm = [[bs, mode, fmt_s(t["first_step_s"]), fmt_s(t["first_replay_s"]) if "first_replay_s" in t else "-"]
            for bs in sizes for mode, t in d["warm_trial_start"][bs].items()]
    return lines + table(["batch", "pipeline", "first step", "first graph replay"], warm)


def section_parallel(p: Part) -> list[str]:
    rows = [[k.split("_")[0], f"{v['seconds']:.1f} s", v["trials"], f"{v['trials_per_hour']:.0f}",
             f"{v['images_per_second']:,.0f}" if "images_per_second" in v else "-", f"{v['ratio']:.2f}x"]
            for k, v in p.data.items()]
    header = ["trials_per_device", "wall time", "trials", "trials/hour", "aggregate train img/s", "ratio"]
    return [f"`{p.command}` — the same trials at each setting, so the ratio is the packing gain in "
            "aggregate throughput over one trial per GPU.", "", *table(header, rows)]


def section_run(p: Part) -> list[str]:
    d = p.data
    sizes = d["space"]
    lines = [f"`{p.command}`", "",
             f"{sizes['study']['n_trials']} trials of MobileNetV2 from scratch on {sizes['task']['data']['samples']} "
             "random 32x32 images, `resources: {devices: auto, trials_per_device: 2}`, search space "
             f"`{json.dumps(sizes['search_space'])}`.", "",
             f"Result: {p.status}; `hpsearch run` took {d['wall_s']:.1f} s."]
    if d.get("trials") == []:
        lines[-1] += " No trial was started."
    if d.get("states"):
        lines[-1] += " Trial states: " + ", ".join(f"{n} {s}" for s, n in d["states"].items()) + "."
        rows = [[t["number"], t["state"], "-" if t["value"] is None else f"{t['value']:.4f}", t["epochs_run"],
                 "-" if t["duration_s"] is None else f"{t['duration_s']:.1f}", t["params"].get("batch_size", "-"),
                 (t["reason"] or "").splitlines()[0][:100] if t.get("reason") else ""]
                for t in d["trials"]]
        lines += ["", *table(["trial", "state", "val_accuracy", "epochs", "seconds", "batch", "failure"], rows)]
    return lines


SECTIONS = {"tests": section_tests, "throughput": section_throughput, "parallel": section_parallel, "run": section_run}


def render(parts: list[Part], info: dict, driver: str, started: datetime.datetime, elapsed: float, done: bool,
           wheels: tuple[str, ...] = ()) -> str:
    if info["cuda"]:
        gpu = (f"{info['gpu']} ({info['memory_gib']:.0f} GiB, compute capability {info['capability']})"
               + (f", {info['gpus']} visible" if info["gpus"] > 1 else ""))
    else:
        gpu = f"none: CPU only ({os.cpu_count()} cores, --allow-cpu)"
    lines = ["# GPU check", "",
             "Written by `python3 benchmarks/gpu_check.py` (docs/gpu-check.md says how to run it and bring "
             "this page back)" + ("." if done else " — **still running or interrupted: partial**."), ""]
    lines += table(["", ""], [
        ["GPU", gpu],
        ["driver", driver + (f" (supports CUDA {info['driver_cuda']})" if info.get("driver_cuda") else "")],
        ["CUDA (torch build) / cuDNN", f"{info['cuda_build']} / {info.get('cudnn', '-')}"],
        ["torch / torchvision / python", f"{info['torch']} / {info['torchvision']} / {info['python']}"],
        ["host", f"{platform.node()}, {os.cpu_count()} CPU cores"],
        ["carried wheels", ", ".join(" ".join(w.split("-")[:2]) for w in wheels) if wheels else "none"],
        ["date", started.strftime("%Y-%m-%d %H:%M UTC")],
        ["total wall time", f"{elapsed:.0f} s"],
    ])
    lines += ["", "## Parts", ""]
    lines += table(["part", "result", "seconds", "budget"],
                   [[p.title, p.status, f"{p.seconds:.0f}", f"{p.budget:.0f}"] for p in parts])
    unreadable = set()
    for i, p in enumerate(parts, 1):
        lines += ["", f"## {i}. {p.title}", ""]
        if p.status == "not run":
            lines.append("Not run yet.")
        elif p.data and p.outcome != "skipped":
            try:
                lines += SECTIONS[p.name](p)
            except (KeyError, TypeError, ValueError) as e:  # a script changed its JSON: say so, keep the page
                lines.append(f"Could not read this part's results ({type(e).__name__}: {e}); its output is below.")
                unreadable.add(p.name)
        else:
            lines.append(f"`{p.command}`: {p.status}." if p.command else f"{p.status.capitalize()}.")
    failures = [p for p in parts if p.status != "not run" and (not p.passed or p.name in unreadable)]
    lines += ["", "## Failures", ""]
    if not failures:
        lines.append("None.")
    for p in failures:
        note = " (results unreadable)" if p.name in unreadable else ""
        lines += [f"### {p.title}: {p.status}{note}", "", f"`{p.command}`, last {TAIL_LINES} lines of its output:", "",
                  "```", p.tail, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def driver_version() -> str:
    if not shutil.which("nvidia-smi"):
        return "unknown (no nvidia-smi)"
    out = execute(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=30)
    return out.output.strip().splitlines()[0] if out.returncode == 0 and out.output.strip() else "unknown"


# -------------------------------------------------------------------------------------------- main


def default_out() -> Path:
    """$OUT/gpu-check.md where $OUT is set (the device machine's folder that comes back), else in docs/."""
    out = os.environ.get("OUT")
    return Path(out) / "gpu-check.md" if out else REPO / "docs/gpu-check-results.md"


def main(argv: list[str] | None = None) -> int:
    head, body = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=head, epilog=body,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_out(),
                        help="the summary page (default: $OUT/gpu-check.md, or docs/gpu-check-results.md without $OUT)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    parser.add_argument("--tests", nargs="+", default=["tests/trainer_tests"],
                        help="pytest paths, relative to the checkout (default: %(default)s)")
    parser.add_argument("--wheels", type=Path, default=WHEELS,
                        help="a folder of wheels to unpack onto the parts' PYTHONPATH (default: .whl/ of the checkout)")
    for name, seconds in BUDGETS.items():
        parser.add_argument(f"--{name}-budget", type=float, default=seconds, metavar="S",
                            help=f"seconds for the {name} part (default: %(default)s)")
    # Debug only: the whole check on the CPU with tiny sizes, to test this script without a GPU.
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # A plain `kill` unwinds like Ctrl-C, so the running part's process group is ended too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        vendor = Path(tmp) / "vendor"
        wheels = tuple(unpack_wheels(args.wheels, vendor))
        if wheels:
            VENDOR.append(str(vendor))
        probe = execute([sys.executable, "-c", PROBE], timeout=120)
        if probe.returncode != 0:
            print(f"gpu_check: torch could not be imported: {tail(probe.output, 1)}", file=sys.stderr)
            return 2
        info = json.loads([ln for ln in probe.output.splitlines() if ln.startswith("{")][-1])  # past any warnings
        if not info["cuda"] and not args.allow_cpu:
            print(f"gpu_check: no CUDA device visible to torch {info['torch']} (torch.cuda.is_available() is False); "
                  "run this on a GPU machine", file=sys.stderr)
            return 2
        args.kind = "cuda" if info["cuda"] else "cpu"
        driver = driver_version() if info["cuda"] else "-"

        parts = [Part(name, TITLES[name], getattr(args, f"{name}_budget")) for name in PARTS if name in args.parts]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        print(f"gpu_check: {info.get('gpu', 'CPU')}, torch {info['torch']}; {len(wheels)} wheels; parts "
              f"{', '.join(p.name for p in parts)}, at most ~{sum(p.budget + GRACE_S for p in parts):.0f}s; "
              f"writing {args.out}", flush=True)
        for part in parts:
            print(f"  {part.name} (budget {part.budget:.0f}s) ...", end=" ", flush=True)
            missing = missing_modules(NEEDS[part.name])
            if missing:
                part.set("skipped", f"{', '.join(missing)} not installed")
            else:
                part_dir = Path(tmp) / part.name
                part_dir.mkdir()
                RUNNERS[part.name](part, args, part_dir)
            print(part.status, flush=True)
            # Rewritten after each part, so a check cut short still leaves what it measured.
            args.out.write_text(render(parts, info, driver, started, time.perf_counter() - t0, False, wheels))
    args.out.write_text(render(parts, info, driver, started, time.perf_counter() - t0, True, wheels))
    print(f"gpu_check: wrote {args.out} in {time.perf_counter() - t0:.0f}s")
    return 0 if all(p.passed for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
