"""The example `ray up` file parses, has what the README promises, and passes the installed Ray's
own cluster-config preparation and schema check (what `ray up` runs before it touches a machine)."""
from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO

CLUSTER_YAML = REPO / "deploy" / "ray-cluster.yaml"


def load():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_cluster_yaml_has_the_required_parts():
    cfg = load()
    assert {"cluster_name", "provider", "auth", "file_mounts", "setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands"} <= set(cfg)
    provider = cfg["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]
    assert cfg["auth"]["ssh_user"]
    assert any("[cluster]" in c and "pip install" in c for c in cfg["setup_commands"])
    assert "~/.ray/auth_token" in cfg["file_mounts"]  # the token reaches every node
    head = " ".join(cfg["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --address=" in " ".join(cfg["worker_start_ray_commands"])


def test_ray_cluster_yaml_passes_rays_own_checks():
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    cfg = util.prepare_config(load())  # local provider: head_ip/worker_ips -> one node type, min/max workers
    util.validate_config(cfg)          # ray-schema.json of the installed Ray, and the node-type rules
    node_type = cfg["available_node_types"][cfg["head_node_type"]]
    assert node_type["min_workers"] == node_type["max_workers"] == len(load()["provider"]["worker_ips"])
