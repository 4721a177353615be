"""Ray autoscaling end to end on the fake multi-node provider, node loss, and the deployment manifests.

The cluster runs in private network + PID namespaces (``tests/workers/fake_cluster.py``):
every address is 127.0.0.1, and every process the scenario starts is stopped by PID
before the namespace's first process leaves (the kernel kills any survivor then).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from autoscale_scenario import NODE_TYPE, node_type_spec
from conftest import needs_redis
from ear_stream_workers.policy import resource_bundles
from ear_stream_workers.supervisor import gpu_offer, node_types_with_gpus
from fake_cluster import autoscaler_config, namespace_unavailable, run_in_namespace

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "workers" / "cluster.yaml"
KUBERAY_YAML = ROOT / "workers" / "kuberay.yaml"
KUBERAY_SCHEMA = ROOT / "workers" / "schemas" / "raycluster-v1.schema.json"

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _no_namespace() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed"
    return namespace_unavailable()


NAMESPACE_REASON = _no_namespace()
needs_namespace = pytest.mark.skipif(NAMESPACE_REASON is not None, reason=NAMESPACE_REASON or "")


def _scenario(models_dir: Path, images: Path, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "result.json"
    done = run_in_namespace(
        [sys.executable, str(Path(__file__).with_name("autoscale_scenario.py")), "--models", str(models_dir), "--images", str(images),
         "--out", str(tmp_path / "parquet"), "--json", str(out), "--n", "96", *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=420,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def _leftovers(marker: str) -> list[int]:
    """Host processes whose command line mentions the scenario's Ray directory (none may survive)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _assert_nothing_lost(r: dict) -> None:
    assert r["missing"] == [] and r["rows"] >= r["n"]
    assert r["final_backlog"] == [0, 0] and r["stream_length"] == 0


@needs_redis
@needs_namespace
def test_a_backlog_brings_nodes_whose_actors_drain_it_then_the_nodes_leave(models_dir, synthetic_root, tmp_path):
    r = _scenario(models_dir, synthetic_root / "synthetic" / "test", tmp_path)
    _assert_nothing_lost(r)
    assert r["use_gpu"] is True  # the node type offers GPUs: {"GPU": 1} bundles, num_gpus=1 actors
    nodes = [s["nodes"] for s in r["timeline"]]
    assert nodes[0] == 0 and max(nodes) == 2 and nodes[-1] == 0, nodes  # rose, then back to the minimum
    peak = nodes.index(2)
    assert all(a <= b for a, b in itertools.pairwise(nodes[: peak + 1]))
    assert r["placements"] and all(node != r["head"] for node in r["placements"].values())  # on the new nodes
    assert len(set(r["placements"].values())) == 2
    assert r["drains"] and all(d["returned"] and d["pending_at_kill"] == 0 for d in r["drains"])
    ev = r["events"]
    assert ev["first_node"] < ev["first_actor_on_new_node"] <= ev["drained"] < ev["back_to_min"]
    assert r["stopped_pids"] and not _leftovers("ear-ray-")


@needs_redis
@needs_namespace
def test_a_node_lost_mid_batch_loses_nothing(models_dir, synthetic_root, tmp_path):
    r = _scenario(
        models_dir,
        synthetic_root / "synthetic" / "test",
        tmp_path,
        "--kill-node",
        "--flush-seconds",
        "3",
        "--spare-nodes",
        "1",
    )
    assert len(r["kills"]) == 1 and r["kills"][0]["held"] > 0  # its actor held unacknowledged entries
    _assert_nothing_lost(r)  # reclaimed (XAUTOCLAIM or the restarted consumer) and scored
    killed = r["kills"][0]["actor"]
    drained = {d["name"]: d for d in r["drains"]}
    assert drained[killed]["returned"], "the killed node's actor never came back to be drained"
    after = [h["node"] for h in r["history"] if h["actor"] == killed and h["t"] > r["kills"][0]["t"]]
    assert after and r["kills"][0]["node"] not in after, r["history"]  # restarted on another node
    assert not _leftovers("ear-ray-")


def test_gpu_actors_only_when_the_node_types_offer_gpus(tmp_path):
    assert gpu_offer(CLUSTER_YAML)[0] is True
    cpu_only = tmp_path / "cpu.yaml"
    cfg = autoscaler_config({"cpu_worker": {"resources": {"CPU": 4}, "min_workers": 0, "max_workers": 3}}, 1.0)
    cpu_only.write_text(yaml.safe_dump(cfg))
    assert gpu_offer(cpu_only) == (False, f"node types in {cpu_only}: none with GPUs")
    capped = autoscaler_config({"g": {"resources": {"GPU": 1}, "min_workers": 0, "max_workers": 0}}, 1.0)
    assert node_types_with_gpus(capped) == []
    with pytest.raises(FileNotFoundError):
        gpu_offer(tmp_path / "missing.yaml")


def test_cluster_manifest_validates_against_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load(CLUSTER_YAML.read_text()), schema)
    jsonschema.validate(autoscaler_config(node_type_spec(2), 0.1), schema)  # what the fake cluster runs
    broken = yaml.safe_load(CLUSTER_YAML.read_text())
    del broken["available_node_types"][NODE_TYPE]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_kuberay_manifest_validates_against_the_crd_fields_it_uses():
    import jsonschema

    schema = json.loads(KUBERAY_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(KUBERAY_YAML.read_text()))
    typo = yaml.safe_load(KUBERAY_YAML.read_text())
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert not validator.is_valid(typo)


def test_manifests_agree_with_what_the_autoscaling_test_proves():
    """Node type name, GPUs per node and the scaling range: cluster.yaml, kuberay.yaml, the test and the CLI."""
    cluster = yaml.safe_load(CLUSTER_YAML.read_text())
    kube = yaml.safe_load(KUBERAY_YAML.read_text())
    gpu_types = node_types_with_gpus(cluster)
    assert gpu_types == [NODE_TYPE]  # the node type the fake cluster scales is the production one
    prod = cluster["available_node_types"][NODE_TYPE]
    tested = node_type_spec(2)[NODE_TYPE]
    assert prod["resources"]["GPU"] == tested["resources"]["GPU"] == 1  # one actor per GPU node
    assert prod["min_workers"] == tested["min_workers"] == 0  # scales to zero, as tested
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"]["CPU"] == 0  # head: no actors
    bundle = resource_bundles(1, use_gpu=True)[0]
    assert all(prod["resources"].get(k, 0) >= v for k, v in bundle.items())
    group = next(g for g in kube["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-workers")
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == prod["resources"]["GPU"]
    assert (group["minReplicas"], group["maxReplicas"]) == (prod["min_workers"], prod["max_workers"])
    assert kube["spec"]["enableInTreeAutoscaling"] is True
    assert kube["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head_cmd = kube["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["args"][0]
    assert int(re.search(r"--max-workers (\d+)", head_cmd).group(1)) == group["maxReplicas"]
    assert int(re.search(r"--max-workers (\d+)", CLUSTER_YAML.read_text()).group(1)) == prod["max_workers"]
