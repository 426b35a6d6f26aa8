"""The service files of SPEC §9: the unit checked by systemd's own tools (`systemd-analyze
verify` and `security`, `systemd-sysusers --dry-run`) in a throw-away root, and the promises
that matter to the agent read from the files themselves."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "modality-agent.service"
SYSUSERS = ROOT / "systemd" / "modality-agent.sysusers.conf"
UDEV_RULES = ROOT / "udev" / "90-modality-agent.rules"
DEVICE_UNIT = r"dev-modality\x2dscanner.device"  # systemd-escape -p --suffix=device
EXEC_START = "/usr/bin/modality-agent run -c /etc/modality-agent/config.toml"
HOST_UNITS = Path("/usr/lib/systemd/system")

Sections = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Sections:
    """systemd's unit syntax, enough for our file: sections, repeated keys, continuations."""
    sections: Sections = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(sections: Sections, section: str, key: str) -> list[str]:
    """Every value given to `key`, split on spaces as list-valued settings are."""
    out: list[str] = []
    for k, v in sections.get(section, []):
        if k == key:
            out = [] if v == "" else [*out, *v.split()]
    return out


def one(sections: Sections, section: str, key: str) -> str | None:
    """The effective value of a single-valued setting (the last assignment wins)."""
    found = [v for k, v in sections.get(section, []) if k == key]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def unit() -> Sections:
    return parse_unit(UNIT.read_text())


