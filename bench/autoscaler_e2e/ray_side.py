"""Ray's own autoscaler (v2, fake multi-node provider) as `AutoscalingCluster` configures it,
started and stopped by PID.

`AutoscalingCluster.start()` and `.shutdown()` run `ray stop --force`, which kills every Ray
process on the machine. This starts the same head (`ray start --head` with the same autoscaling
config and environment) as one `--block` process leading its own session, with a marker in its
environment that every process it starts inherits (GCS, raylet, Ray's monitor, and the worker
nodes the monitor's fake provider starts), and stops exactly those processes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import yaml

from jupyter_raykube.backends import processes
from jupyter_raykube.backends.local import _free_ports

BASE_CONFIG = Path(__file__).with_name("fake_multinode_base.yaml")
MARKER = "RAYKUBE_BENCH_RAY_SIDE"  # env var on every process of the Ray-side cluster


def autoscaler_config(worker: Mapping[str, Any], head_resources: Mapping[str, float],
                      idle_s: float, gcs_address: str) -> dict[str, Any]:
    """What `AutoscalingCluster(..., autoscaler_v2=True)` generates, with the GCS address the
    fake provider's nodes join (its default is this host's port 6379)."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["available_node_types"] = {
        "cpu": dict(worker),
        "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}}
    config["provider"].update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID, gcs_address=gcs_address)
    config["idle_timeout_minutes"] = idle_s / 60
    return config


@contextmanager
def ray_default_config() -> Iterator[None]:
    """Ray's monitor loads the fake provider's default config from Ray's package dir, where the
    2.60 wheel lacks it: place ours there for the run, and remove it after."""
    target = Path(ray.__file__).parent / "autoscaler/_private/fake_multi_node/example.yaml"
    placed = not target.exists()
    if placed:
        target.write_text(BASE_CONFIG.read_text())
    try:
        yield
    finally:
        if placed:
            target.unlink(missing_ok=True)


@contextmanager
def autoscaling_cluster(worker: Mapping[str, Any], idle_s: float) -> Iterator[str]:
    """A running Ray head with Ray's v2 autoscaler; yields its GCS address."""
    from ray._private.services import get_node_ip_address
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    port = _free_ports(1)[0]
    address = f"{get_node_ip_address()}:{port}"
    uid = secrets.token_hex(6)
    work = Path(tempfile.mkdtemp(prefix="rkb-ray-", dir="/tmp"))
    config_path = work / "autoscaling.json"
    config_path.write_text(json.dumps(autoscaler_config(worker, {"CPU": 0}, idle_s, address)))
    ray_cmd = str(Path(sys.executable).with_name("ray"))
    args = [ray_cmd, "start", "--head", "--block", f"--port={port}", f"--autoscaling-config={config_path}",
            "--num-cpus=0", "--disable-usage-stats", f"--temp-dir={work / 'ray'}"]
    env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
           "RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
           "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID, "RAY_AUTH_MODE": "disabled", MARKER: uid}
    with ray_default_config():
        head = processes.spawn(args, env=env, log_path=work / "head.log")
        try:
            yield address
        finally:
            processes.terminate_group(processes.ProcessRef.of(head), child=head, grace_s=10)
            processes.kill_marked(MARKER, uid)
            shutil.rmtree(work, ignore_errors=True)


def connect(address: str, timeout_s: float = 120.0) -> None:
    """`ray.init` once the head's GCS answers."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.init(address=address, logging_level="ERROR")
            return
        except (ConnectionError, RuntimeError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
