"""Every use of a library's private internals, in one place (Ray 2.60.*, MLflow 3.17.*: pyproject.toml's pins).

Each function says what it relies on; `tests/test_compat.py` checks each of those facts against the
installed versions and fails naming the library and version when an upgrade changes one. Nothing else in
`sweeps/` or in the tests' helpers imports `ray._private`, `ray._raylet`, `ray.autoscaler._private`,
`ray.train._internal` or MLflow's SQLAlchemy store internals, or passes Ray's underscore arguments.

MLflow 3.17 (store internals)
    sql_store, keyed_runs            the SQLAlchemy store behind a client, one query of its ORM tables
Ray 2.60 (ray._private, ray._raylet, ray.autoscaler._private, ray.train._internal, ray.init's _arguments)
    init_local_ray                   ray.init(_node_ip_address=, _temp_dir=)
    loopback_only                    ray_constants.ENABLE_RAY_CLUSTER(S_ENV_VAR): Ray's loopback-only switch
    ray_constants, ray_services      the modules themselves (tests read and monkeypatch their attributes)
    bootstrap_address, node_ip_address, clear_gcs_address_cache
    quiet_checkpoint_log             the logger of ray.train._internal.storage
    prepare_cluster_config, validate_cluster_config, aws_node_resources, nodes_to_launch
                                     the autoscaler's config checks, AWS provider and v1 scheduler
    gcs_client, refresh_ray_config, ensure_auth_token, FAKE_PROVIDER_CLASS, AWS_PROVIDER_MODULE
                                     the test clusters (tests/cluster_harness.py)
FFCV 1.0.2: its import-time patches live in `imbalance_core/ffcv_data.py` (the one module that imports
    ffcv; the plain library imports nothing from `sweeps`): `Compiler.set_num_threads` replaced (it
    would set torch's threads), `ffcv.writer.tqdm` silenced while writing, and `_SetOrder`, a
    TraversalOrder instance passed as a custom order (FFCV 1.0.2 calls `order(loader)`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os

RAY_PIN = "2.60"          # pyproject.toml: ray[tune]==2.60.*
MLFLOW_PIN = "3.17"       # pyproject.toml: mlflow==3.17.*

FAKE_PROVIDER_CLASS = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
AWS_PROVIDER_MODULE = "ray.autoscaler._private.aws"
CHECKPOINT_LOGGER = "ray.train._internal.storage"


# --------------------------------------------------------------------------- MLflow

def sql_store(client):
    """The SQLAlchemy store behind an `MlflowClient` (sqlite, PostgreSQL), None for any other store (a tracking
    server) or if this MLflow lacks these internals. Relies on (MLflow 3.17): `MlflowClient._tracking_client.store`
    and `mlflow.store.tracking.sqlalchemy_store.SqlAlchemyStore`."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        store = client._tracking_client.store
    except (ImportError, AttributeError):
        return None
    return store if isinstance(store, SqlAlchemyStore) else None


def keyed_runs(store, experiment_id: str, tag: str) -> list[tuple[str, str, str]]:
    """(value of tag `tag`, run_uuid, status) of every active run of the experiment that has that tag, in one
    query of MLflow's own tables. Relies on (MLflow 3.17): `SqlAlchemyStore.ManagedSessionMaker` and the ORM
    models `mlflow.store.tracking.dbmodels.models.SqlRun` (run_uuid, status, experiment_id, lifecycle_stage)
    and `SqlTag` (key, value, run_uuid)."""
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
    with store.ManagedSessionMaker() as session:
        rows = (session.query(SqlTag.value, SqlRun.run_uuid, SqlRun.status)
                .join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid)
                .filter(SqlRun.experiment_id == int(experiment_id), SqlRun.lifecycle_stage == "active",
                        SqlTag.key == tag)
                .all())
    return [(value, run_id, status) for value, run_id, status in rows]


# --------------------------------------------------------------------------- Ray: the driver's local instance

def ray_constants():
    """`ray._private.ray_constants` (Ray 2.60): ENABLE_RAY_CLUSTER, ENABLE_RAY_CLUSTERS_ENV_VAR,
    DEFAULT_OBJECT_STORE_MEMORY_PROPORTION are read (and, in tests, monkeypatched)."""
    from ray._private import ray_constants as rc
    return rc


def ray_services():
    """`ray._private.services` (Ray 2.60): get_node_ip_address, find_gcs_addresses (an lru_cache'd function),
    canonicalize_bootstrap_address."""
    import ray._private.services as services
    return services


@contextlib.contextmanager
def loopback_only():
    """Ray's "no multi-node cluster" switch off for the duration (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and, as
    Ray reads it at import, `ray_constants.ENABLE_RAY_CLUSTER = False`), restored after: a Ray started inside
    keeps 127.0.0.1 as its node address. Relies on (Ray 2.60): `ray._private.ray_constants`
    ENABLE_RAY_CLUSTERS_ENV_VAR and ENABLE_RAY_CLUSTER."""
    rc = ray_constants()
    switch = rc.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved = os.environ.get(switch), rc.ENABLE_RAY_CLUSTER
    os.environ[switch], rc.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        rc.ENABLE_RAY_CLUSTER = saved[1]
        if saved[0] is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = saved[0]


