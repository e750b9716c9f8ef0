"""A finished study seen in a real browser: the MLflow UI's experiment page and compare view, and the
`hpsearch report` page from disk, each rendered by the system's headless Chromium and saved as a PNG.

Chromium is driven over the DevTools protocol through a pipe (`--remote-debugging-pipe`): no browser is
downloaded and no package is added, and the test can wait for the single-page app's data to render and
click a parent run open, which a one-shot `--dump-dom` cannot.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

CHROMIUM = shutil.which("chromium")
IN_CI = bool(os.environ.get("CI"))  # .ci/run installs chromium: missing there, the test fails instead

# Skipped by a mark, not in the `chromium` fixture: that would run only after the session has trained the study.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None and not IN_CI,
                                                   reason="chromium is not installed (apt-get install chromium)")]
WIDTH, HEIGHT = 1400, 900
RENDER_SECONDS = 40  # a cold MLflow UI on two busy cores


class DevToolsError(AssertionError):
    pass


class Chromium:
    """Headless Chromium on a DevTools pipe: fd 3 takes commands, fd 4 gives replies, each JSON ending in NUL."""

    def __init__(self, profile: Path, log: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                 f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        # The pipe must be fds 3 and 4 in the browser: bash moves them there, then becomes chromium.
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", 'exec 3<&"$1" 4>&"$2"; shift 2; exec "$@"', "bash", str(to_browser_r),
                 str(from_browser_w), CHROMIUM, *flags],
                pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._buffer = b""
        self.log = log

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        """One command's result; events met on the way are dropped."""
        msg_id = next(self._ids)
        message = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self, deadline: float, what: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise DevToolsError(f"no reply from chromium to {what}:\n{self.log.read_text()[-2000:]}")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise DevToolsError(f"chromium exited during {what}:\n{self.log.read_text()[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str) -> Tab:
        target = self.send("Target.createTarget", {"url": "about:blank"})
        session = self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        tab = Tab(self, session)
        tab.call("Emulation.setDeviceMetricsOverride",
                 {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
        tab.call("Page.navigate", {"url": url})
        return tab

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (DevToolsError, OSError):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its zygote and renderers too
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        os.close(self._to_browser)
        os.close(self._from_browser)


class Tab:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, session=self.session)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        """What the page shows, as the browser rendered it (hidden elements and unrendered rows left out)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *wanted: str, timeout: float = RENDER_SECONDS) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(w in text for w in wanted):
                return text
            if time.monotonic() > deadline:
                missing = [w for w in wanted if w not in text]
                raise AssertionError(f"the page never showed {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.25)

    def wait_until(self, expression: str, what: str, timeout: float = RENDER_SECONDS):
        """The first truthy value of a JavaScript expression, polled while the page renders."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what}; it shows:\n{self.text()[:3000]}")
            time.sleep(0.25)
        return value

    def screenshot(self, path: Path, height: int = HEIGHT) -> Path:
        if height != HEIGHT:
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False})
        time.sleep(0.5)  # let the last layout and fonts settle before the picture
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
        return path


