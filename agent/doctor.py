"""`modality-agent doctor`: the whole setup checked, each finding in plain words with what to do.

Checks, in order: the config file; the spool folder (exists, writable by this user) and the
free space on its disk against the config's limits; the hardware device (serial port and
ring, or drop folder) and its permissions; a C-ECHO to every peer; the TLS files (readable,
key matching its certificate, not expired or expiring soon); the control socket (present,
answered by the daemon, not world-writable). Nothing here changes the setup.
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import ssl
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import config
from agent.alarms import Alarms
from agent.config.model import TlsSettings
from agent.disk_space import Level as SpaceLevel
from agent.disk_space import SpaceLimits, SpoolSpace
from agent.net.echo import echo

EXPIRY_WARNING = timedelta(days=30)  # a certificate that ends sooner is a warning
SHM = Path("/dev/shm")


class Level(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Finding:
    check: str  # e.g. "spool", "peer PACS", "tls destinations[0].tls.cert_file"
    level: Level
    message: str  # what was found
    fix: str = ""  # what to do about it (warnings and problems)

    def __str__(self) -> str:
        fix = f" -> {self.fix}" if self.fix else ""
        label = "PROBLEM" if self.level is Level.PROBLEM else self.level.value
        return f"{label:<8} {self.check}: {self.message}{fix}"


def diagnose(
    path: Path,
    *,
    now: datetime | None = None,
) -> list[Finding]:
    """Every finding about the setup that the config file at `path` describes."""
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        return [
            Finding("config", Level.PROBLEM, str(p), "fix the file (see docs/configuration.md)")
            for p in e.problems
        ]
    found = [Finding("config", Level.OK, f"{cfg.source}: valid")]
    found += spool(cfg)
    found += hardware(cfg)
    found += [peer_echo(cfg, name, p) for name, p in cfg.peers().items()]
    found += tls_files(cfg, now or datetime.now(UTC))
    found.append(control_socket(cfg.agent.control_socket))
    return found


# -- spool ----------------------------------------------------------------------------------


def spool(cfg: config.Config) -> list[Finding]:
    d = cfg.agent.spool_dir
    if d.exists() and not d.is_dir():
        return [
            Finding(
                "spool", Level.PROBLEM, f"{d} is not a folder", "remove it or set agent.spool_dir"
            )
        ]
    if not d.exists():
        parent = _existing_parent(d)
        if not _can_write(parent):
            return [
                Finding(
                    "spool",
                    Level.PROBLEM,
                    f"{d} does not exist and cannot be created ({parent} is not writable)",
                    f"create {d}, owned by the user the daemon runs as",
                )
            ]
        found = [
            Finding("spool", Level.WARNING, f"{d} does not exist yet", "the daemon creates it")
        ]
        return [*found, space(parent, cfg)]
    if not _can_write(d):
        return [
            Finding(
                "spool",
                Level.PROBLEM,
                f"{d} is not writable by this user ({_user()})",
                "chown it to the daemon's user, or check that its file system is not read-only",
            )
        ]
    return [Finding("spool", Level.OK, f"{d} is writable"), space(d, cfg)]


def space(where: Path, cfg: config.Config) -> Finding:
    a = cfg.agent
    meter = SpoolSpace(
        where, SpaceLimits(a.spool_warn_free_mb, a.spool_refuse_free_mb), Alarms(_ignore)
    )
    level = meter.check()
    if level is SpaceLevel.OK:
        return Finding(
            "disk space",
            Level.OK,
            f"{meter.free_mb} MB free (warning below {a.spool_warn_free_mb} MB)",
        )
    what = Level.WARNING if level is SpaceLevel.LOW else Level.PROBLEM
    return Finding("disk space", what, meter.reason, "deliver or purge studies, or free the disk")


def _ignore(event: str, data: dict[str, object]) -> None:
    """Alarms go nowhere: the finding says it."""


def _existing_parent(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _can_write(folder: Path) -> bool:
    """Really writing tells the truth for root and for read-only file systems too."""
    try:
        fd, name = tempfile.mkstemp(prefix=".doctor-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _user() -> str:
    import pwd

    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except KeyError:
        return f"uid {uid}"


# -- hardware -------------------------------------------------------------------------------


def mode_allows(st: os.stat_result, uid: int, gids: set[int], want: int) -> bool:
    """Whether the permission bits give `uid` (in `gids`) the access `want` (a mask of
    os.R_OK / os.W_OK), by the mode alone (root's override is not counted)."""
    if st.st_uid == uid:
        shift = 6
    elif st.st_gid in gids:
        shift = 3
    else:
        shift = 0
    bits = (st.st_mode >> shift) & 0o7
    return all(bits & flag for flag in (4, 2) if want & {4: os.R_OK, 2: os.W_OK}[flag])


def hardware(cfg: config.Config) -> list[Finding]:
    driver, options = cfg.hardware.driver, cfg.hardware.options
    if driver == "mock":
        return [
            Finding(
                "hardware",
                Level.WARNING,
                "the mock driver: images are synthetic and marked SIMULATED",
                'set hardware.driver to "serial-shm" or "directory" on a scanner console',
            )
        ]
    if driver == "directory":
        folder = Path(options["folder"])
        if not folder.is_dir():
            return [
                Finding(
                    "hardware",
                    Level.PROBLEM,
                    f"drop folder {folder} does not exist",
                    "create it or fix hardware.folder; is the reconstructor's share mounted?",
                )
            ]
        if not os.access(folder, os.R_OK | os.X_OK):
            return [
                Finding(
                    "hardware",
                    Level.PROBLEM,
                    f"drop folder {folder} is not readable",
                    "fix its permissions",
                )
            ]
        return [Finding("hardware", Level.OK, f"drop folder {folder} is readable")]
    return serial_device(str(options["port"]), options.get("ring_name"))


def serial_device(port: str, ring_name: str | None) -> list[Finding]:
    found: list[Finding] = []
    if "://" in port:
        found.append(
            Finding("hardware", Level.OK, f"serial port {port} is a pyserial URL (not checked)")
        )
    else:
        found.append(_device(Path(port)))
    if ring_name:
        ring = SHM / ring_name
        if ring.exists():
            found.append(Finding("ring", Level.OK, f"{ring} is there"))
        else:
            found.append(
                Finding(
                    "ring",
                    Level.WARNING,
                    f"{ring} does not exist (yet)",
                    "the reconstructor creates it: is the acquisition hardware running?",
                )
            )
    return found


def _device(dev: Path) -> Finding:
    try:
        st = dev.stat()
    except FileNotFoundError:
        return Finding(
            "hardware",
            Level.PROBLEM,
            f"serial port {dev} does not exist",
            "is the adapter plugged in? udev/ gives it this name; check `ls -l /dev/serial/by-id`",
        )
    except OSError as e:
        return Finding("hardware", Level.PROBLEM, f"serial port {dev}: {e.strerror}")
    mode = f"mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}, group gid {st.st_gid}"
    if not stat.S_ISCHR(st.st_mode):
        note = f"serial port {dev} is not a character device ({mode})"
        return Finding("hardware", Level.WARNING, note, "is hardware.port the right path?")
    uid, gids = os.geteuid(), {os.getegid(), *os.getgroups()}
    if uid != 0 and not mode_allows(st, uid, gids, os.R_OK | os.W_OK):
        return Finding(
            "hardware",
            Level.PROBLEM,
            f"serial port {dev} cannot be read and written by this user ({_user()}; {mode})",
            "add the user to the device's group (the udev rule sets it) and log in again",
        )
    return Finding("hardware", Level.OK, f"serial port {dev} is there ({mode})")


# -- peers ----------------------------------------------------------------------------------


def peer_echo(cfg: config.Config, name: str, peer: config.Peer) -> Finding:
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    result = echo(cfg.agent.ae_title, peer)
    if result.ok:
        return Finding(f"peer {name}", Level.OK, f"C-ECHO to {where} answered")
    return Finding(
        f"peer {name}",
        Level.PROBLEM,
        f"C-ECHO to {where} failed: {result.error}",
        f"is the peer running and reachable? does it know our AE title {cfg.agent.ae_title}?",
    )


# -- TLS ------------------------------------------------------------------------------------


def _tls_settings(cfg: config.Config) -> Iterator[tuple[str, TlsSettings]]:
    if cfg.agent.tls is not None:
        yield "agent.tls", cfg.agent.tls
    keys = {d.name: f"destinations[{i}]" for i, d in enumerate(cfg.destinations)}
    for name, peer in cfg.peers().items():
        if peer.tls is not None:
            yield f"{keys.get(name, name)}.tls", peer.tls


def tls_files(cfg: config.Config, now: datetime) -> list[Finding]:
    found: list[Finding] = []
    for key, t in _tls_settings(cfg):
        if t.ca_file is not None:
            found.append(_ca(f"{key}.ca_file", t.ca_file))
        if t.cert_file is not None:
            found.append(certificate(f"{key}.cert_file", t.cert_file, t.key_file, now))
    return found


def _ca(key: str, ca: Path) -> Finding:
    try:
        ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        return Finding(
            f"tls {key}",
            Level.PROBLEM,
            f"{ca} cannot be read as a CA: {e}",
            "fix the file or its permissions",
        )
    return Finding(f"tls {key}", Level.OK, f"{ca} is readable")


def certificate(key: str, cert: Path, private_key: Path | None, now: datetime) -> Finding:
    check = f"tls {key}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cert), str(private_key) if private_key else None)
    except OSError as e:  # includes ssl.SSLError
        reason = getattr(e, "reason", None)
        if reason == "KEY_VALUES_MISMATCH":
            return Finding(
                check,
                Level.PROBLEM,
                f"the key {private_key} does not belong to {cert}",
                "install the matching pair",
            )
        return Finding(
            check,
            Level.PROBLEM,
            f"{cert} or its key cannot be used: {e}",
            "check both files and their permissions",
        )
    try:
        ends = not_after(cert)
    except (OSError, ValueError) as e:
        return Finding(check, Level.WARNING, f"cannot read the expiry date of {cert}: {e}")
    if ends <= now:
        return Finding(
            check, Level.PROBLEM, f"{cert} expired on {ends:%Y-%m-%d}", "install a new certificate"
        )
    if ends - now < EXPIRY_WARNING:
        return Finding(check, Level.WARNING, f"{cert} expires on {ends:%Y-%m-%d}", "renew it soon")
    return Finding(check, Level.OK, f"{cert} matches its key, valid until {ends:%Y-%m-%d}")


def not_after(cert: Path) -> datetime:
    """The certificate's end of validity (by `openssl x509`, as the standard library has no
    public parser of certificates)."""
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.startswith("notAfter="):
        raise ValueError(out.stderr.strip() or "openssl could not read it")
    seconds = ssl.cert_time_to_seconds(out.stdout.strip().removeprefix("notAfter="))
    return datetime.fromtimestamp(seconds, UTC)


# -- control socket -------------------------------------------------------------------------


def control_socket(path: Path) -> Finding:
    from agent.control.client import ControlClient, DaemonUnreachable
    from agent.control.protocol import OpError

    try:
        st = path.lstat()
    except FileNotFoundError:
        return Finding(
            "control socket",
            Level.WARNING,
            f"{path} does not exist: the daemon is not running",
            "start it (systemctl start modality-agent) and read its journal if it stops",
        )
    if not stat.S_ISSOCK(st.st_mode):
        return Finding(
            "control socket",
            Level.PROBLEM,
            f"{path} is not a socket",
            "remove it; the daemon makes its own",
        )
    if st.st_mode & stat.S_IWOTH:
        return Finding(
            "control socket",
            Level.PROBLEM,
            f"{path} is world-writable ({stat.filemode(st.st_mode)}): anyone may control the agent",
            "the daemon makes it 0660; check who changed it (or an old daemon version)",
        )
    try:
        with ControlClient(path, timeout=5) as client:
            client.request("hello")
    except (DaemonUnreachable, OpError) as e:
        return Finding(
            "control socket",
            Level.PROBLEM,
            f"{path}: no answer: {e}",
            "is the daemon running? (systemctl status modality-agent)",
        )
    return Finding("control socket", Level.OK, f"{path}: the daemon answers")


def command(args: argparse.Namespace) -> int:
    """`modality-agent doctor -c FILE [--json]`: exit 0 without a problem, 1 with one, 2 when
    the config file itself is not valid."""
    if not (args.verbose or args.debug):  # a peer that is down is a finding, not a log line
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    findings = diagnose(args.config)
    if args.json:
        doc = [
            {"check": f.check, "level": f.level.value, "message": f.message, "fix": f.fix}
            for f in findings
        ]
        print(json.dumps({"findings": doc}, indent=2))
    else:
        for f in findings:
            print(f)
    if any(f.check == "config" and f.level is Level.PROBLEM for f in findings):
        return 2
    return 1 if any(f.level is Level.PROBLEM for f in findings) else 0
