"""The Debian package (`make deb`, scripts/build-deb) on this machine, as CI runs it: as root,
without a running systemd. It installs, passes `check-config` on its shipped config, sets up the
user, groups and modes the unit expects, upgrades over itself with a spool in place (same
instances, same delivery states), is removed (config and spool kept) and purged: a spool holding
anything but an empty index (images, a held series) is kept with the user and a loud warning
saying what it holds, an empty one goes with the user, leaving nothing behind. A conffile the
admin deleted stays deleted through an upgrade.

The tests run in order on one installation. Deselect them with `-m "not deb"`; the machine is
put back as it was (purged, user and folders removed) even when a test fails."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import load
from agent.spool.index import SCHEMA_VERSION
from tests.test_systemd_unit import parse_unit

REPO = Path(__file__).resolve().parent.parent
PKG = "modality-agent"
USER = PKG
STATE = Path("/var/lib/modality-agent")
ETC = Path("/etc/modality-agent")
CONFIG = ETC / "config.toml"
OPT = Path("/opt/modality-agent")
VENV_PYTHON = OPT / "venv" / "bin" / "python"
BINARY = Path("/usr/bin/modality-agent")
UNIT = Path("/usr/lib/systemd/system/modality-agent.service")
UDEV_RULE = Path("/usr/lib/udev/rules.d/90-modality-agent.rules")
SYSUSERS = Path("/usr/lib/sysusers.d/modality-agent.conf")
# maintainer scripts and apt get a plain system PATH: never the dev venv (its `storescp` and
# `python` would shadow the system's)
SYSTEM_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}

# Run by the installed venv's python as the service user: the spool of the installed config,
# three instances accepted, the first delivered to PACS, then every instance's delivery state.
WRITE_SPOOL = """
import sys
from agent.config import load
from agent.spool import InstanceRecord, Spool
study = "1.2.826.0.1.3680043.10.999.42"
with Spool(load(sys.argv[1]).agent.spool_dir) as spool:
    for n in (1, 2, 3):
        spool.accept(InstanceRecord(f"{study}.3.{n}", "1.2.840.10008.5.1.4.1.1.2", study,
                                    f"{study}.2", "1.2.840.10008.1.2.1", n, "exam-42"),
                     bytes([n]) * 4096, ["PACS"])
    spool.mark_sending([f"{study}.3.1"], "PACS")
    spool.mark_delivered([f"{study}.3.1"], "PACS")
"""
READ_SPOOL = """
import hashlib, json, sqlite3, sys
from agent.config import load
from agent.spool import Spool
root = load(sys.argv[1]).agent.spool_dir
with Spool(root) as spool:
    states = {i.record.sop_instance_uid: [[d.destination, d.state.value, d.attempts]
                                          for d in spool.deliveries(i.record.sop_instance_uid)]
                                         + [hashlib.sha256(spool.read(i)).hexdigest()]
              for i in spool.instances()}
with sqlite3.connect(root / "index.sqlite3") as conn:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
print(json.dumps({"states": states, "schema": version}))
"""
# The reinstalled agent delivered the kept images and its retention purged them: an empty index.
EMPTY_SPOOL = """
import sys
from agent.config import load
from agent.spool import Spool
with Spool(load(sys.argv[1]).agent.spool_dir) as spool:
    sops = [i.record.sop_instance_uid for i in spool.instances()]
    spool.mark_delivered(sops, "PACS")
    assert spool.purge(spool.instances()) == len(sops)
"""
# An empty spool (index, lock) and one slice of a series held unassigned (agent/holding.py).
HOLD_SLICE = """
import sys
from pathlib import Path
from agent.spool import Spool
root, held = Path(sys.argv[1]), Path(sys.argv[2])
Spool(root).close()
held.parent.mkdir(parents=True)
held.write_bytes(bytes(512))
"""


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env or SYSTEM_ENV, cwd="/"
    )
    assert r.returncode == 0, (
        f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    )
    return r


def apt_install(deb: Path) -> None:
    # unsafe-io: no fsync per unpacked file (a test machine, not a console); 3 times faster
    run(
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-unsafe-io",
        deb,
    )


def as_service_user(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return run("runuser", "-u", USER, "--", *cmd)


def package_status() -> str:
    """dpkg's status of the package ("ii" installed, "rc" config files left), "" if unknown."""
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PKG], capture_output=True, text=True
    )
    return r.stdout.strip() if r.returncode == 0 else ""


def known(lookup: Callable[[str], object], name: str) -> bool:
    """Whether pwd.getpwnam or grp.getgrnam knows `name`."""
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def leftovers() -> list[str]:
    """What of the package is on this machine."""
    found = [str(p) for p in (STATE, ETC, OPT, BINARY, UNIT, UDEV_RULE, SYSUSERS) if p.exists()]
    found += [f"user {USER}"] * known(pwd.getpwnam, USER)
    found += [f"group {USER}"] * known(grp.getgrnam, USER)
    return found + [f"dpkg status {package_status()!r}"] * bool(package_status())


