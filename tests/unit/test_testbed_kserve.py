"""The test bed's changes to KServe's own configuration, and how it reads KServe's kustomizations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from bed.addons.kserve import adjust_config, kustomize_images, with_images


def test_adjust_config_makes_standard_the_default_and_creates_no_ingress():
    upstream = {
        "deploy": '{\n  "defaultDeploymentMode": "Serverless"\n}',
        "ingress": json.dumps(
            {"enableGatewayApi": False, "ingressDomain": "example.com", "disableIngressCreation": False}
        ),
        "storageInitializer": '{"image": "kserve/storage-initializer:latest"}',
    }
    out = adjust_config(upstream)
    assert json.loads(out["deploy"]) == {"defaultDeploymentMode": "Standard"}
    ingress = json.loads(out["ingress"])
    assert ingress["disableIngressCreation"] is True
    assert ingress["enableGatewayApi"] is False
    assert ingress["disableIstioVirtualHost"] is True
    assert ingress["ingressDomain"] == "example.com"
    assert out["storageInitializer"] == upstream["storageInitializer"]  # left as upstream ships it
    assert json.loads(upstream["deploy"]) == {"defaultDeploymentMode": "Serverless"}  # input untouched


def test_kustomize_images_reads_each_entry(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "resources:\n- a.yaml\n\nimages:\n"
        "- name: kserve-sklearnserver\n  newName: kserve/sklearnserver\n  newTag: latest\n\n"
        "- name: mlserver\n  newName: docker.io/seldonio/mlserver\n  newTag: 1.7.1\n"
    )
    assert kustomize_images(tmp_path / "kustomization.yaml") == {
        "kserve-sklearnserver": "kserve/sklearnserver:latest",
        "mlserver": "docker.io/seldonio/mlserver:1.7.1",
    }


def test_images_are_replaced_by_name_wherever_they_appear():
    runtime = {"spec": {"containers": [{"name": "kserve-container", "image": "mlserver:replace"}], "other": "mlserver"}}
    out = with_images(runtime, {"mlserver": "docker.io/seldonio/mlserver:1.7.1"})
    assert out["spec"]["containers"][0]["image"] == "docker.io/seldonio/mlserver:1.7.1"
    assert out["spec"]["other"] == "mlserver"
