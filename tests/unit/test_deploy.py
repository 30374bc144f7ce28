"""The KServe example stays consistent with itself, keeps token authorization on, runs as a
user that is not root, and says how long its keys last."""

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


def container() -> dict:
    spec = yaml.safe_load((DEPLOY / "inferenceservice.yaml").read_text())
    (only,) = spec["spec"]["predictor"]["containers"]
    return dict(only)


def test_the_container_runs_as_a_user_that_is_not_root() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the image names its user"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert any(f"useradd --uid {uid} " in line for line in lines)
    last_user = max(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert not any(line.startswith("RUN ") for line in lines[last_user:]), (
        "nothing runs as root after"
    )
    context = container()["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == int(uid)
    assert context["runAsGroup"] == int(gid)
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"


def test_keys_last_as_long_as_the_readme_says() -> None:
    minutes = float(properties()["token_expiration_min"])
    readme = (DEPLOY / "README.md").read_text()
    assert f"token_expiration_min={minutes:g}" in readme
    assert f"last {minutes / 60 / 24:g} days" in readme
    assert "rollout restart" in readme
