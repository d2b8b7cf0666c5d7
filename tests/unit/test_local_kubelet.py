"""The local kubelet's pure parts: which pods it runs, image entry points, mount wrapping, readiness thresholds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))

import local_kubelet as kl  # noqa: E402


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "n", "labels": labels or {}, "annotations": annotations or {}}}


def test_it_runs_training_pods_and_kserve_predictor_pods_only() -> None:
    assert kl.is_ours(pod(labels={"ml.slipway.dev/trainingrun": "r"}))
    assert kl.is_ours(pod(annotations={kl.SERVING_ANNOTATION: "s3://b/m"}))
    assert not kl.is_ours(pod(labels={"serving.kserve.io/inferenceservice": "x"}))  # kwok's, like any other
    assert not kl.is_ours(pod())


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("kserve/storage-initializer:v0.20.0", "kserve/storage-initializer"),
        ("docker.io/kserve/storage-initializer@sha256:abc", "kserve/storage-initializer"),
        ("localhost:5000/kserve/storage-initializer:latest", "kserve/storage-initializer"),
        ("busybox", "busybox"),
    ],
)
def test_image_repository(image: str, repository: str) -> None:
    assert kl.image_repository(image) == repository


def test_a_container_without_command_runs_its_known_image_entry_point() -> None:
    argv = kl.command_line({"image": "kserve/storage-initializer:v0.20.0", "args": ["s3://b/m", "/mnt/models"]}, {})
    assert argv[0] == sys.executable and argv[1] == "-c" and "Storage.download" in argv[2]
    assert argv[3:] == ["s3://b/m", "/mnt/models"]
    with pytest.raises(ValueError, match="ENTRYPOINT"):
        kl.command_line({"image": "unknown/image"}, {})


def test_mounts_bind_the_pods_own_directories_in_a_private_namespace(tmp_path: Path) -> None:
    container = {
        "volumeMounts": [
            {"name": "models", "mountPath": "/mnt/models", "readOnly": True},
            {"name": "scratch", "mountPath": "/tmp/x y", "subPath": "a"},
        ]
    }
    argv = kl.mount_wrapper(container, {"models": tmp_path / "m", "scratch": tmp_path / "s"}, ["python", "-V"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    script = argv[7]
    assert f"mount --bind {tmp_path / 'm'} /mnt/models" in script
    assert "mount -o remount,bind,ro /mnt/models" in script
    assert f"mount --bind {tmp_path / 's' / 'a'} '/tmp/x y'" in script
    assert argv[-2:] == ["python", "-V"]
    assert kl.mount_wrapper({}, {}, ["python"]) == ["python"]
    with pytest.raises(ValueError, match="no such volume"):
        kl.mount_wrapper({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, {}, ["python"])


def test_readiness_follows_the_probe_thresholds() -> None:
    results = iter([False, True, True, False, False, False, True])
    prober = kl.Prober({"httpGet": {"port": 1}, "successThreshold": 2, "failureThreshold": 3}, {}, "10.246.0.1")
    prober.check = lambda: next(results)  # type: ignore[method-assign]
    seen = [(prober.step(), prober.ready) for _ in range(7)]
    # ready after two successes; unready only after three failures in a row; one success makes it
    # count again from there (successThreshold 2)
    assert seen == [
        (False, False),
        (False, False),
        (True, True),
        (False, True),
        (False, True),
        (True, False),
        (False, False),
    ]


def test_named_probe_port_resolves_to_the_container_port() -> None:
    prober = kl.Prober({"httpGet": {"port": "http"}}, {"ports": [{"name": "http", "containerPort": 8080}]}, "x")
    assert prober.port("http") == 8080 and prober.port(9000) == 9000
    with pytest.raises(ValueError):
        prober.port("grpc")


def test_env_from_secret_and_config_map_keys_is_what_was_read_and_a_missing_key_stops_the_container() -> None:
    """KServe injects the storage initializer's S3 credentials as secretKeyRef env."""
    container = {
        "env": [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "id"}}},
            {"name": "ENDPOINT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "url"}}},
            {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "nope", "optional": True}}},
            {"name": "URL", "value": "$(ENDPOINT)/bucket"},
        ]
    }
    assert [k for k, _ in kl.key_refs(container)] == [
        ("secretKeyRef", "s3", "id"),
        ("configMapKeyRef", "cfg", "url"),
        ("secretKeyRef", "s3", "nope"),
    ]
    refs = {("secretKeyRef", "s3", "id"): "AKIA", ("configMapKeyRef", "cfg", "url"): "http://s3"}
    env = kl.container_env(pod(), container, refs=refs)
    assert env == {"AWS_ACCESS_KEY_ID": "AKIA", "ENDPOINT": "http://s3", "URL": "http://s3/bucket"}
    with pytest.raises(ValueError, match="secretKeyRef s3/id"):
        kl.container_env(pod(), container, refs={("configMapKeyRef", "cfg", "url"): "http://s3"})
