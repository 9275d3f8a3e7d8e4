"""MLflow tracking of a sweep: one run per network, laid out as docs/SWEEP_CONTRACT.md says.

No Ray here. `Tracker(uri, sweep)` gets or creates the sweep's experiment; `log_network` logs one
network exactly once (it skips a network whose `trial_key` already has a FINISHED run, and deletes a
half-logged run of that key before logging it again), with its real training start and end times
and its training subset as an MLflow dataset input. `Patience` retries calls while the tracking
server is away, with a bounded backoff.

Tracking URIs: sqlite:////abs/path/mlflow.db (the local default), http(s)://host:port (a tracking
server, e.g. the cluster's on PostgreSQL), or a database URI such as postgresql://user@host:port/db
(password from ~/.pgpass, or in the URI: messages never show it).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from imbalance_core.result import OPTIONAL_FIELDS, RESULT_PARAMS, NetworkResult, mlflow_metrics
from imbalance_core.trial import TrialConfig

from .grids import cell_of, describe
from .run_figures import NETWORK_FIGURES, network_figures

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
RUNS_PAGE = 2_000              # runs per search page: bounds the memory of reading a 23,000-run sweep back
REHEARSAL_TAG = "rehearsal"    # experiment and run tag of a sweep that did not train (--rehearse)
REPO_ROOT = Path(__file__).resolve().parents[1]
DB_SCHEMES = ("postgresql", "mysql", "mssql")      # SQLAlchemy stores MLflow opens itself (with +driver)
DATASET_CONTEXT = ("mlflow.data.context", "train")
DIGEST_CHARS = 16                                   # of the subset's sha256 (MLflow keeps <= 36)


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used."""


class TrackingUnavailable(TrackingError):
    """The tracking server stayed away longer than the retry bound."""


def redact(uri: str) -> str:
    """`uri` with the password of its user info replaced by ***: scheme://user:***@host/..."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def _reason(e: BaseException, uri: str) -> str:
    """One line about a failure, without the URI's password (SQLAlchemy errors carry the driver's)."""
    text = " ".join(str(getattr(e, "orig", None) or e).split())
    text = text.split(" (Background on this error")[0]
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:([^/@]*)@", uri)
    if m and m.group(1):
        text = text.replace(m.group(1), "***")
    return text.replace(uri, redact(uri))


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


def use_wal(uri: str) -> None:
    """An embedded store (sqlite:///path) in SQLite's write-ahead-log mode, set once in the database file: the
    driver's logging processes write into one store together, and in the default rollback-journal mode each commit
    (MLflow makes about eight per network) rewrites and syncs a journal file while the other writer waits
    (benchmarks/sqlite_wal.py; docs/performance.md, "The driver at scale"). Durability is unchanged
    (synchronous=FULL). No-op for other stores, and if the database is busy (the next sweep tries again)."""
    import sqlite3
    if not uri.startswith("sqlite:///"):
        return
    try:
        with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=5)) as con:
            con.execute("PRAGMA journal_mode=WAL").fetchall()
    except sqlite3.Error:
        pass


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingError naming `uri` (without its password) if it cannot work: an http(s) server
    must answer GET /health, a database must accept a connection (user, password, database)."""
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
    elif _scheme(uri) in DB_SCHEMES:
        _check_database(uri, timeout)


def _check_database(uri: str, timeout: float) -> None:
    import sqlalchemy
    from sqlalchemy.pool import NullPool
    shown = redact(uri)
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool,
                                          connect_args={"connect_timeout": max(1, int(timeout))})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except ModuleNotFoundError as e:
        raise TrackingError(f"tracking store {shown}: its database driver is not installed ({e}); "
                            f"PostgreSQL needs psycopg (pip install 'psycopg[binary]')") from None
    except Exception as e:  # noqa: BLE001 - wrong password, missing database, no server: say which
        raise TrackingError(f"tracking store {shown} cannot be opened: {_reason(e, uri)}") from None


def is_transient(e: BaseException) -> bool:
    """True for failures of a tracking server that is away or restarting (worth retrying): no
    connection, a timeout, HTTP 5xx/429, a database connection that dropped."""
    import requests
    if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    try:
        import sqlalchemy.exc
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DisconnectionError)):
            return True
    except ImportError:
        pass
    if isinstance(e, requests.HTTPError):                 # artifact uploads
        status = getattr(e.response, "status_code", 0) or 0
        return status >= 500 or status == 429
    from mlflow.exceptions import MlflowException, RestException
    if isinstance(e, RestException):                      # the server answered with an error
        status = e.get_http_status_code()
        return status >= 500 or status == 429
    if isinstance(e, MlflowException):                    # raised by the client (INTERNAL_ERROR by default)
        if e.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"):
            return True
        text = str(e)
        return bool(re.search(r"failed with error code 5\d\d", text)) or any(s in text for s in (
            "Max retries exceeded", "Connection refused", "Connection aborted", "Connection reset",
            "RemoteDisconnected", "timed out", "ConnectionError", "Failed to establish a new connection"))
    return False


