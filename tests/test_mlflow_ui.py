"""The MLflow UI really shows a sweep's runs: `mlflow ui` on a tmp sqlite store, read by headless Chromium.

Needs Debian's chromium (`bash scripts/install_chromium.sh`); see /work/shared/notes/mlflow-ui.md.
The server runs with one worker and without its job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false):
the default four workers plus job consumers take over a minute to come up on a loaded 2-core machine.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
MLFLOW = Path(sys.executable).parent / "mlflow"
HEALTH_TIMEOUT_S = 90
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000", "--window-size=1400,900"]
# (method, rho, auc): distinct AUCs so that the UI's sort by auc has one right order
RUNS = [("baseline", 10.0, 97.1), ("ros", 10.0, 98.4), ("rus", 10.0, 95.2),
        ("baseline", 100.0, 94.3), ("ros", 100.0, 96.6), ("rus", 100.0, 91.8)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(method: str, rho: float):
    from imbalance_core.trial import TrialConfig
    return TrialConfig(dataset="mnist", data_dir="/data", imbalance="step", rho=rho, mu=0.5, method=method, seed=0,
                       iterations=200, device="cpu", loader="tensor")


def _run_name(method: str, rho: float) -> str:
    from sweeps.grids import describe
    return describe(_config(method, rho))


def _result(auc: float) -> dict:
    """A network's result dict as imbalance_core.trial.run_trials returns it (values made up, shapes real)."""
    cm = (np.eye(10, dtype=int) * 80 + 2).tolist()
    return {"auc": auc, "accuracy": auc - 3.0, "accuracy_thresholded": auc - 2.0, "recall": [auc - 3.0] * 10,
            "recall_thresholded": [auc - 2.0] * 10, "confusion_matrix": cm, "confusion_matrix_thresholded": cm,
            "train_examples": 27_500, "class_counts": [500] * 5 + [5000] * 5, "sampled_counts": [5000] * 10,
            "epoch_examples": 50_000, "iterations": 200, "finetune_iterations": 0, "finetune_on": "",
            "batch_size": 64, "base_lr": 0.01, "train_seconds": 1.0, "images_per_second": 12_800.0,
            "final_loss": 0.1, "pack_size": 1, "pack_seconds": 1.0, "device": "cpu", "loader": "tensor",
            "model": "lenet5", "test_examples": 1000}


def _log_runs(uri: str) -> str:
    """A small sweep logged through the server by the project's own tracker (sweeps.tracking.Tracker), as
    the sweep driver logs every network."""
    from sweeps.tracking import Tracker
    tracker = Tracker(uri, "ui-sweep")
    for method, rho, auc in RUNS:
        assert tracker.log_network(_config(method, rho), _result(auc), pack_id="p0")
    return tracker.experiment_id


class _Text(HTMLParser):
    """The text nodes of a page, outside <script> and <style>."""

    def __init__(self):
        super().__init__()
        self.texts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.texts.append(data.strip())


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its workers: SIGTERM to its process group, SIGKILL after 15 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)     # any worker still there
    except ProcessLookupError:
        pass
    proc.wait(timeout=5)


def _dump_dom(url: str, tmp_path: Path, shot: Path, timeout: float) -> subprocess.CompletedProcess:
    """Headless Chromium renders `url`: a screenshot to `shot`, the DOM on stdout."""
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
                           f"--screenshot={shot}", "--dump-dom", url], capture_output=True, timeout=timeout,
                          cwd=tmp_path)


