"""Packaging in Python: the command line and the checks made before anything is written."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import yaml

from tschat.errors import BadRequest, PackagingFailed
from tschat.ops import packaging
from tschat.ops.packaging import PackageOptions


def test_doctests() -> None:
    result = doctest.testmod(packaging)
    assert result.attempted > 0 and result.failed == 0


def test_command_line_takes_a_file_after_the_options(tmp_path: Path) -> None:
    command = packaging.parse_args(
        ["--output-dir", str(tmp_path), "--name", "odd", "--quantize", "Q8_0", "--force"]
        + ["--", "/models/-odd name.gguf"]
    )
    assert command.gguf == Path("/models/-odd name.gguf")
    assert command.output_dir == tmp_path
    assert (command.name, command.quantize, command.force) == ("odd", "Q8_0", True)


def test_packaging_a_file_that_is_not_gguf_fails_with_its_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_text("ssh-ed25519 AAAAC3 secret")
    lines = []
    with pytest.raises(PackagingFailed) as failure:
        for event in packaging.package_model(bad, name="bad", model_store=tmp_path / "store"):
            lines.append(event.line)
    assert "does not start with the GGUF magic bytes" in str(failure.value)
    assert "ssh" not in str(failure.value), "the file's bytes are never shown"
    assert "Nothing was written" in str(failure.value)
    assert lines and not (tmp_path / "store" / "bad.mar").exists()


def test_packaging_refuses_bad_names_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="not usable"):
        next(packaging.package_model(tmp_path / "x.gguf", name="../x", model_store=tmp_path))
    with pytest.raises(PackagingFailed, match="there is no file"):
        next(packaging.package_model(tmp_path / "x.gguf", name="x", model_store=tmp_path))


def test_prefix_cache_scope_goes_into_the_handler_config() -> None:
    command = packaging.parse_args(["--prefix-cache", "per_user"])
    config = packaging.model_config({"handler": {}}, command.options, "m.gguf")
    assert config["handler"]["prefix_cache"] == "per_user"
    assert "prefix_cache" not in packaging.model_config({}, PackageOptions(), "m.gguf")["handler"]
    with pytest.raises(packaging.UsageError, match="shared, per_user or off"):
        packaging.parse_args(["--prefix-cache", "users"])


def test_flash_attn_goes_into_the_handler_config_as_text() -> None:
    command = packaging.parse_args(["--flash-attn", "off"])
    config = packaging.model_config({"handler": {}}, command.options, "m.gguf")
    # Written as a quoted string: a bare off would come back from YAML as false.
    assert yaml.safe_load(yaml.safe_dump(config))["handler"]["flash_attn"] == "off"
    assert "flash_attn" not in packaging.model_config({}, PackageOptions(), "m.gguf")["handler"]
    with pytest.raises(packaging.UsageError, match="auto, on or off"):
        packaging.parse_args(["--flash-attn", "false"])