def require_systemd_tool(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (Debian package `systemd`)")
    if not HOST_UNITS.is_dir():
        pytest.skip(f"{HOST_UNITS} missing: systemd's own units are needed for a verify root")


@pytest.fixture
def verify_root(tmp_path: Path) -> Iterator[Path]:
    """A root holding systemd's units, our unit and a stand-in for the ExecStart binary.

    `verify` checks that ExecStart's binary exists; the root lets it see one without
    installing anything on the host (`--root` makes it resolve paths there)."""
    require_systemd_tool("systemd-analyze")
    root = tmp_path / "root"
    binary = root / "usr" / "bin" / "modality-agent"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    shutil.copytree(HOST_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc" / "systemd" / "system" / UNIT.name)
    yield root


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args, f"--root={root}", "modality-agent.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return analyze(root, "verify", "--man=no", "--generators=no")


def test_systemd_analyze_verify_is_clean(verify_root: Path) -> None:
    """Exit 0 is not enough: unknown keys and bad values are only warnings, so any output
    fails the test."""
    done = verify(verify_root)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


def test_verify_would_report_a_mistake(verify_root: Path) -> None:
    """The harness above can fail: a typo and a bad value in a copy are reported."""
    copy = verify_root / "etc" / "systemd" / "system" / UNIT.name
    broken = UNIT.read_text().replace(
        "\n[Service]\n", "\n[Service]\nProtectHom=yes\nPrivateTmp=maybe\n"
    )
    copy.write_text(broken)
    done = verify(verify_root)
    assert "ProtectHom" in done.stderr and "maybe" in done.stderr, done.stderr
    assert "outside of section" not in done.stderr, done.stderr
    (verify_root / "usr" / "bin" / "modality-agent").unlink()
    copy.write_text(UNIT.read_text())
    done = verify(verify_root)
    assert done.returncode != 0 and "/usr/bin/modality-agent" in done.stderr, done.stderr


def test_security_exposure_stays_low(verify_root: Path) -> None:
    """`systemd-analyze security` scores 0 (locked down) to 10; ours is 1.5 today."""
    done = analyze(verify_root, "security", "--offline=yes", "--threshold=20", "--no-pager")
    assert done.returncode == 0, done.stdout + done.stderr


def test_sysusers_creates_the_user_and_its_group(tmp_path: Path) -> None:
    require_systemd_tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy(Path("/etc") / name, root / "etc" / name)
    done = subprocess.run(
        ["systemd-sysusers", "--dry-run", f"--root={root}", "-"],
        input=SYSUSERS.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    already = "modality-agent" in (root / "etc" / "passwd").read_text()
    assert already or ("group 'modality-agent'" in out and "user 'modality-agent'" in out), out


def test_notify_watchdog_and_restart(unit: Sections) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    watchdog = one(unit, "Service", "WatchdogSec")
    assert watchdog and watchdog not in ("0", "infinity")
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "ExecStart") == EXEC_START
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_a_dedicated_user_never_a_dynamic_one(unit: Sections) -> None:
    """DynamicUser= implies RemoveIPC=, which would delete the shared-memory ring."""
    assert one(unit, "Service", "User") == "modality-agent"
    assert one(unit, "Service", "Group") == "modality-agent"
    assert "dialout" in values(unit, "Service", "SupplementaryGroups")
    assert one(unit, "Service", "DynamicUser") in (None, "no", "false")
    assert one(unit, "Service", "RemoveIPC") in (None, "no", "false")
    assert one(unit, "Service", "PrivateIPC") in (None, "no", "false")
    assert "modality-agent" in SYSUSERS.read_text().split()


def test_state_and_runtime_directories(unit: Sections) -> None:
    assert one(unit, "Service", "StateDirectory") == "modality-agent"
    assert one(unit, "Service", "RuntimeDirectory") == "modality-agent"
    assert one(unit, "Service", "RuntimeDirectoryMode") == "0750"
    assert one(unit, "Service", "RuntimeDirectoryPreserve") in ("no", "restart")


def test_hardening_keys(unit: Sections) -> None:
    assert one(unit, "Service", "ProtectSystem") == "strict"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert one(unit, "Service", key) == "yes", key


def test_serial_adapter_and_ring_stay_reachable(unit: Sections) -> None:
    """No PrivateDevices= (it hides the adapter); any device allow-list names the tty drivers
    (ProtectClock= alone adds char-rtc and so closes every other device)."""
    assert one(unit, "Service", "PrivateDevices") in (None, "no", "false")
    policy = one(unit, "Service", "DevicePolicy") or "auto"
    allowed = values(unit, "Service", "DeviceAllow")
    if policy != "auto" or allowed or one(unit, "Service", "ProtectClock") == "yes":
        for group in ("char-ttyUSB", "char-ttyACM"):
            assert group in allowed and allowed[allowed.index(group) + 1] == "rw", group
    for key in ("InaccessiblePaths", "TemporaryFileSystem", "ReadOnlyPaths"):
        for path in values(unit, "Service", key):
            assert not path.lstrip("-").startswith(("/dev", "/dev/shm")), (key, path)


def test_device_wanted_not_bound(unit: Sections) -> None:
    """A pulled cable must not stop the daemon (SPEC §9)."""
    assert DEVICE_UNIT in values(unit, "Unit", "Wants")
    assert DEVICE_UNIT in values(unit, "Unit", "After")
    for key in ("BindsTo", "Requires", "Requisite", "PartOf", "StopPropagatedFrom"):
        assert DEVICE_UNIT not in values(unit, "Unit", key), key


def test_device_unit_name_matches_the_udev_symlink() -> None:
    if shutil.which("systemd-escape") is None:
        pytest.skip("systemd-escape not installed (Debian package `systemd`)")
    done = subprocess.run(
        ["systemd-escape", "--path", "--suffix=device", "/dev/modality-scanner"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == DEVICE_UNIT


def test_udev_rule_gives_name_group_mode_and_systemd_tag() -> None:
    (rule,) = [
        line
        for line in UDEV_RULES.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    keys = [part.strip() for part in rule.split(",")]
    assert 'SUBSYSTEM=="tty"' in keys
    for attr in ("idVendor", "idProduct", "serial"):
        assert any(k.startswith(f"ATTRS{{{attr}}}==") for k in keys), attr
    for assignment in (
        'SYMLINK+="modality-scanner"',
        'GROUP="dialout"',
        'MODE="0660"',
        'TAG+="systemd"',
    ):
        assert assignment in keys, assignment
