"""`modality-agent doctor` on a broken setup, one breakage per check, and on a sound one; real
peers (DCMTK storescp), a real tmpfs, real device nodes, sockets and certificates."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import doctor
from agent.control.server import ControlServer
from agent.doctor import Finding, Level
from agent.events import EventBus
from tests import agent_process
from tests.agent_process import Dest
from tests.certs import Pki, make_pki
from tests.peers import free_port, storescp
from tests.test_disk_full_e2e import small_disk  # noqa: F401 (the fixture)

NOBODY = 65534


def write_config(
    tmp_path: Path,
    *,
    hardware: str = 'driver = "mock"',
    extra: str = "",
    port: int | None = None,
    spool: Path | None = None,
) -> Path:
    """The tests' usual config, with this hardware section, `extra` lines in [agent] (or
    tables after it) and the spool elsewhere."""
    cfg = agent_process.write_config(tmp_path, [Dest("PACS", port or free_port())])
    text = cfg.read_text().replace('driver = "mock"', hardware)
    text = text.replace("[equipment]", f"{extra}\n\n[equipment]")
    if spool is not None:
        text = text.replace(f'spool_dir = "{tmp_path / "spool"}"', f'spool_dir = "{spool}"')
    cfg.write_text(text)
    return cfg


def only(findings: list[Finding], check: str) -> Finding:
    (found,) = [f for f in findings if f.check == check]
    return found


def run_doctor(cfg: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "agent.cli", "doctor", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bad_config_is_named_with_its_key_and_exit_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, extra="listen_prot = 11113")
    findings = doctor.diagnose(cfg)
    assert [f.level for f in findings] == [Level.PROBLEM]
    assert "agent.listen_prot" in findings[0].message
    assert "did you mean 'listen_port'" in findings[0].message
    done = run_doctor(cfg)
    assert done.returncode == 2
    assert "PROBLEM  config:" in done.stdout


def test_a_missing_config_file(tmp_path: Path) -> None:
    (found,) = doctor.diagnose(tmp_path / "nowhere.toml")
    assert found.level is Level.PROBLEM
    assert "cannot read the file" in found.message


def test_a_sound_setup_with_a_real_peer_exits_0(tmp_path: Path) -> None:
    with storescp(tmp_path / "archive") as port:
        cfg = write_config(
            tmp_path, port=port, hardware=f'driver = "directory"\nfolder = "{tmp_path}"'
        )
        (tmp_path / "spool").mkdir()
        with served(tmp_path / "control.sock"):
            done = run_doctor(cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("ok ") for line in lines), done.stdout
    assert any("peer PACS: C-ECHO to ARCHIVE@127.0.0.1" in line for line in lines)
    assert any("control socket:" in line and "the daemon answers" in line for line in lines)


def test_a_peer_that_is_down(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    found = only(doctor.diagnose(write_config(tmp_path, port=port)), "peer PACS")
    assert found.level is Level.PROBLEM
    assert f"cannot connect to ARCHIVE@127.0.0.1:{port}" in found.message
    assert "is the peer running" in found.fix
    assert run_doctor(write_config(tmp_path, port=port)).returncode == 1


def test_an_unwritable_spool(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    spool: Path = request.getfixturevalue("small_disk")  # a 40 MB tmpfs (root only)
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(spool)], capture_output=True)
    assert remounted.returncode == 0, remounted.stderr  # read-only: not even root may write
    found = only(doctor.diagnose(write_config(tmp_path, spool=spool)), "spool")
    assert found.level is Level.PROBLEM
    assert "is not writable by this user" in found.message


@pytest.mark.parametrize(
    ("warn", "refuse", "level", "words"),
    [
        (100, 10, Level.WARNING, "spool disk low"),
        (100, 50, Level.PROBLEM, "new exams are refused"),
        (20, 10, Level.OK, "MB free"),
    ],
)
def test_free_space_on_a_small_tmpfs(
    tmp_path: Path, request: pytest.FixtureRequest, warn: int, refuse: int, level: Level, words: str
) -> None:
    spool: Path = request.getfixturevalue("small_disk")
    extra = f"spool_warn_free_mb = {warn}\nspool_refuse_free_mb = {refuse}"
    found = only(doctor.diagnose(write_config(tmp_path, spool=spool, extra=extra)), "disk space")
    assert found.level is level
    assert words in found.message


def _spool_is_a_file(tmp_path: Path) -> str:
    (tmp_path / "spool").write_text("not a folder")
    return 'driver = "mock"'


@pytest.mark.parametrize(
    ("setup", "check", "level", "words"),
    [
        (_spool_is_a_file, "spool", Level.PROBLEM, "is not a folder"),
        (lambda tmp: 'driver = "mock"', "spool", Level.WARNING, "does not exist yet"),
        (lambda tmp: 'driver = "mock"', "hardware", Level.WARNING, "SIMULATED"),
        (
            lambda tmp: f'driver = "directory"\nfolder = "{tmp / "drop"}"',
            "hardware",
            Level.PROBLEM,
            "drop folder",
        ),
    ],
    ids=["spool-is-a-file", "spool-not-yet", "mock-driver", "no-drop-folder"],
)
def test_one_finding(
    tmp_path: Path, setup: Callable[[Path], str], check: str, level: Level, words: str
) -> None:
    """`setup` breaks something and gives the hardware section."""
    found = only(doctor.diagnose(write_config(tmp_path, hardware=setup(tmp_path))), check)
    assert found.level is level
    assert words in found.message


def test_a_missing_serial_device_and_ring(tmp_path: Path) -> None:
    hw = f'driver = "serial-shm"\nport = "{tmp_path / "ttyNONE"}"\nring_name = "doctor-no-ring"'
    findings = doctor.diagnose(write_config(tmp_path, hardware=hw))
    device = only(findings, "hardware")
    assert device.level is Level.PROBLEM
    assert "does not exist" in device.message and "plugged in" in device.fix
    ring = only(findings, "ring")
    assert ring.level is Level.WARNING
    assert "/dev/shm/doctor-no-ring does not exist" in ring.message


def _stat(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "owner", "group", "allowed"),
    [
        (0o600, 1000, 20, True),  # ours
        (0o600, 0, 20, False),  # root's, group may not
        (0o660, 0, 20, True),  # the udev rule: group dialout rw
        (0o640, 0, 20, False),  # group may only read
        (0o606, 0, 99, True),  # anyone
    ],
)
def test_device_permission_by_mode(mode: int, owner: int, group: int, allowed: bool) -> None:
    st = _stat(0o020000 | mode, owner, group)
    assert doctor.mode_allows(st, 1000, {1000, 20}, os.R_OK | os.W_OK) is allowed


def test_a_device_this_user_may_not_open() -> None:
    """A real character device node, 0600 and root's, looked at by the user nobody (root
    itself would pass any mode: this case needs root to create the node and drop to nobody)."""
    if os.geteuid() != 0:
        pytest.skip("making a device node and running as another user need root")
    # a folder nobody can read: pytest's own temporary folders are root's alone
    tmp_path = Path(tempfile.mkdtemp(prefix="doctor-"))
    tmp_path.chmod(0o755)
    try:
        _device_as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _device_as_nobody(tmp_path: Path) -> None:
    dev = tmp_path / "ttyDOCTOR"
    os.mknod(dev, 0o020600, os.makedev(1, 3))  # like /dev/null, mode 0600, root's
    hw = f'driver = "serial-shm"\nport = "{dev}"'
    cfg = write_config(tmp_path, hardware=hw)
    cfg.chmod(0o644)
    prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    done = run_doctor(cfg, *prefix)
    assert "PROBLEM  hardware: serial port" in done.stdout, done.stdout + done.stderr
    assert "cannot be read and written by this user" in done.stdout
    assert "add the user to the device's group" in done.stdout
    dev.chmod(0o666)
    assert "ok       hardware: serial port" in run_doctor(cfg, *prefix).stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(cert: Path, key: Path) -> str:
    return f'[agent.tls]\ncert_file = "{cert}"\nkey_file = "{key}"'


def test_an_expired_certificate(tmp_path: Path, pki: Pki) -> None:
    cfg = write_config(tmp_path, extra=_tls(pki.expired_server.cert, pki.expired_server.key))
    found = only(doctor.diagnose(cfg), "tls agent.tls.cert_file")
    assert found.level is Level.PROBLEM
    assert "expired on" in found.message


def test_a_certificate_expiring_soon_and_a_good_one(tmp_path: Path, pki: Pki) -> None:
    cfg = write_config(tmp_path, extra=_tls(pki.server.cert, pki.server.key))
    soon = only(doctor.diagnose(cfg), "tls agent.tls.cert_file")  # valid 30 days from now
    assert soon.level is Level.WARNING
    assert "expires on" in soon.message
    early = datetime.now(UTC) - timedelta(days=60)
    good = only(doctor.diagnose(cfg, now=early), "tls agent.tls.cert_file")
    assert good.level is Level.OK
    assert "matches its key" in good.message


def test_a_key_that_is_not_the_certificates(tmp_path: Path, pki: Pki) -> None:
    cfg = write_config(tmp_path, extra=_tls(pki.server.cert, pki.client.key))
    found = only(doctor.diagnose(cfg), "tls agent.tls.cert_file")
    assert found.level is Level.PROBLEM
    assert "does not belong to" in found.message


def test_an_unreadable_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    extra = f'[agent.tls]\ncert_file = "{ca}"\nkey_file = "{ca}"\nca_file = "{ca}"'
    findings = doctor.diagnose(write_config(tmp_path, extra=extra))
    assert only(findings, "tls agent.tls.ca_file").level is Level.PROBLEM
    assert only(findings, "tls agent.tls.cert_file").level is Level.PROBLEM


def test_no_control_socket(tmp_path: Path) -> None:
    found = only(doctor.diagnose(write_config(tmp_path)), "control socket")
    assert found.level is Level.WARNING
    assert "the daemon is not running" in found.message


def test_a_world_writable_control_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with served(path):
        path.chmod(0o666)
        found = only(doctor.diagnose(write_config(tmp_path)), "control socket")
    assert found.level is Level.PROBLEM
    assert "world-writable" in found.message


def test_a_stale_control_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening: what a killed daemon leaves behind
        path.chmod(0o660)
        found = only(doctor.diagnose(write_config(tmp_path)), "control socket")
    assert found.level is Level.PROBLEM
    assert "no answer" in found.message


def test_json_output(tmp_path: Path) -> None:
    import json

    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "doctor", "--json", "-c", str(write_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    doc = json.loads(done.stdout)
    checks = {f["check"]: f["level"] for f in doc["findings"]}
    assert checks["config"] == "ok"
    assert checks["peer PACS"] == "problem"
    assert done.returncode == 1


class served:
    """A real control server at `path` (the daemon's, with no operations of its own)."""

    def __init__(self, path: Path) -> None:
        self.server = ControlServer(path, {}, EventBus())

    def __enter__(self) -> ControlServer:
        self.server.start()
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
