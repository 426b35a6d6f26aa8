"""The validated configuration: frozen, typed, built once at the edge by `agent.config.load`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TlsSettings:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = False


@dataclass(frozen=True)
class AgentSettings:
    ae_title: str
    spool_dir: Path
    control_socket: Path
    uid_root: str | None = None  # None: 2.25 UUID-derived UIDs
    listen_port: int | None = None
    dose_report_when_simulated: bool = False  # made-up dose must not reach a registry
    retention_days: float = 7.0  # a delivered (and committed) study is kept this long
    spool_budget_mb: int = 0  # above this, delivered studies are purged oldest first; 0: none
    spool_warn_free_mb: int = 1000  # free space on the spool's disk: below, an alarm
    spool_refuse_free_mb: int = 200  # below, new exams are refused
    listen_host: str = ""  # the address our SCP listens on; "": every interface
    scp_max_associations: int = 4  # our SCP (listen_port): associations served at once
    tls: TlsSettings | None = None  # our SCP's certificate (with ca_file: mutual TLS)


@dataclass(frozen=True)
class Equipment:
    manufacturer: str
    model_name: str
    device_serial_number: str
    station_name: str
    institution_name: str
    software_versions: str
    institution_address: str = ""
    department_name: str = ""


@dataclass(frozen=True)
class HardwareSettings:
    driver: str  # "mock", "serial-shm", "directory"
    options: dict[str, Any] = field(default_factory=dict)  # the driver's own keys


@dataclass(frozen=True)
class Peer:
    """A remote DICOM application entity."""

    ae_title: str
    host: str
    port: int
    tls: TlsSettings | None = None
    connect_timeout_s: float = 10.0
    dimse_timeout_s: float = 30.0
    acse_timeout_s: float = 30.0


@dataclass(frozen=True)
class Destination(Peer):
    """An archive the agent delivers to (SPEC §6)."""

    name: str = ""
    transfer_syntaxes: tuple[str, ...] = ()  # UIDs, in order of preference
    storage_commitment: bool = False
    commitment_timeout_s: float = 3600.0  # waiting for the report; then asked again
    commitment_report_ae_titles: tuple[str, ...] = ()  # who else may report for it
    send_while_scanning: bool = True
    default: bool = False
    dose_registry: bool = False  # every exam's dose report, never an image
    max_pdu: int = 131072
    batch_size: int = 64
    associations: int = 1  # at once; each series keeps to one
    adaptive_compression: bool = False  # send as stored where waiting for compression is slower
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0


@dataclass(frozen=True)
class WorklistSettings(Peer):
    """The Modality Worklist SCP (the RIS) and the matching keys sent to it (SPEC §7)."""

    modality: str = "CT"
    station_ae_title: str = ""  # Scheduled Station AE Title to match; "" when not matched
    patient_name: str = ""  # a PN matching key with wildcards; "" matches every name
    days_before: int = 0  # the date range: today - days_before .. today + days_after
    days_after: int = 0
    refresh_interval_s: float = 300.0
    query_timeout_s: float = 30.0
    max_items: int = 5000


@dataclass(frozen=True)
class TuiSettings:
    """The technologist's terminal UI (`modality-agent tui`); it reads the same file."""

    idle_lock_minutes: float = 10.0  # without a key for this long, the screen locks


@dataclass(frozen=True)
class Config:
    source: Path  # the file it was read from, for messages
    agent: AgentSettings
    equipment: Equipment
    hardware: HardwareSettings
    destinations: tuple[Destination, ...]
    worklist: WorklistSettings | None = None
    mpps: Peer | None = None
    tui: TuiSettings = field(default_factory=TuiSettings)

    def destination(self, name: str) -> Destination:
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)

    def peers(self) -> dict[str, Peer]:
        """Every remote AE by the name the CLI uses: destinations, `worklist`, `mpps`."""
        named: dict[str, Peer] = {d.name: d for d in self.destinations}
        named.update({k: p for k, p in (("worklist", self.worklist), ("mpps", self.mpps)) if p})
        return named

    @property
    def default_destinations(self) -> tuple[Destination, ...]:
        return tuple(d for d in self.destinations if d.default)

    @property
    def dose_registries(self) -> tuple[str, ...]:
        """The destinations that get every exam's dose report and no image."""
        return tuple(d.name for d in self.destinations if d.dose_registry)