def clean_up() -> None:
    """Put the machine back as it was, whatever state a failed test left it in."""
    subprocess.run(["dpkg", "--purge", PKG], capture_output=True, env=SYSTEM_ENV)
    for path in (STATE, ETC, OPT):
        shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["userdel", USER], capture_output=True, env=SYSTEM_ENV)
    subprocess.run(["groupdel", USER], capture_output=True, env=SYSTEM_ENV)


def test_the_shipped_config_is_valid_and_uses_the_units_folders() -> None:
    config = load(REPO / "packaging" / "deb" / "config.toml")
    service = dict(parse_unit((REPO / "systemd" / "modality-agent.service").read_text())["Service"])
    assert config.agent.spool_dir == Path("/var/lib") / service["StateDirectory"]
    assert config.agent.control_socket.parent == Path("/run") / service["RuntimeDirectory"]
    assert config.hardware.driver == "serial-shm"
    assert config.hardware.options["port"] == "/dev/modality-scanner"  # the udev rule's name


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_the_maintainer_scripts_are_posix_shell(script: str) -> None:
    path = REPO / "packaging" / "deb" / script
    assert path.stat().st_mode & 0o111, f"{path} is not executable"
    run("sh", "-n", path)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Version N built from this tree, and N+1: the same package rebuilt with a bumped version."""
    if os.geteuid() != 0:
        pytest.skip("installs a Debian package: needs root")
    if shutil.which("dpkg") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg and dpkg-deb (a Debian system)")
    if found := leftovers():
        pytest.skip(f"{PKG} is already on this machine ({', '.join(found)}): not touching it")
    out = tmp_path_factory.mktemp("deb")
    dev_bin = str(REPO / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != dev_bin)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
    first = Path(run(REPO / "scripts" / "build-deb", out, env=env).stdout.split()[-1])
    tree = out / "tree"
    run("dpkg-deb", "--raw-extract", first, tree)
    control = tree / "DEBIAN" / "control"
    version = dpkg_field(first, "Version")
    control.write_text(control.read_text().replace(f"Version: {version}", f"Version: {version}+1"))
    second = out / f"{PKG}_{version}+1.deb"
    run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", tree, second)
    shutil.rmtree(tree)
    return first, second


def dpkg_field(deb: Path, field: str) -> str:
    return run("dpkg-deb", "--field", deb, field).stdout.strip()


@pytest.fixture(scope="module")
def installed(debs: tuple[Path, Path]) -> Iterator[tuple[Path, Path]]:
    """Version N installed (apt-get, for its dependencies); purged and swept away at the end."""
    try:
        apt_install(debs[0])
        yield debs
    finally:
        clean_up()
    assert not leftovers(), leftovers()


@pytest.mark.deb
def test_the_package_declares_its_python_and_its_conffile(installed: tuple[Path, Path]) -> None:
    python = run("/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:2])").stdout
    major, minor = python.split()
    depends = dpkg_field(installed[0], "Depends")
    # the venv under /opt is tied to the interpreter it was made with
    assert f"python3 (>= {major}.{minor})" in depends
    assert f"python3 (<< {major}.{int(minor) + 1})" in depends
    assert package_status() == "ii"
    conffiles = run("dpkg-query", "--control-show", PKG, "conffiles").stdout.split()
    assert conffiles == [str(CONFIG)]


@pytest.mark.deb
def test_the_shipped_config_passes_check_config(installed: tuple[Path, Path]) -> None:
    assert BINARY.resolve() == OPT / "venv" / "bin" / "modality-agent"
    r = run(BINARY, "check-config", "-c", CONFIG)
    assert "valid" in r.stdout
    # the service reads it through its group, as systemd would run it
    as_service_user(BINARY, "check-config", "-c", CONFIG)
    assert CONFIG.read_text() == (REPO / "packaging" / "deb" / "config.toml").read_text()


@pytest.mark.deb
def test_the_installed_agent_runs_from_its_own_venv(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    # the demo: pydicom, pynetdicom, numpy and a codec, loaded from /opt on loopback
    r = run(BINARY, "demo", "--slices", "4", "--workdir", tmp_path / "demo", "--json")
    assert json.loads(r.stdout)["images_sent"] == 4
    # shipped bytecode, valid whatever the files' mtimes: the service user, who cannot write in
    # /opt, would otherwise compile every module at every start
    (source,) = OPT.glob("venv/lib/python3*/site-packages/agent/cli.py")
    (pyc,) = source.parent.glob("__pycache__/cli.*.pyc")
    flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
    assert flags == 0b01, "expected unchecked-hash bytecode (PEP 552)"


@pytest.mark.deb
def test_user_groups_and_modes_are_the_units(installed: tuple[Path, Path]) -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    settings = dict(service)
    assert settings["User"] == settings["Group"] == USER
    assert settings["ExecStart"].split()[0] == str(BINARY)
    assert settings["StateDirectory"] == STATE.name
    assert settings["RuntimeDirectory"] == "modality-agent"  # the control socket's folder
    user = pwd.getpwnam(USER)
    assert user.pw_uid < 1000, "a system user"
    assert user.pw_gid == grp.getgrnam(USER).gr_gid
    assert user.pw_dir == str(STATE)
    assert user.pw_shell.endswith("nologin")
    for group in (name for key, name in service if key == "SupplementaryGroups"):
        assert known(grp.getgrnam, group), f"the unit's SupplementaryGroups={group} does not exist"

    def owner_and_mode(path: Path) -> tuple[str, str, int]:
        st = path.stat()
        return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o777

    assert owner_and_mode(STATE) == (USER, USER, 0o750)  # not world-readable
    assert owner_and_mode(ETC) == ("root", USER, 0o750)
    assert owner_and_mode(CONFIG) == ("root", USER, 0o640)
    assert UDEV_RULE.read_text() == (REPO / "udev" / "90-modality-agent.rules").read_text()
    assert SYSUSERS.read_text() == (REPO / "systemd" / "modality-agent.sysusers.conf").read_text()
    assert UNIT.read_text() == (REPO / "systemd" / "modality-agent.service").read_text()


@pytest.mark.deb
def test_an_upgrade_keeps_the_spool_and_the_sites_config(installed: tuple[Path, Path]) -> None:
    as_service_user(VENV_PYTHON, "-c", WRITE_SPOOL, CONFIG)
    before = json.loads(as_service_user(VENV_PYTHON, "-c", READ_SPOOL, CONFIG).stdout)
    assert sorted(s[0][1] for s in before["states"].values()) == ["delivered", "pending", "pending"]
    edited = CONFIG.read_text().replace('station_name = "CT1"', 'station_name = "CT-EAST"')
    CONFIG.write_text(edited)

    apt_install(installed[1])

    assert run("dpkg-query", "-W", "-f=${Version}", PKG).stdout == dpkg_field(
        installed[1], "Version"
    )
    # the upgraded agent opens the spool as the daemon's first start would (migrating it)
    after = json.loads(as_service_user(VENV_PYTHON, "-c", READ_SPOOL, CONFIG).stdout)
    assert after == {"states": before["states"], "schema": SCHEMA_VERSION}
    assert CONFIG.read_text() == edited
    assert (CONFIG.stat().st_mode & 0o777, STATE.stat().st_mode & 0o777) == (0o640, 0o750)


@pytest.mark.deb
def test_remove_keeps_config_spool_and_user(installed: tuple[Path, Path]) -> None:
    run("dpkg", "--remove", PKG)
    assert package_status() == "rc"
    assert not BINARY.exists() and not OPT.exists() and not UNIT.exists()
    assert CONFIG.is_file() and known(pwd.getpwnam, USER)
    assert len(list(STATE.glob("instances/*/*.dcm"))) == 3


@pytest.mark.deb
def test_purge_keeps_a_spool_with_images_and_says_so(installed: tuple[Path, Path]) -> None:
    r = run("dpkg", "--purge", PKG)
    assert "WARNING" in r.stderr and f"{STATE} is NOT deleted" in r.stderr, r.stderr
    assert " 3 instances\n" in r.stderr and f"rm -rf {STATE}\n" in r.stderr, r.stderr
    assert package_status() == ""
    assert not ETC.exists()
    assert len(list(STATE.glob("instances/*/*.dcm"))) == 3
    assert pwd.getpwuid(STATE.stat().st_uid).pw_name == USER  # the kept files keep their owner


@pytest.mark.deb
def test_a_reinstall_adopts_the_kept_spool_and_an_empty_one_is_purged_cleanly(
    installed: tuple[Path, Path],
) -> None:
    uid = pwd.getpwnam(USER).pw_uid
    apt_install(installed[1])
    assert pwd.getpwnam(USER).pw_uid == uid
    states = json.loads(as_service_user(VENV_PYTHON, "-c", READ_SPOOL, CONFIG).stdout)["states"]
    assert len(states) == 3
    as_service_user(VENV_PYTHON, "-c", EMPTY_SPOOL, CONFIG)
    assert not list(STATE.glob("instances/*/*.dcm"))

    r = run("dpkg", "--purge", PKG)

    assert "WARNING" not in r.stderr, r.stderr
    assert not leftovers(), leftovers()


@pytest.mark.deb
def test_a_deleted_config_stays_deleted_and_a_held_series_survives_purge(
    installed: tuple[Path, Path],
) -> None:
    apt_install(installed[0])
    CONFIG.unlink()
    run("dpkg", "--install", installed[1])  # an upgrade: dpkg does not bring the conffile back
    assert package_status() == "ii" and not CONFIG.exists()
    held = STATE / "unassigned" / "1.2.826.0.1.3680043.10.999.7" / "slice-1.bin"
    as_service_user(VENV_PYTHON, "-c", HOLD_SLICE, STATE, held)

    r = run("dpkg", "--purge", PKG)

    assert "WARNING" in r.stderr and " 1 unassigned\n" in r.stderr, r.stderr
    assert "index.sqlite3" not in r.stderr, "an empty index is not worth keeping"
    assert held.read_bytes() == bytes(512)
    assert pwd.getpwuid(held.stat().st_uid).pw_name == USER