def test_mlflow_ui_shows_sweep_runs(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install_chromium.sh` (as root) to install it")
    assert MLFLOW.exists(), f"mlflow CLI not found next to {sys.executable}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    t0 = time.monotonic()
    server = subprocess.Popen(
        [str(MLFLOW), "ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"OK":
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow ui exited:\n" + (tmp_path / "server.log").read_text()[-3000:]
            if time.monotonic() - t0 > HEALTH_TIMEOUT_S:
                pytest.fail(f"mlflow ui did not answer /health in {HEALTH_TIMEOUT_S} s:\n"
                            + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        t_health = time.monotonic() - t0
        exp_id = _log_runs(base)

        shot = tmp_path / "runs.png"
        url = f"{base}/#/experiments/{exp_id}/runs?orderByKey=metrics.%60auc%60&orderByAsc=false"
        t1 = time.monotonic()
        res = _dump_dom(url, tmp_path, shot, timeout=90)
        t_browser = time.monotonic() - t1
    finally:
        _stop(server)
        log.close()
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]
    parser = _Text()
    parser.feed(res.stdout.decode(errors="replace"))
    texts = parser.texts
    print(f"health after {t_health:.1f} s, chromium {t_browser:.1f} s, {len(texts)} text nodes; screenshot {shot}")

    assert "Training runs" in texts, "the experiment did not open as a model-training experiment"
    names = [_run_name(m, rho) for m, rho, _ in RUNS]
    missing = [n for n in names if n not in texts]
    assert not missing, f"runs missing from the UI: {missing}; page text starts {texts[:60]}"
    assert "Sort: auc" in texts, "the UI does not know the metric 'auc'"
    # the table is sorted by auc, descending: the UI read the metric values
    by_auc = [_run_name(m, rho) for m, rho, _ in sorted(RUNS, key=lambda r: -r[2])]
    assert sorted(names, key=texts.index) == by_auc
    assert f"{len(RUNS)} matching runs" in " ".join(texts)

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1400, 900)
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes (blank page?)"
    if os.environ.get("MLFLOW_UI_SHOT"):        # keep the screenshot to look at
        Path(os.environ["MLFLOW_UI_SHOT"]).write_bytes(data)


# --------------------------------------------------------------------------- runs that read as training runs

class _Cells(HTMLParser):
    """The runs table's text per (row-id = run id, col-id), from the grid's rows and cells."""

    def __init__(self):
        super().__init__()
        self.cells: dict[tuple[str, str], list[str]] = {}
        self._stack: list[tuple[str, str | None, str | None]] = []     # (tag, row-id, col-id)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        row, col = (self._stack[-1][1:] if self._stack else (None, None))
        self._stack.append((tag, a.get("row-id") or row, a.get("col-id") or col))

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self._stack and data.strip():
            _, row, col = self._stack[-1]
            if row and col:
                self.cells.setdefault((row, col), []).append(data.strip())


def _ui_seconds(text: str) -> tuple[float, float]:
    """The UI's Duration ("412ms", "5.3s", "1.6min", "2.1h", "1.2d") in seconds, and its rounding (+-)."""
    import re
    m = re.fullmatch(r"(\d+)(\.\d)?(ms|s|min|h|d)", text)
    assert m, f"not a duration: {text!r}"
    unit = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}[m.group(3)]
    return float(m.group(1) + (m.group(2) or "")) * unit, (0.05 if m.group(2) else 0.5) * unit


def test_mlflow_ui_shows_training_duration_and_subset_dataset(tmp_path):
    """Networks trained for real and logged by the project's Tracker: the UI's Duration is each network's
    training time (not the few ms of logging), and its Dataset column names the training subset with the
    digest of its indices; the two networks trained on one subset show the same dataset."""
    from imbalance_core.trial import TrialConfig, run_trials
    from sweeps.tracking import Tracker, subset_name, trial_key

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install_chromium.sh` (as root) to install it")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(MLFLOW), "ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # trained while the server comes up: seed 0 baseline and ROS share their subset, seed 1 does not
        configs = [TrialConfig(method=m, seed=s, iterations=60) for m, s in
                   (("baseline", 0), ("ros", 0), ("baseline", 1))]
        results = run_trials(configs)
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow ui exited:\n" + (tmp_path / "server.log").read_text()[-3000:]
            if time.monotonic() - t0 > HEALTH_TIMEOUT_S:
                pytest.fail(f"mlflow ui did not answer /health in {HEALTH_TIMEOUT_S} s")
            time.sleep(0.5)
        tracker = Tracker(base, "ui-training-runs")
        run_ids = {}
        for c, r in zip(configs, results):
            t = time.monotonic()
            assert tracker.log_network(c, r, "p0")
            print(f"{c.method} s{c.seed}: trained {r['train_seconds']:.2f} s, logged in {time.monotonic() - t:.2f} s")
            (run,) = tracker.client.search_runs([tracker.experiment_id],
                                                f"tags.trial_key = '{trial_key(c, 'ui-training-runs')}'")
            run_ids[(c.method, c.seed)] = run.info.run_id
        url = f"{base}/#/experiments/{tracker.experiment_id}/runs"
        res = _dump_dom(url, tmp_path, tmp_path / 'runs.png', timeout=120)
    finally:
        _stop(server)
        log.close()
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]
    parser = _Cells()
    parser.feed(res.stdout.decode(errors="replace"))
    cells = parser.cells
    shown = {}
    for (c, r) in zip(configs, results):
        run_id = run_ids[(c.method, c.seed)]
        duration = cells.get((run_id, "duration"))
        dataset = cells.get((run_id, "attributes.`Dataset`"))
        assert duration and dataset, f"run {run_id} has no Duration/Dataset cell; cells: {sorted(cells)[:20]}"
        # Duration = the network's training loop (the UI rounds to 0.1 s)
        seconds, rounding = _ui_seconds(duration[0])
        assert abs(seconds - r["train_seconds"]) <= rounding + 0.002, (duration, r["train_seconds"])
        want = f"{subset_name(c)} ({r['subset_digest'][:16]})"
        assert dataset[:2] == [want, "train"], dataset
        shown[(c.method, c.seed)] = dataset[0]
    assert shown[("baseline", 0)] == shown[("ros", 0)] != shown[("baseline", 1)]