def init_local_ray(*, node_ip_address: str | None = None, temp_dir: str | None = None, **kwargs):
    """`ray.init(address="local", **kwargs)` with Ray's private arguments `_node_ip_address` (the node's address)
    and `_temp_dir` (its session files), each passed only when given. Relies on (Ray 2.60): ray.init
    accepting `_node_ip_address` and `_temp_dir`."""
    import ray
    private = {k: v for k, v in (("_node_ip_address", node_ip_address), ("_temp_dir", temp_dir)) if v is not None}
    return ray.init(address="local", **kwargs, **private)


def bootstrap_address(address: str) -> str | None:
    """host:port that `ray.init(address=...)` connects to (`auto`: the last `ray start` here, else a running
    GCS; 127.0.0.1 made routable unless loopback-only). Relies on (Ray 2.60):
    `ray._private.services.canonicalize_bootstrap_address`."""
    return ray_services().canonicalize_bootstrap_address(address)


def node_ip_address() -> str:
    """This machine's address as Ray picks it. Relies on (Ray 2.60): `ray._private.services.get_node_ip_address`."""
    return ray_services().get_node_ip_address()


def clear_gcs_address_cache() -> None:
    """Forget the GCS addresses Ray found running (a stopped test cluster's). Relies on (Ray 2.60):
    `ray._private.services.find_gcs_addresses` being an lru_cache'd function (`cache_clear`)."""
    ray_services().find_gcs_addresses.cache_clear()


def quiet_checkpoint_log() -> None:
    """Ray Train's "Checkpoint successfully created at: <path>" (INFO, once per report, streamed to the driver's
    terminal) at WARNING only. Relies on (Ray 2.60): the line is logged by logger `ray.train._internal.storage`."""
    logging.getLogger(CHECKPOINT_LOGGER).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- Ray: the autoscaler (sweeps.cluster)

def prepare_cluster_config(config: dict) -> dict:
    """The provider's defaults filled in, as `ray up` does. Relies on (Ray 2.60):
    `ray.autoscaler._private.util.prepare_config`."""
    from ray.autoscaler._private.util import prepare_config
    return prepare_config(copy.deepcopy(config))


def validate_cluster_config(config: dict) -> None:
    """Ray's JSON schema and consistency rules of a (prepared) cluster config; raises as `ray up` would. Relies
    on (Ray 2.60): `ray.autoscaler._private.util.validate_config`."""
    from ray.autoscaler._private.util import validate_config
    validate_config(config)


def aws_node_resources(config: dict, instance_types: dict[str, dict]) -> dict:
    """The config's `available_node_types` as Ray's AWS provider fills them at `ray up`, from `instance_types`
    instead of a DescribeInstanceTypes call. Relies on (Ray 2.60): `ray.autoscaler._private.aws.node_provider`
    `list_ec2_instances(region, credentials)` (swapped while this runs) and
    `AWSNodeProvider.fillout_available_node_types_resources(config)`. Imports boto3, as `ray up` does."""
    from ray.autoscaler._private.aws import node_provider as aws
    real = aws.list_ec2_instances
    aws.list_ec2_instances = lambda region, credentials=None: [copy.deepcopy(v) for v in instance_types.values()]
    try:
        filled = aws.AWSNodeProvider.fillout_available_node_types_resources(copy.deepcopy(config))
    finally:
        aws.list_ec2_instances = real
    return filled["available_node_types"]


def nodes_to_launch(provider, node_types: dict, max_workers: int, head_type: str, upscaling_speed: float,
                    head_ip: str, head_resources: dict, placement_groups: list) -> dict[str, int]:
    """{node type: count} the v1 autoscaler launches for pending placement groups on a cluster of only its
    head. Relies on (Ray 2.60): `ray.autoscaler._private.resource_demand_scheduler.ResourceDemandScheduler(
    provider, node_types, max_workers, head_node_type, upscaling_speed)` and its `get_nodes_to_launch` keywords,
    and `ray.autoscaler._private.node_provider_availability_tracker.NodeAvailabilitySummary`."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
    scheduler = ResourceDemandScheduler(provider, copy.deepcopy(node_types), max_workers, head_type, upscaling_speed)
    launch, _ = scheduler.get_nodes_to_launch(
        nodes=["head"], launching_nodes={}, resource_demands=[],
        unused_resources_by_ip={head_ip: head_resources}, pending_placement_groups=placement_groups,
        max_resources_by_ip={head_ip: head_resources}, ensure_min_cluster_size=[],
        node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    return dict(launch)


# --------------------------------------------------------------------------- Ray: the test clusters

def gcs_client(address: str):
    """A client of a cluster's GCS (`get_all_node_info(timeout=)`). Relies on (Ray 2.60): `ray._raylet.GcsClient`."""
    from ray._raylet import GcsClient
    return GcsClient(address=address)


def refresh_ray_config() -> None:
    """Make this process re-read RAY_AUTH_MODE (Ray caches it, and the token, per process). Relies on (Ray 2.60):
    `ray._raylet.Config.initialize("")`."""
    from ray._raylet import Config
    Config.initialize("")


def ensure_auth_token() -> None:
    """The local default token (~/.ray/auth_token), made if missing, when token auth is on. Relies on (Ray 2.60):
    `ray._private.authentication.authentication_token_setup.ensure_token_if_auth_enabled(create_token_if_missing)`."""
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    ensure_token_if_auth_enabled(create_token_if_missing=True)
