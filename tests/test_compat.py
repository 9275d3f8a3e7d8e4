"""What `sweeps/compat.py` relies on in Ray's and MLflow's private internals, checked against what is installed.

Each test fails naming the library, its installed version and the compat function whose assumption broke; the
first checks that the installed versions are pyproject.toml's pins (an upgrade is then a deliberate change of
the pin, with these tests run against it).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import ipaddress
import os
import re
from pathlib import Path

import pytest

from sweeps import compat

ROOT = Path(__file__).resolve().parents[1]


def _version(dist: str) -> str:
    return importlib.metadata.version(dist)


def _relied(ok: bool, dist: str, fn: str, what: str) -> None:
    if not ok:
        pytest.fail(f"{dist} {_version(dist)}: {what} is no longer as sweeps.compat.{fn} relies on it "
                    f"(written against the version pinned in pyproject.toml); adapt compat.{fn}")


def _pins() -> dict[str, str]:
    """{distribution: pinned version pattern} of pyproject.toml's `==` dependencies."""
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    return {m.group(1): m.group(2) for m in re.finditer(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"\s]+)"', deps)}


def test_installed_versions_are_the_pinned_ones():
    pins = _pins()
    assert {"ray", "mlflow", "torch", "ffcv"} <= set(pins), pins
    assert pins["ray"] == f"{compat.RAY_PIN}.*" and pins["mlflow"] == f"{compat.MLFLOW_PIN}.*", \
        "sweeps/compat.py's RAY_PIN / MLFLOW_PIN differ from pyproject.toml's pins: re-check compat against them"
    for dist, pin in pins.items():
        v = _version(dist)
        ok = v.startswith(pin[:-1]) if pin.endswith("*") else v.split("+")[0] == pin
        assert ok, f"{dist} {v} is installed but pyproject.toml pins {dist}=={pin} (sweeps/compat.py relies on it)"


# --------------------------------------------------------------------------- MLflow

@pytest.fixture
def client(tmp_path):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_sql_store_is_the_clients_sqlalchemy_store(client):
    inner = getattr(client, "_tracking_client", None)
    _relied(inner is not None and hasattr(inner, "store"), "mlflow", "sql_store",
            "MlflowClient._tracking_client.store")
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:
        SqlAlchemyStore = None
    _relied(SqlAlchemyStore is not None, "mlflow", "sql_store",
            "mlflow.store.tracking.sqlalchemy_store.SqlAlchemyStore")
    _relied(isinstance(compat.sql_store(client), SqlAlchemyStore), "mlflow", "sql_store",
            "the store of a sqlite:// client (a SqlAlchemyStore)")


def test_keyed_runs_reads_the_tag_the_run_and_its_status(client):
    from mlflow.store.tracking.dbmodels import models
    for model, columns in (("SqlRun", {"run_uuid", "status", "experiment_id", "lifecycle_stage"}),
                           ("SqlTag", {"key", "value", "run_uuid"})):
        orm = getattr(models, model, None)
        have = set(orm.__table__.columns.keys()) if orm is not None else set()
        _relied(columns <= have, "mlflow", "keyed_runs", f"ORM model {model} with columns {sorted(columns)}")
    store = compat.sql_store(client)
    _relied(callable(getattr(store, "ManagedSessionMaker", None)), "mlflow", "keyed_runs",
            "SqlAlchemyStore.ManagedSessionMaker")
    eid = client.create_experiment("compat")
    kept = client.create_run(eid, tags={"trial_key": "k1"}).info.run_id
    client.create_run(eid, tags={"other": "x"})
    gone = client.create_run(eid, tags={"trial_key": "k2"}).info.run_id
    client.set_terminated(kept, "FINISHED")
    client.delete_run(gone)
    _relied(compat.keyed_runs(store, eid, "trial_key") == [("k1", kept, "FINISHED")], "mlflow", "keyed_runs",
            "(tag value, run_uuid, status) of the active runs with the tag, from one query")


# --------------------------------------------------------------------------- Ray: the driver's local instance

def test_ray_constants_has_the_loopback_switch_and_memory_share():
    rc = compat.ray_constants()
    _relied(isinstance(getattr(rc, "ENABLE_RAY_CLUSTER", None), bool), "ray", "loopback_only",
            "ray._private.ray_constants.ENABLE_RAY_CLUSTER (a bool)")
    _relied(getattr(rc, "ENABLE_RAY_CLUSTERS_ENV_VAR", None) == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "ray",
            "loopback_only", "ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR")
    _relied(0 < getattr(rc, "DEFAULT_OBJECT_STORE_MEMORY_PROPORTION", 0) < 1, "ray", "ray_constants",
            "ray._private.ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION")


def test_loopback_only_sets_the_switch_and_restores_it():
    rc = compat.ray_constants()
    env = rc.ENABLE_RAY_CLUSTERS_ENV_VAR
    before = os.environ.get(env), rc.ENABLE_RAY_CLUSTER
    with compat.loopback_only():
        assert os.environ[env] == "0" and rc.ENABLE_RAY_CLUSTER is False
    assert (os.environ.get(env), rc.ENABLE_RAY_CLUSTER) == before


def test_ray_init_takes_the_private_arguments():
    import ray
    init = inspect.unwrap(ray.init)
    src = inspect.getsource(init)
    for arg in ("_node_ip_address", "_temp_dir"):
        _relied(re.search(rf"\b{arg}\b", src) is not None, "ray", "init_local_ray", f"ray.init's argument {arg}")


def test_ray_services_functions():
    services = compat.ray_services()
    for name in ("get_node_ip_address", "find_gcs_addresses", "canonicalize_bootstrap_address"):
        _relied(callable(getattr(services, name, None)), "ray", "ray_services", f"ray._private.services.{name}")
    _relied(list(inspect.signature(services.canonicalize_bootstrap_address).parameters)[:1] == ["addr"], "ray",
            "bootstrap_address", "canonicalize_bootstrap_address(addr, ...)")
    _relied(compat.bootstrap_address("10.0.3.7:6379") == "10.0.3.7:6379", "ray", "bootstrap_address",
            "an explicit host:port returned as it is")
    ipaddress.ip_address(compat.node_ip_address())
    _relied(hasattr(services.find_gcs_addresses, "cache_clear"), "ray", "clear_gcs_address_cache",
            "find_gcs_addresses as an lru_cache'd function")
    compat.clear_gcs_address_cache()


def test_the_checkpoint_line_comes_from_the_logger_quieted():
    spec = importlib.util.find_spec(compat.CHECKPOINT_LOGGER)
    _relied(spec is not None and spec.origin is not None, "ray", "quiet_checkpoint_log",
            f"module {compat.CHECKPOINT_LOGGER}")
    src = Path(spec.origin).read_text()
    _relied("logging.getLogger(__name__)" in src and "Checkpoint successfully created" in src, "ray",
            "quiet_checkpoint_log", f"'Checkpoint successfully created' logged by {compat.CHECKPOINT_LOGGER}'s logger")
    import logging
    compat.quiet_checkpoint_log()
    assert logging.getLogger(compat.CHECKPOINT_LOGGER).level == logging.WARNING


# --------------------------------------------------------------------------- Ray: the autoscaler

def test_cluster_config_prepare_and_validate():
    from sweeps import cluster as C
    local = C.local_provider_config(C.load_cluster_yaml(), "127.0.0.1", "/k/key")
    prepared = compat.prepare_cluster_config(local)
    _relied(list(prepared.get("available_node_types", {})) == ["local.cluster.node"], "ray",
            "prepare_cluster_config", "prepare_config filling in the local provider's node type")
    compat.validate_cluster_config(prepared)
    with pytest.raises(Exception):
        compat.validate_cluster_config({**prepared, "max_workers": "many"})


def test_aws_provider_functions_exist():
    """Read from the module's source: importing it needs boto3 (tests/test_cluster_autoscale.py runs it)."""
    spec = importlib.util.find_spec(compat.AWS_PROVIDER_MODULE + ".node_provider")
    _relied(spec is not None, "ray", "aws_node_resources", f"module {compat.AWS_PROVIDER_MODULE}.node_provider")
    src = Path(spec.origin).read_text()
    _relied(re.search(r"^def list_ec2_instances\(\s*region", src, re.M) is not None, "ray", "aws_node_resources",
            "list_ec2_instances(region, ...)")
    _relied(re.search(r"def fillout_available_node_types_resources\(", src) is not None
            and "class AWSNodeProvider" in src, "ray", "aws_node_resources",
            "AWSNodeProvider.fillout_available_node_types_resources")


def test_resource_demand_scheduler_signature():
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
    init = list(inspect.signature(ResourceDemandScheduler.__init__).parameters)[1:]
    _relied(init == ["provider", "node_types", "max_workers", "head_node_type", "upscaling_speed"], "ray",
            "nodes_to_launch", "ResourceDemandScheduler(provider, node_types, max_workers, head_node_type, "
                               "upscaling_speed)")
    kw = set(inspect.signature(ResourceDemandScheduler.get_nodes_to_launch).parameters) - {"self"}
    _relied(kw == {"nodes", "launching_nodes", "resource_demands", "unused_resources_by_ip",
                   "pending_placement_groups", "max_resources_by_ip", "ensure_min_cluster_size",
                   "node_availability_summary"}, "ray", "nodes_to_launch", "get_nodes_to_launch's keywords")
    NodeAvailabilitySummary(node_availabilities={})


def test_nodes_to_launch_runs_the_scheduler():
    from sweeps import cluster as C
    cfg = C.load_cluster_yaml()
    launches = C.autoscaler_launches(cfg, cfg["available_node_types"], 2, {"CPU": 1, "GPU": 1})
    _relied(isinstance(launches, dict) and sum(launches.values()) >= 1, "ray", "nodes_to_launch",
            "GPU workers launched for pending GPU trials (the head has none)")


# --------------------------------------------------------------------------- Ray: the test clusters

def test_test_cluster_internals():
    import ray._raylet as raylet
    _relied(hasattr(raylet, "GcsClient") and hasattr(getattr(raylet, "InnerGcsClient", None), "get_all_node_info"),
            "ray", "gcs_client", "ray._raylet.GcsClient (get_all_node_info through InnerGcsClient)")
    _relied(callable(getattr(getattr(raylet, "Config", None), "initialize", None)), "ray", "refresh_ray_config",
            "ray._raylet.Config.initialize")
    from ray._private.authentication import authentication_token_setup as tok
    fn = getattr(tok, "ensure_token_if_auth_enabled", None)
    _relied(fn is not None and "create_token_if_missing" in inspect.signature(fn).parameters, "ray",
            "ensure_auth_token", "ensure_token_if_auth_enabled(create_token_if_missing=)")
    module, cls = compat.FAKE_PROVIDER_CLASS.rsplit(".", 1)
    spec = importlib.util.find_spec(module)
    _relied(spec is not None and f"class {cls}" in Path(spec.origin).read_text(), "ray", "FAKE_PROVIDER_CLASS",
            compat.FAKE_PROVIDER_CLASS)
