"""The TorchServe release this project pins, and the Netty its Java frontend bundles, are the
ones the README names."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import zipfile
from pathlib import Path

from tschat.settings import REPO_ROOT


def netty_properties() -> dict[str, str]:
    spec = importlib.util.find_spec("ts")
    assert spec is not None and spec.submodule_search_locations
    jar = Path(list(spec.submodule_search_locations)[0]) / "frontend" / "model-server.jar"
    with zipfile.ZipFile(jar) as bundle:
        text = bundle.read("META-INF/io.netty.versions.properties").decode("utf-8")
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: value.replace("\\:", ":") for key, value in pairs}


def test_readme_names_the_torchserve_and_netty_versions_installed() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    version = importlib.metadata.version("torchserve")
    assert version == "0.12.0" and f"TorchServe {version}" in readme
    netty = netty_properties()
    assert netty["netty-codec-http.version"] == netty["netty-handler.version"] == "4.1.53.Final"
    assert f"Netty {netty['netty-codec-http.version']}" in readme
    assert netty["netty-codec-http.commitDate"].startswith("2020-10-")
    assert "October 2020" in readme
