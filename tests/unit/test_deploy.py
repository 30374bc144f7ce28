"""The KServe example stays consistent with itself and keeps token authorization on."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kserve"


def properties() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (DEPLOY / "config.properties").read_text().splitlines())
    return {
        k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2) if not k.startswith("#")
    }


def test_inference_service_serves_the_torchserve_port() -> None:
    spec = yaml.safe_load((DEPLOY / "inferenceservice.yaml").read_text())
    assert spec["kind"] == "InferenceService"
    (container,) = spec["spec"]["predictor"]["containers"]
    port = container["ports"][0]["containerPort"]
    assert properties()["inference_address"].endswith(f":{port}")
    assert container["readinessProbe"]["tcpSocket"]["port"] == port


def test_config_keeps_auth_on_and_registration_off() -> None:
    config = properties()
    assert "disable_token_authorization" not in config
    assert config["enable_model_api"] == "false"
    assert config["management_address"].startswith("http://127.0.0.1:")
    assert config["decode_input_request"] == "false"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert config["model_store"] in dockerfile
    assert "--disable-token-auth" not in dockerfile