@pytest.fixture
def chromium(tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
    browser = Chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    yield browser
    browser.close()


def test_the_study_in_the_mlflow_ui_and_its_report_page(finished_study, mlflow_server, chromium, tmp_path):
    report = start_report(finished_study)  # it draws its plots while the server starts
    try:
        store = f"sqlite:///{finished_study / 'mlruns' / 'mlflow.db'}"
        ui = mlflow_server(store)
        experiment, parent, trials = study_runs(store)
        assert [r.info.run_name for r in trials] == [f"trial-{n}" for n in range(4)]
        experiment_page(chromium, ui, experiment, parent, trials, tmp_path / "experiment.png")
        compare_view(chromium, ui, experiment, trials[:2], tmp_path / "compare.png")
        report_page(chromium, finished_study, report, trials, tmp_path / "report.png")
    finally:
        if report.poll() is None:  # the test failed before the page was looked at
            report.kill()
            report.communicate()


def study_runs(store: str):
    """(experiment id, parent run, trial runs by trial number) of the study `finished`."""
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("finished").experiment_id
    runs = client.search_runs([experiment])
    parent = next(r for r in runs if r.data.tags.get("hpsearch.role") == "study")
    trials = sorted((r for r in runs if r.data.tags.get("hpsearch.role") == "trial"),
                    key=lambda r: int(r.data.tags["optuna.trial_number"]))
    return experiment, parent, trials


def experiment_page(chromium: Chromium, ui: str, experiment: str, parent, trials, shot: Path) -> None:
    """The runs page lists the study's parent run; opened, its trials show nested (indented) under it."""
    names = [r.info.run_name for r in trials]
    tab = chromium.open(f"{ui}/#/experiments/{experiment}/runs")
    expander = RUN_EXPANDER % json.dumps(parent.info.run_id)
    tab.wait_until(f"!!{expander}", "an expander beside the parent run's name")  # once its children are known
    assert not any(n in tab.text() for n in names)  # the trials start folded under their parent
    tab.evaluate(CLOSE_ASSISTANT)
    tab.evaluate(f"{expander}.click()")
    tab.wait_for_text(*names)
    lefts = tab.evaluate(RUN_LINK_LEFTS % json.dumps([parent.info.run_id, *(r.info.run_id for r in trials)]))
    assert all(left > lefts[0] + 4 for left in lefts[1:]), lefts  # each trial's name is indented
    tab.screenshot(shot)


def compare_view(chromium: Chromium, ui: str, experiment: str, pair, shot: Path) -> None:
    """Two trials side by side at the URL the UI builds for it (getCompareRunPageRoute: JSON.stringify of
    the run ids and of the experiment ids): their names, params and val_accuracy."""
    tab = chromium.open(f"{ui}/#/compare-runs?runs={_js_json([r.info.run_id for r in pair])}"
                        f"&experiments={_js_json([experiment])}")
    text = tab.wait_for_text(*(r.info.run_name for r in pair), "Parameters", "val_accuracy")
    for name in ("lr", "dropout", "optimizer"):
        assert "\t".join([name, *(r.data.params[name] for r in pair)]) in text  # a row of the params table
    for run in pair:
        assert _ui_metric(run.data.metrics["val_accuracy"]) in text
    tab.evaluate(TIDY_COMPARE)
    tab.screenshot(shot, height=1100)  # down to the metrics table


def _ui_metric(value: float) -> str:
    """A metric in [0.001, 10) as the UI shows it (Utils.formatMetric: rounded to 3 decimals, JS toString)."""
    return f"{math.floor(value * 1000 + 0.5) / 1000:g}"


def start_report(folder: Path) -> subprocess.Popen:
    """`hpsearch report` in `folder`, as a user runs it."""
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "report"], cwd=folder, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def report_page(chromium: Chromium, folder: Path, report: subprocess.Popen, trials, shot: Path) -> None:
    """The page `hpsearch report` wrote, opened from disk: its plots drawn by plotly.js, its trials listed."""
    out, err = report.communicate(timeout=180)
    assert report.returncode == 0, err
    page = Path(out.strip().splitlines()[-1])  # the command prints the page's path
    page = page if page.is_absolute() else folder / page
    assert page.is_file()
    assert page.parent == folder / "studies" / "finished" / "report"
    tab = chromium.open(page.as_uri())
    tab.wait_for_text("finished", *(r.info.run_id[:12] for r in trials))
    plots = tab.evaluate("document.querySelectorAll('.js-plotly-plot .main-svg').length")
    assert plots >= 2, plots  # plotly.js ran in the page: the figures are drawn, not just embedded
    titles = tab.evaluate("[...document.querySelectorAll('.js-plotly-plot .gtitle')].map(t => t.textContent)")
    assert "Optimization History Plot" in titles, titles
    tab.screenshot(shot)


def _js_json(value) -> str:
    return json.dumps(value, separators=(",", ":"))  # as JavaScript's JSON.stringify writes it


# The expander button in the name cell of a run's row (the cell that links to the run), or null.
RUN_EXPANDER = """document.querySelector(`[role=gridcell]:has(a[href$="/runs/${%s}"]) button`)"""

# Where each run's name starts on screen (its nesting shows as indentation).
RUN_LINK_LEFTS = """%s.map(id => document.querySelector(`a[href$="/runs/${id}"]`).getBoundingClientRect().left)"""

# For the picture: the tables rather than the plot, and only the params that differ.
TIDY_COMPARE = """(() => {
  document.querySelector('[aria-label="collapse Visualizations"]')?.closest('[role=button]')?.click();
  document.querySelector('button[aria-label="Parameters - Show diff only"]')?.click();
  return true;
})()"""

# The MLflow Assistant side panel opens by default; closed, the pictures show the runs (absent: nothing to do).
CLOSE_ASSISTANT = """(() => {
  const close = document.querySelector('[data-assistant-ui] button[aria-label="Close"]');
  if (close) close.click();
  return Boolean(close);
})()"""
