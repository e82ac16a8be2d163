"""The cluster recipes in clusters/ are what users launch: each is checked here without a cloud.

The launcher YAMLs pass Ray's own cluster-config validation; the KubeRay RayJob is parsed and checked for
what `sweep` relies on (token authentication, a GPU worker group, no ReadWriteMany volume, the driver on
the head); the Dockerfile installs with the README's own command; nothing listens on every interface.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTERS = ROOT / "clusters"


def readme_install() -> list[str]:
    """The pip install arguments of the README's first command."""
    first = re.search(r"```bash\n(.*?)\n", (ROOT / "README.md").read_text()).group(1)
    words = shlex.split(first.split("&&")[1])
    return words[words.index("install") + 1:]


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "ray-cluster-onprem.yaml"])
def test_launcher_configs_pass_rays_validation_and_keep_auth_on(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTERS / name).read_text())
    validate_config(prepare_config(raw))  # raises on a config Ray would refuse
    text = (CLUSTERS / name).read_text()
    assert "0.0.0.0" not in text and "--dashboard-host=127.0.0.1" in text
    assert "RAY_AUTH_MODE=token" in text and raw["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_the_cloud_launcher_has_a_cpu_and_a_gpu_worker_type():
    raw = yaml.safe_load((CLUSTERS / "ray-cluster.yaml").read_text())
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}  # trials never run beside the driver
    instance = {n: t["node_config"]["InstanceType"] for n, t in types.items() if n != raw["head_node_type"]}
    assert any(i.startswith(("g", "p")) for i in instance.values())  # a GPU instance family
    assert any(i.startswith(("c", "m")) for i in instance.values())


def test_the_rayjob_has_what_sweep_relies_on():
    job = yaml.safe_load((CLUSTERS / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["sweep", "run"] and "--address" in words and words[words.index("--address") + 1] == "auto"
    assert words[words.index("--tracking-uri") + 1].startswith("http://")
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    major, minor = (int(x) for x in cluster["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52)  # token authentication
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    env = {e["name"] for e in head["template"]["spec"]["containers"][0]["env"]}
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= env
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    limits = [c["resources"]["limits"] for g in groups.values() for c in g["template"]["spec"]["containers"]]
    assert any("nvidia.com/gpu" in lim for lim in limits)
    workers_mount = [c.get("volumeMounts") for g in groups.values() for c in g["template"]["spec"]["containers"]]
    assert not any(workers_mount)  # no shared volume on the workers
    assert "ReadWriteMany" not in yaml.safe_dump(job)  # nor a claim that would need one


def test_the_dockerfile_installs_as_the_readme_does():
    text = (CLUSTERS / "Dockerfile").read_text()
    run = next(line for line in text.splitlines() if "pip install" in line)
    words = shlex.split(run.split("&&")[1])
    assert words[words.index("install") + 1:] == readme_install()
    assert "ENV RAY_AUTH_MODE=token" in text
    copied = {w for line in text.splitlines() if line.startswith("COPY") for w in line.split()[1:-1]}
    assert {"requirements.txt", "pyproject.toml", "sweep"} <= copied
