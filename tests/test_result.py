"""imbalance_core.result: the typed NetworkResult, its plain dict, and the contract rendered from it
(docs/SWEEP_CONTRACT.md and what sweeps.tracking.Tracker logs to a real MLflow sqlite store)."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from imbalance_core.result import (BEST_POSTHOC, CONTRACT, NetworkResult, mlflow_metrics, posthoc_name,
                                   render)
from imbalance_core.trial import TrialConfig, run_trials

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE = dict(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, iterations=3, batch_size=16, device="cpu",
              seed=0)


@pytest.fixture(scope="module")
def results():
    """A LeNet-5 network with a linear head (tau-normalised metrics at hand) and one with a cosine head
    (none), trained for a few steps."""
    configs = [TrialConfig(**SAMPLE, method=m) for m in ("two-phase-ros", "ldam-drw")]
    return configs, run_trials(configs)


def test_dict_round_trip_is_plain_json(results):
    _, rs = results
    for r in rs:
        assert isinstance(r, NetworkResult)
        d = r.to_dict()
        assert type(d) is dict and json.loads(json.dumps(d)) == d          # plain JSON values
        assert list(r) == list(d) and dict(r) == d and {**r} == d            # reads as its dict
        assert NetworkResult.from_dict(d) == r
        assert NetworkResult.from_dict(json.loads(json.dumps(d))).to_dict() == d
        assert "node_id" not in d
        assert d[BEST_POSTHOC] == r.accuracy_posthoc_best and d["auc"] == r.auc
    # the post-hoc metrics sit in the dict where metrics.posthoc put them, before the best of them
    keys = list(rs[0].to_dict())
    assert keys.index(posthoc_name("la", 0.5)) == keys.index("confusion_matrix_thresholded") + 1
    assert keys.index(BEST_POSTHOC) == keys.index("train_examples") - 1
    assert posthoc_name("taunorm", 1.0) in rs[0] and posthoc_name("taunorm", 1.0) not in rs[1]
    with pytest.raises(ValueError, match="unknown result keys"):
        NetworkResult.from_dict({**rs[0].to_dict(), "bogus": 1})


def test_node_id_travels_through_the_dict(results):
    r = dataclasses.replace(results[1][0], node_id="node-7")
    d = r.to_dict()
    assert list(d)[-1] == "node_id" and d["node_id"] == "node-7"
    assert NetworkResult.from_dict(d).node_id == "node-7"


def test_contract_doc_is_rendered_from_the_dataclass():
    """docs/SWEEP_CONTRACT.md's generated sections equal their rendering from NetworkResult: a field added,
    renamed or re-documented without `python -m imbalance_core.result --write` fails here."""
    text = CONTRACT.read_text()
    assert render(text) == text, "docs/SWEEP_CONTRACT.md is stale: run python -m imbalance_core.result --write"
    for f in dataclasses.fields(NetworkResult):
        if f.name != "posthoc":
            assert f"`{f.name}`" in text, f.name


def test_tracker_logs_exactly_the_declared_metrics(results, tmp_path):
    """What Tracker.log_network writes to a real sqlite MLflow store: the metric names NetworkResult
    declares (and mlflow_metrics computes), with the result's values; result.json holds the result dict."""
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import Tracker
    configs, rs = results
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "contract-test")
    for c, r, taunorm in zip(configs, rs, (True, False)):
        assert tracker.log_network(c, r, pack_id="p0")
    client = MlflowClient(tracking_uri=uri)
    runs = {run.data.params["method"]: run for run in client.search_runs([tracker.experiment_id])}
    for c, r, taunorm in zip(configs, rs, (True, False)):
        logged = runs[c.method].data.metrics
        assert set(logged) == NetworkResult.mlflow_metric_names(10, taunorm=taunorm), c.method
        assert logged == pytest.approx(mlflow_metrics(r))
        assert logged["auc"] == pytest.approx(r.auc) and logged["recall_3"] == pytest.approx(r.recall[3])
        folder = client.download_artifacts(runs[c.method].info.run_id, "result.json", str(tmp_path / c.method))
        doc = json.loads(Path(folder).read_text())
        assert {k: v for k, v in doc.items() if k in r} == r.to_dict()
    # a plain result dict is logged the same way (the driver gets results from Tune as dicts)
    tracker2 = Tracker(uri, "contract-test-dicts")
    assert tracker2.log_network(configs[0], rs[0].to_dict(), pack_id="p0")
    run = client.search_runs([tracker2.experiment_id])[0]
    assert set(run.data.metrics) == NetworkResult.mlflow_metric_names(10, taunorm=True)
