"""Operator-side env builders (TF_CONFIG, torchrun PET_*) and the pod-side topology readers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from slipway_training.launch import (
    JOB_INDEX_FIELD_PATH,
    container_args,
    params_env,
    resolve_env,
    tf_config,
    tf_config_env,
    torchrun_env,
    worker_host,
)
from slipway_training.topology import Topology, TopologyError, tf_topology, torch_topology


def test_worker_host():
    assert worker_host("tr-abc", "tr-abc-workers", 2) == "tr-abc-2.tr-abc-workers"
    assert worker_host("j", "s", 0, namespace="ml") == "j-0.s.ml.svc"


def test_tf_config_lists_every_worker_and_the_task():
    assert tf_config("train", "train-svc", 3, 1, 2222) == {
        "cluster": {"worker": ["train-0.train-svc:2222", "train-1.train-svc:2222", "train-2.train-svc:2222"]},
        "task": {"type": "worker", "index": 1},
    }


@pytest.mark.parametrize(("workers", "index"), [(0, 0), (2, 2), (2, -1)])
def test_tf_config_rejects_bad_indexes(workers, index):
    with pytest.raises(ValueError):
        tf_config("j", "s", workers, index)


def test_tf_config_env_expands_per_pod_like_the_kubelet():
    env = tf_config_env("train", "train-svc", 2, port=2345)
    assert env[0]["name"] == "SLIPWAY_WORKER_INDEX"
    assert env[0]["valueFrom"]["fieldRef"]["fieldPath"] == JOB_INDEX_FIELD_PATH
    assert "$(SLIPWAY_WORKER_INDEX)" in env[1]["value"]
    for index in (0, 1):
        resolved = resolve_env(env, index)
        assert json.loads(resolved["TF_CONFIG"]) == tf_config("train", "train-svc", 2, index, 2345)
        assert tf_topology(resolved) == Topology(world_size=2, rank=index)


def test_torchrun_env_on_an_indexed_job():
    env = torchrun_env("train", "train-svc", 3, port=29500)
    assert [e["name"] for e in env] == [
        "PET_NNODES",
        "PET_NPROC_PER_NODE",
        "PET_NODE_RANK",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
        "PET_MAX_RESTARTS",
    ]
    assert resolve_env(env, 2) == {
        "PET_NNODES": "3",
        "PET_NPROC_PER_NODE": "1",
        "PET_NODE_RANK": "2",
        "PET_MASTER_ADDR": "train-0.train-svc",
        "PET_MASTER_PORT": "29500",
        "PET_MAX_RESTARTS": "0",
    }


def test_builders_are_json_serialisable_pod_env():
    for env in (torchrun_env("a", "b", 2), tf_config_env("a", "b", 2), params_env({"lr": "1"})):
        assert json.loads(json.dumps(env)) == env
        assert all(set(e) <= {"name", "value", "valueFrom"} for e in env)


def test_params_env_is_sorted_pod_env():
    assert params_env({"lr": "0.1", "batchSize": "8"}) == [
        {"name": "SLIPWAY_PARAM_BATCH_SIZE", "value": "8"},
        {"name": "SLIPWAY_PARAM_LR", "value": "0.1"},
    ]


def test_container_args():
    assert container_args("digits_cnn", torchrun=False) == ["slipway_training.digits_cnn"]
    assert container_args("digits_cnn", torchrun=True, extra=["--epochs", "3"]) == [
        "torch.distributed.run",
        "--module",
        "slipway_training.digits_cnn",
        "--epochs",
        "3",
    ]
    assert container_args("my.pkg.train", torchrun=False) == ["my.pkg.train"]


def test_resolve_env_expansion_rules():
    env = [
        {"name": "A", "value": "x"},
        {"name": "B", "value": "$(A)-$(C)-$$(A)"},
        {"name": "C", "value": "late"},
    ]
    assert resolve_env(env)["B"] == "x-$(C)-$(A)"
    with pytest.raises(ValueError, match="unsupported valueFrom"):
        resolve_env([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])


def test_launch_config_and_topology_import_no_frameworks():
    code = (
        "import sys; import slipway_training.launch, slipway_training.config, "
        "slipway_training.topology; "
        "bad = {'torch', 'tensorflow', 'numpy', 'mlflow', 'sklearn'} & set(sys.modules); "
        "print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Topology()),
        ({"WORLD_SIZE": "1", "RANK": "0"}, Topology()),
        (
            {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            Topology(4, 3, 1),
        ),
    ],
)
def test_torch_topology(env, expected):
    assert torch_topology(env) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
        {"WORLD_SIZE": "2", "RANK": "0"},
        {"WORLD_SIZE": "two"},
    ],
)
def test_torch_topology_rejects_inconsistent_env(env):
    with pytest.raises(TopologyError):
        torch_topology(env)


def test_tf_topology_with_a_chief_task():
    cluster = {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}
    chief = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})}
    worker = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})}
    assert tf_topology(chief) == Topology(3, 0)
    assert tf_topology(chief).is_leader
    assert tf_topology(worker) == Topology(3, 2)
    assert not tf_topology(worker).is_leader


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}),
        json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}),
    ],
)
def test_tf_topology_rejects_bad_tf_config(raw):
    with pytest.raises(TopologyError):
        tf_topology({"TF_CONFIG": raw})


def test_tf_topology_single_worker_is_not_distributed():
    single = {"TF_CONFIG": json.dumps(tf_config("j", "s", 1, 0))}
    assert not tf_topology(single).distributed