class Patience:
    """Retries calls while the tracking server is away: waits 1, 2, 4 .. `max_delay_s` seconds between
    tries, until the outage (from its first failed call) has lasted `bound_s`; then raises
    TrackingUnavailable at once for every call that fails, until one succeeds again. Failures that
    are not an outage (`is_transient` false) are raised at once. `say` gets one line per retry and
    one when the server is back; `outages` records (seconds away, retries) of each outage that ended.
    """

    def __init__(self, bound_s: float, say=print, first_delay_s: float = 1.0, max_delay_s: float = 15.0):
        self.bound_s, self.say, self.first_delay_s, self.max_delay_s = bound_s, say, first_delay_s, max_delay_s
        self.away_since: float | None = None      # monotonic time of the current outage's first failure
        self.exhausted = False                    # the current outage outlasted bound_s
        self.retries = 0                          # retries in the current outage
        self.total_retries = 0
        self.outages: list[tuple[float, int]] = []

    def away_for(self) -> float:
        return 0.0 if self.away_since is None else time.monotonic() - self.away_since

    def call(self, fn, what: str):
        delay = self.first_delay_s
        while True:
            try:
                out = fn()
            except Exception as e:  # noqa: BLE001 - classified below
                if not is_transient(e):
                    raise
                now = time.monotonic()
                if self.away_since is None:
                    self.away_since, self.retries = now, 0
                away = now - self.away_since
                if self.exhausted or away >= self.bound_s:
                    if not self.exhausted:
                        self.say(f"MLflow still unreachable after {away:.0f} s ({self.retries} retries): "
                                 f"giving up retrying (bound {self.bound_s:g} s); {what} and what follows stay "
                                 f"unlogged while it is away")
                    self.exhausted = True
                    raise TrackingUnavailable(f"MLflow unreachable ({_short(e)})") from e
                wait = max(0.0, min(delay, self.max_delay_s, self.bound_s - away))
                self.retries += 1
                self.total_retries += 1
                self.say(f"MLflow unreachable for {away:.0f} s ({_short(e)}) logging {what}: "
                         f"retry {self.retries} in {wait:.0f} s (gives up after {self.bound_s:g} s)")
                time.sleep(wait)
                delay *= 2
            else:
                if self.away_since is not None:
                    away = time.monotonic() - self.away_since
                    self.outages.append((away, self.retries))
                    self.say(f"MLflow is back after {away:.0f} s away ({self.retries} retries); logging resumes")
                    self.away_since, self.exhausted = None, False
                return out


def _short(e: BaseException) -> str:
    text = str(e)
    for key in ("Connection refused", "Read timed out", "Connection aborted", "RemoteDisconnected",
                "Connection reset"):
        if key in text:
            return key
    first = " ".join(text.split())[:120]
    return f"{type(e).__name__}: {first}"


def trial_key(config: TrialConfig, sweep: str) -> str:
    """sha1 of the canonical JSON of the network's identity (its config less where the data sat:
    `TrialConfig.identity`) plus the sweep name (unique per network)."""
    canon = json.dumps({**config.identity(), "sweep": sweep}, sort_keys=True, separators=(",", ":"))
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
    if isinstance(o, NetworkResult):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def dumps(obj) -> str:
    """JSON with numpy scalars and arrays as plain numbers and lists, a NetworkResult as its dict."""
    return json.dumps(obj, default=_json_default)


# --------------------------------------------------------------------------- the tracker

