"""Config validation: the example is valid; each kind of bad file gives exit 2 naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "mock.toml"
JPEG_LS = "1.2.840.10008.1.2.4.80"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_example_is_valid_and_typed() -> None:
    cfg = config.load(EXAMPLE)
    assert cfg.agent.ae_title == "CT_CONSOLE1"
    assert cfg.hardware.driver == "mock"
    (pacs,) = cfg.destinations
    assert pacs.port == 11112 and pacs.default
    assert pacs.transfer_syntaxes[0] == JPEG_LS
    assert check_config(EXAMPLE).returncode == 0


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace('"/tmp/modality-agent-mock/spool"', '"spool"')
    f = tmp_path / "agent.toml"
    f.write_text(text)
    assert config.load(f).agent.spool_dir == tmp_path / "spool"


def _variant(old: str, new: str) -> str:
    text = EXAMPLE.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


def _replace_line(prefix: str, new: str) -> str:
    lines = EXAMPLE.read_text().splitlines()
    (i,) = [n for n, line in enumerate(lines) if line.startswith(prefix)]
    lines[i] = new
    return "\n".join(lines) + "\n"


BAD = {
    "port out of range": (_variant("port = 11112", "port = 99999"), "destinations[0].port"),
    "port as string": (_variant("port = 11112", 'port = "104"'), "destinations[0].port"),
    "unknown key with hint": (
        _variant('station_name = "CT1"', 'staton_name = "CT1"'),
        "did you mean 'station_name'",
    ),
    "unknown section": (EXAMPLE.read_text() + "\n[wrklist]\nae_title = 'X'\n", "wrklist"),
    "missing required key": (_variant('manufacturer = "Example Medical"\n', ""), "manufacturer"),
    "missing destinations": (EXAMPLE.read_text().split("[[destinations]]")[0], "destinations"),
    "AE title too long": (
        _variant('ae_title = "ARCHIVE"', 'ae_title = "AN_AE_TITLE_TOO_LONG"'),
        "destinations[0].ae_title",
    ),
    "AE title with backslash": (
        _variant('ae_title = "ARCHIVE"', 'ae_title = "ARC\\\\HIVE"'),
        "destinations[0].ae_title",
    ),
    "unknown transfer syntax": (
        _variant('"JPEGLSLossless",', '"JPEGLSLossy2",'),
        "destinations[0].transfer_syntaxes[0]",
    ),
    "unknown driver": (_variant('driver = "mock"', 'driver = "usb"'), "hardware.driver"),
    "boolean as string": (
        _variant("storage_commitment = false", 'storage_commitment = "no"'),
        "destinations[0].storage_commitment",
    ),
    "commitment without listen_port": (
        _variant("storage_commitment = false", "storage_commitment = true"),
        "destinations[0].storage_commitment",
    ),
    "no default destination": (
        _variant("default = true   ", "default = false  "),
        "default = true",
    ),
    "duplicate destination": (
        EXAMPLE.read_text()
        + "\n"
        + "[[destinations]]"
        + EXAMPLE.read_text().split("[[destinations]]")[1],
        "used twice",
    ),
    "bad uid root": (
        _variant('# uid_root = "1.2.826.0.1.3680043.10.999"', 'uid_root = "1.02.3"'),
        "agent.uid_root",
    ),
    "TLS CA missing": (
        _variant("# [destinations.tls]", '[destinations.tls]\nca_file = "/nonexistent/ca.pem"'),
        "destinations[0].tls.ca_file",
    ),
    "dose registry as a default destination": (
        _variant("# dose_registry = false ", "dose_registry = true    "),
        "destinations[0].default",
    ),
    "not TOML": ("[agent\nae_title = ", "not valid TOML"),
    "empty transfer syntax list": (
        _replace_line("transfer_syntaxes = ", "transfer_syntaxes = []"),
        "destinations[0].transfer_syntaxes",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_config_is_exit_2_naming_the_key(kind: str, tmp_path: Path) -> None:
    text, must_mention = BAD[kind]
    f = tmp_path / "bad.toml"
    f.write_text(text)
    r = check_config(f)
    assert r.returncode == 2, r.stdout + r.stderr
    assert must_mention in r.stderr, r.stderr
    assert str(f) in r.stderr
    assert "Traceback" not in r.stderr


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = _variant("port = 11112", "port = 0").replace('driver = "mock"', 'driver = "x"')
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(f)
    keys = {p.key for p in e.value.problems}
    assert {"destinations[0].port", "hardware.driver"} <= keys


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    r = check_config(tmp_path / "absent.toml")
    assert r.returncode == 2
    assert "cannot read the file" in r.stderr
