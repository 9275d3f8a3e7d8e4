"""MLflow tracking of a sweep: one run per network, laid out as docs/SWEEP_CONTRACT.md says.

No Ray here. `Tracker(uri, sweep)` gets or creates the sweep's experiment; `log_network` logs one
network exactly once (it skips a network whose `trial_key` already has a FINISHED run, and deletes a
half-logged run of that key before logging it again).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from imbalance_core.trial import TrialConfig

from .grids import cell_of, describe
from .run_figures import confusion_png, recall_png

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
METRICS = ("auc", "accuracy", "accuracy_thresholded", "train_seconds", "images_per_second", "final_loss",
           "train_examples", "epoch_examples")
REPO_ROOT = Path(__file__).resolve().parents[1]


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used."""


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else an embedded SQLite store `<cwd>/mlflow.db`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def local_store_dir(uri: str) -> Path | None:
    """The folder of an embedded store (sqlite:///path/x.db): artifacts go to <folder>/mlartifacts."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    return None


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingError naming `uri` if it cannot work: an http(s) server must answer GET /health."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingError(f"tracking server {uri} answered {url} with HTTP {r.status}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise TrackingError(f"tracking server {uri} is not reachable ({url}: {getattr(e, 'reason', e)}); "
                                f"start it or pass another --tracking-uri") from None
    elif uri.startswith("sqlite:///"):
        folder = local_store_dir(uri)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"tracking store {uri}: cannot create folder {folder} ({e})") from None
    elif uri.startswith("sqlite:"):
        raise TrackingError(f"tracking URI {uri!r}: use an absolute path, sqlite:////abs/path/mlflow.db")


def trial_key(config: TrialConfig, sweep: str) -> str:
    """sha1 of the canonical JSON of the network config plus the sweep name (unique per network)."""
    canon = json.dumps({**dataclasses.asdict(config), "sweep": sweep}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canon.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Git short sha of the repository (`-dirty` when tracked files changed), else the package version."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from imbalance_core import __version__
        return __version__


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def dumps(obj) -> str:
    """JSON with numpy scalars and arrays as plain numbers and lists."""
    return json.dumps(obj, default=_json_default)


# --------------------------------------------------------------------------- the tracker

class Tracker:
    """The MLflow experiment of one sweep (experiment name = sweep name)."""

    def __init__(self, uri: str, sweep: str):
        import mlflow
        from mlflow.tracking import MlflowClient
        check_tracking_uri(uri)
        self.uri, self.sweep = uri, sweep
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=uri)
        try:
            self.experiment_id = self._experiment()
        except Exception as e:  # noqa: BLE001 - any store failure is a tracking error for the user
            raise TrackingError(f"tracking store {uri}: {type(e).__name__}: {e}") from None

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.sweep)
        if exp is None:
            folder = local_store_dir(self.uri)
            location = (folder / "mlartifacts").resolve().as_uri() if folder else None
            eid = self.client.create_experiment(self.sweep, artifact_location=location and f"{location}/{self.sweep}",
                                                tags=dict([EXPERIMENT_KIND]))
            return eid
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id

    def _runs(self, filter_string: str):
        from mlflow.entities import ViewType
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                           max_results=10_000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def existing_keys(self) -> set[str]:
        """trial_key of every FINISHED run of the experiment."""
        return {r.data.tags["trial_key"] for r in self._runs("attributes.status = 'FINISHED'")
                if "trial_key" in r.data.tags}

    def runs_url(self, host: str = "http://127.0.0.1:5000") -> str:
        base = self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else host
        return f"{base}/#/experiments/{self.experiment_id}/runs"

    def ui_hint(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"MLflow: open {self.runs_url()}"
        return (f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000\n"
                f"           then open {self.runs_url()}")

    def log_network(self, config: TrialConfig, result: dict, pack_id: str) -> bool:
        """One MLflow run for one network; False (nothing logged) if its FINISHED run already exists."""
        from mlflow.entities import Metric, Param
        key = trial_key(config, self.sweep)
        stale = []
        for r in self._runs(f"tags.trial_key = '{key}'"):
            if r.info.status == "FINISHED":
                return False
            stale.append(r.info.run_id)
        for run_id in stale:                      # a run left half-logged by a killed driver
            self.client.delete_run(run_id)

        params = {k: str(v) for k, v in dataclasses.asdict(config).items()}
        params.update(model=str(result["model"]), code_version=code_version(), base_lr=str(result["base_lr"]),
                      batch_size=str(result["batch_size"]))
        tags = {"sweep": self.sweep, "cell": cell_of(config), "trial_key": key, "method": config.method,
                "pack_id": str(pack_id), "node_id": str(result.get("node_id", ""))}
        metrics = {k: float(result[k]) for k in METRICS}
        metrics.update({k: float(v) for k, v in result.items() if k.startswith("accuracy_posthoc_")})
        for name in ("recall", "recall_thresholded", *(k for k in result if k.startswith("recall_posthoc_"))):
            metrics.update({f"{name}_{c}": float(v) for c, v in enumerate(result[name])})

        run = self.client.create_run(self.experiment_id, run_name=describe(config), tags=tags)
        run_id = run.info.run_id
        try:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            ms = [Metric(k, v, run.info.start_time, 0) for k, v in metrics.items()]
            for i in range(0, len(ms), 1000):            # MLflow takes at most 1000 metrics per batch
                self.client.log_batch(run_id, metrics=ms[i:i + 1000])
            with tempfile.TemporaryDirectory(prefix="sweep-artifacts-") as tmp:
                tmp = Path(tmp)
                doc = {"config": dataclasses.asdict(config), "sweep": self.sweep, "trial_key": key,
                       "pack_id": str(pack_id), **result}
                (tmp / "result.json").write_text(dumps(doc))
                confusion_png(tmp / "confusion_matrix.png", result["confusion_matrix"],
                              result["confusion_matrix_thresholded"])
                recall_png(tmp / "per_class_recall.png", result["recall"], result["recall_thresholded"],
                           result.get("class_counts"))
                self.client.log_artifacts(run_id, str(tmp))
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return True