class Tracker:
    """The MLflow experiment of one sweep (experiment name = sweep name)."""

    def __init__(self, uri: str, sweep: str, rehearsal: bool = False):
        """rehearsal: a sweep that does not train (`--rehearse`): its experiment and every run carry the tag
        rehearsal=true (and its name ends in -rehearsal)."""
        import mlflow
        from mlflow.tracking import MlflowClient
        check_tracking_uri(uri)
        self.uri, self.sweep, self.rehearsal = uri, sweep, rehearsal
        self._index: dict[str, list[tuple[str, str]]] | None = None    # see index_runs
        self.figure_cpu_s = 0.0            # CPU time this process spent drawing the runs' figures
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=uri)
        try:
            self.experiment_id = self._experiment()
        except Exception as e:  # noqa: BLE001 - any store failure is a tracking error for the user
            raise TrackingError(f"tracking store {redact(uri)}: {type(e).__name__}: {_reason(e, uri)}") from None
        use_wal(uri)                       # the store exists now (MLflow made its tables)

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.sweep)
        if exp is None:
            folder = local_store_dir(self.uri)
            location = (folder / "mlartifacts").resolve().as_uri() if folder else None
            eid = self.client.create_experiment(self.sweep, artifact_location=location and f"{location}/{self.sweep}",
                                                tags=dict([EXPERIMENT_KIND, *self._rehearsal_tag()]))
            return eid
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id

    def _rehearsal_tag(self) -> list[tuple[str, str]]:
        return [(REHEARSAL_TAG, "true")] if self.rehearsal else []

    def _runs(self, filter_string: str):
        from mlflow.entities import ViewType
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                           max_results=RUNS_PAGE, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def existing_keys(self) -> set[str]:
        """trial_key of every FINISHED run of the experiment."""
        return {key for key, _, status in self._keyed_runs() if status == "FINISHED"}

    def _keyed_runs(self) -> list[tuple[str, str, str]]:
        """(trial_key, run_id, status) of every active run of the experiment that has a trial_key.

        From a database store (sqlite, PostgreSQL) in one query of MLflow's own tables through its store's
        session and models: `search_runs` would load each run's ~106 metrics and ~25 params and tags only
        for these three fields, on the critical path of a resumed sweep (benchmarks/index_read.py;
        docs/performance.md, "The driver at scale").
        Through `search_runs` from a tracking server, or if this MLflow's store lacks those internals
        (`compat.sql_store`, `compat.keyed_runs`)."""
        from . import compat
        store = compat.sql_store(self.client)
        if store is None:
            return [(r.data.tags["trial_key"], r.info.run_id, r.info.status) for r in self._runs("")
                    if "trial_key" in r.data.tags]
        return compat.keyed_runs(store, self.experiment_id, "trial_key")

    def index_runs(self) -> dict[str, list[tuple[str, str]]]:
        """Read trial_key -> [(run_id, status)] of every active run once, so that log_network needs no search
        per network; returns it. Only for a Tracker whose sweep has no other writer of those keys (each of
        the driver's logging processes logs its own networks: `use_index` gives each a copy)."""
        index: dict[str, list[tuple[str, str]]] = {}
        for key, run_id, status in self._keyed_runs():
            index.setdefault(key, []).append((run_id, status))
        self._index = index
        return index

    def use_index(self, index: dict[str, list[tuple[str, str]]] | None) -> None:
        """Take an index read by `index_runs` (of another Tracker: the driver reads it once for all its
        logging processes); None: look each network up in MLflow."""
        self._index = None if index is None else {k: list(v) for k, v in index.items()}

    def _runs_of(self, key: str) -> list[tuple[str, str]]:
        if self._index is not None:
            return list(self._index.get(key, []))
        return [(r.info.run_id, r.info.status) for r in self._runs(f"tags.trial_key = '{key}'")]

    def runs_url(self, host: str = "http://127.0.0.1:5000") -> str:
        base = self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else host
        return f"{base}/#/experiments/{self.experiment_id}/runs"

    def ui_hint(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"MLflow: open {self.runs_url()}"
        return (f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {redact(self.uri)} --host 127.0.0.1 --port 5000\n"
                f"           then open {self.runs_url()}")

    def log_network(self, config: TrialConfig, result: NetworkResult | dict, pack_id: str,
                    figures: Mapping[str, Path] | None = None) -> bool:
        """One MLflow run for one network (its NetworkResult or result dict); False (nothing logged) if its
        FINISHED run already exists. `figures`: its PNGs as drawn by the worker ({name: file}, see
        `run_figures.network_figures`); without them (or with one missing) they are drawn here."""
        from mlflow.entities import Metric, Param
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        if isinstance(result, NetworkResult):
            result = result.to_dict()
        key = trial_key(config, self.sweep)
        stale = []
        for run_id, status in self._runs_of(key):
            if status == "FINISHED":
                return False
            stale.append(run_id)
        for run_id in stale:                      # a run left half-logged by a killed driver (or a failed try)
            self.client.delete_run(run_id)
        if self._index is not None:
            self._index[key] = []

        params = {k: str(v) for k, v in config.identity().items()}
        for k in RESULT_PARAMS:                   # a required one missing is a broken result: KeyError
            if k in OPTIONAL_FIELDS and result.get(k) in (None, ""):
                continue                          # e.g. data_digest, in a result from before it was recorded
            params[k] = str(result[k])
        params["code_version"] = code_version()
        tags = {"sweep": self.sweep, "cell": cell_of(config), "trial_key": key, "method": config.method,
                "pack_id": str(pack_id), "node_id": str(result.get("node_id", "")), **dict(self._rehearsal_tag())}
        metrics = mlflow_metrics(result)

        # The run's start and end are the network's training (Duration in the UI = training time).
        start_ms = int(result["started_at"] * 1000) if "started_at" in result else None
        end_ms = int(result["ended_at"] * 1000) if "ended_at" in result else None
        run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=describe(config), tags=tags)
        run_id = run.info.run_id
        if self._index is not None:
            self._index[key] = [(run_id, "RUNNING")]   # deleted by the next try if this one fails
        try:
            if "subset_digest" in result:
                self._log_input(run_id, subset_input(config, result))
            # params and metrics in as few batches as MLflow takes (<= 1000 values, <= 100 params each)
            batch = [Param(k, v) for k, v in params.items()] + \
                [Metric(k, v, run.info.start_time, 0) for k, v in metrics.items()]
            for i in range(0, len(batch), 100 if len(params) > 100 else 1000):
                part = batch[i:i + (100 if len(params) > 100 else 1000)]
                self.client.log_batch(run_id, params=[x for x in part if isinstance(x, Param)],
                                      metrics=[x for x in part if isinstance(x, Metric)])
            with tempfile.TemporaryDirectory(prefix="sweep-artifacts-") as tmp:
                tmp = Path(tmp)
                doc = {"config": config.identity(), "sweep": self.sweep, "trial_key": key,
                       "pack_id": str(pack_id), **result}
                (tmp / "result.json").write_text(dumps(doc))
                if figures and all(Path(figures.get(n, "")).is_file() for n in NETWORK_FIGURES):
                    for n in NETWORK_FIGURES:
                        shutil.copyfile(figures[n], tmp / n)
                else:
                    t0 = time.thread_time()
                    network_figures(tmp, result)
                    self.figure_cpu_s += time.thread_time() - t0
                # straight to the run's artifact store: client.log_artifacts would first read the whole
                # run back (get_run) only to learn the artifact_uri that create_run already returned
                get_artifact_repository(self.artifact_uri(run.info.artifact_uri),
                                        tracking_uri=self.uri).log_artifacts(str(tmp))
        except BaseException:
            try:
                self.client.set_terminated(run_id, "FAILED")
            except Exception:  # noqa: BLE001 - the server may be away; the next try deletes this run
                pass
            raise
        self.client.set_terminated(run_id, "FINISHED", end_time=end_ms)
        if self._index is not None:
            self._index[key] = [(run_id, "FINISHED")]
        return True

    def artifact_uri(self, uri: str) -> str:
        """Where a run's artifacts are written: a relative artifact location (a published store, made portable
        by `sweeps/publish.py`) is relative to the store's own folder, wherever the store was cloned."""
        folder = local_store_dir(self.uri)
        if folder is None or "://" in uri or uri.startswith("/"):
            return uri
        return str((folder / uri).resolve())

    def _log_input(self, run_id: str, dataset) -> None:
        """log_inputs, once more if another logging process created the same dataset (a subset shared by networks
        it logs at the same moment) between MLflow's check for it and its insert: the second try links it."""
        from mlflow.exceptions import MlflowException
        try:
            self.client.log_inputs(run_id, datasets=[dataset])
        except MlflowException as e:
            text = str(e)                 # sqlite's and PostgreSQL's words for a unique-key violation
            if "INSERT INTO datasets" not in text or not ("UNIQUE constraint" in text or "duplicate key" in text):
                raise
            self.client.log_inputs(run_id, datasets=[dataset])


def subset_name(config: TrialConfig) -> str:
    """The training subset's name: what make_subset draws it from (dataset, profile, n, seed)."""
    return (f"{config.dataset}-{config.imbalance}-rho{config.rho:g}-mu{config.mu:g}-n{config.n}"
            f"-s{config.seed}")


def subset_input(config: TrialConfig, result: dict):
    """The network's training subset as an MLflow dataset input: name, digest of its indices (the first
    DIGEST_CHARS hex of their sha256), source, and its size and class counts as the profile. MLflow keeps
    one dataset per (experiment, name, digest): the runs that trained on the same subset share it."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    source = {"dataset": config.dataset, "data_digest": result.get("data_digest", ""), "split": "train", "subset": {
        "imbalance": config.imbalance, "rho": config.rho, "mu": config.mu, "n_per_class": config.n,
        "seed": config.seed}}
    profile = {"num_examples": int(result["train_examples"]), "class_counts": list(result["class_counts"]),
               "indices_sha256": result["subset_digest"]}
    ds = Dataset(name=subset_name(config), digest=result["subset_digest"][:DIGEST_CHARS], source_type="local",
                 source=dumps(source), profile=dumps(profile))
    return DatasetInput(ds, tags=[InputTag(*DATASET_CONTEXT)])
