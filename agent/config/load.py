"""TOML file -> validated, frozen `Config`. Every problem names the file, the key and what was
expected; all problems are reported at once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from agent.config.model import (
    AgentSettings,
    Config,
    Destination,
    Equipment,
    HardwareSettings,
    Peer,
    TlsSettings,
    TuiSettings,
    WorklistSettings,
)
from agent.config.schema import SCHEMA

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Pythons before 3.11
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class Problem:
    file: Path
    key: str  # dotted path, e.g. "destinations[0].port"; "" for the whole file
    expected: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key or '(file)'}: {self.expected}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def load(path: Path | str) -> Config:
    """Read, validate and type the config file; raise `ConfigError` listing every problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError([Problem(path, "", f"cannot read the file: {e.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(path, "", "expected UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(path, "", f"not valid TOML: {e}")]) from None
    return from_mapping(raw, path)


def from_mapping(raw: Mapping[str, Any], source: Path) -> Config:
    problems = [Problem(source, key, text) for key, text in schema_problems(raw)]
    if problems:
        raise ConfigError(problems)
    config = _build(raw, source)
    problems = [Problem(source, key, text) for key, text in semantic_problems(config, raw)]
    if problems:
        raise ConfigError(problems)
    return config


def schema_problems(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    found = []
    for error in validator.iter_errors(raw):
        found.extend(_describe(error))
    return sorted(set(found))


def _key(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    key = _key(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind, value = error.validator, error.instance
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(value) - set(allowed))
        return [(_join(key, name), _unknown_key(name, allowed)) for name in unknown]
    if kind == "required":
        missing = [n for n in error.validator_value if n not in value]
        return [(_join(key, n), "required key is missing") for n in missing]
    if kind == "dependentRequired":
        return [(key, f"expected both or neither of {error.message}")]
    return [(key, f"expected {_expectation(kind, schema)}, got {_show(value)}")]


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _unknown_key(name: str, allowed: list[str]) -> str:
    hint = difflib.get_close_matches(name, allowed, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"unknown key{suggestion}; expected one of: {', '.join(allowed)}"


def _expectation(kind: str, schema: Mapping[str, Any]) -> str:
    what = schema.get("description") or {
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "array": "an array",
        "object": "a table",
    }.get(str(schema.get("type")), "a valid value")
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum")
    if kind in ("minimum", "maximum", "exclusiveMinimum") and high is not None:
        above = "above" if "exclusiveMinimum" in schema else "from"
        return f"{what} {above} {low} to {high}"
    if kind in ("minLength", "maxLength"):
        return (
            f"{what} of {schema.get('minLength', 0)} to {schema.get('maxLength', 'any')} characters"
        )
    if kind in ("minItems", "uniqueItems"):
        return f"{what} with at least {schema.get('minItems', 0)} distinct items"
    return str(what)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _relative_to(source: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (source.parent / p).resolve()


def _tls(source: Path, raw: Mapping[str, Any] | None) -> TlsSettings | None:
    if raw is None:
        return None
    files = {
        k: _relative_to(source, raw[k]) for k in ("ca_file", "cert_file", "key_file") if k in raw
    }
    return TlsSettings(**files, check_hostname=raw.get("check_hostname", False))


def _peer_args(source: Path, raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "ae_title": raw["ae_title"].strip(),
        "host": raw["host"],
        "port": raw["port"],
        "tls": _tls(source, raw.get("tls")),
        "connect_timeout_s": float(raw.get("connect_timeout", 10)),
        "acse_timeout_s": float(raw.get("acse_timeout", 30)),
        "dimse_timeout_s": float(raw.get("dimse_timeout", 30)),
    }


def _build(raw: Mapping[str, Any], source: Path) -> Config:
    from agent.dicom.codecs import resolve

    a = raw["agent"]
    agent = AgentSettings(
        ae_title=a["ae_title"].strip(),
        spool_dir=_relative_to(source, a["spool_dir"]),
        control_socket=_relative_to(source, a["control_socket"]),
        uid_root=a.get("uid_root"),
        listen_port=a.get("listen_port"),
        dose_report_when_simulated=a.get("dose_report_when_simulated", False),
        retention_days=float(a.get("retention_days", 7)),
        spool_budget_mb=a.get("spool_budget_mb", 0),
        spool_warn_free_mb=a.get("spool_warn_free_mb", 1000),
        spool_refuse_free_mb=a.get("spool_refuse_free_mb", 200),
        listen_host=a.get("listen_host", ""),
        scp_max_associations=a.get("scp_max_associations", 4),
        tls=_tls(source, a.get("tls")),
    )
    destinations = []
    for d in raw["destinations"]:
        syntaxes = []
        for name in d.get(
            "transfer_syntaxes", ["ExplicitVRLittleEndian", "ImplicitVRLittleEndian"]
        ):
            try:
                syntaxes.append(resolve(name))
            except ValueError:
                syntaxes.append(name)  # reported by semantic_problems with its key
        destinations.append(
            Destination(
                **_peer_args(source, d),
                name=d["name"],
                transfer_syntaxes=tuple(syntaxes),
                storage_commitment=d.get("storage_commitment", False),
                commitment_timeout_s=float(d.get("commitment_timeout", 3600)),
                commitment_report_ae_titles=tuple(
                    t.strip() for t in d.get("commitment_report_ae_titles", [])
                ),
                send_while_scanning=d.get("send_while_scanning", True),
                default=d.get("default", False),
                dose_registry=d.get("dose_registry", False),
                max_pdu=d.get("max_pdu", 131072),
                batch_size=d.get("batch_size", 64),
                associations=d.get("associations", 1),
                adaptive_compression=d.get("adaptive_compression", False),
                retry_initial_s=float(d.get("retry_initial", 2)),
                retry_max_s=float(d.get("retry_max", 300)),
            )
        )
    hw = dict(raw["hardware"])
    for key in ("folder",):  # the drivers' paths, like every path, from the file's folder
        if key in hw:
            hw[key] = _relative_to(source, hw[key])
    return Config(
        source=source,
        agent=agent,
        equipment=Equipment(**raw["equipment"]),
        hardware=HardwareSettings(driver=hw.pop("driver"), options=hw),
        destinations=tuple(destinations),
        worklist=_worklist(source, raw["worklist"], agent) if "worklist" in raw else None,
        mpps=Peer(**_peer_args(source, raw["mpps"])) if "mpps" in raw else None,
        tui=TuiSettings(
            idle_lock_minutes=float(raw.get("tui", {}).get("idle_lock_minutes", 10)),
        ),
    )


def _worklist(source: Path, raw: Mapping[str, Any], agent: AgentSettings) -> WorklistSettings:
    station = raw.get("station_ae_title", agent.ae_title).strip()
    return WorklistSettings(
        **_peer_args(source, raw),
        modality=raw.get("modality", "CT").strip(),
        station_ae_title=station if raw.get("match_station", True) else "",
        patient_name=raw.get("patient_name", "").strip(),
        days_before=raw.get("days_before", 0),
        days_after=raw.get("days_after", 0),
        refresh_interval_s=float(raw.get("refresh_interval", 300)),
        query_timeout_s=float(raw.get("query_timeout", 30)),
        max_items=raw.get("max_items", 5000),
    )


def semantic_problems(config: Config, raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What a schema cannot say: cross-key rules, names that must resolve, files that must exist."""
    from agent.dicom.codecs import resolve
    from agent.dicom.uids import UidFactory

    found: list[tuple[str, str]] = []
    if config.agent.uid_root is not None:
        try:
            UidFactory(config.agent.uid_root)
        except ValueError as e:
            found.append(("agent.uid_root", f"expected a valid organisation UID root: {e}"))
    a = config.agent
    if a.spool_refuse_free_mb > a.spool_warn_free_mb:
        found.append(
            (
                "agent.spool_refuse_free_mb",
                f"expected at most agent.spool_warn_free_mb ({a.spool_warn_free_mb}): the "
                "warning comes before the refusal",
            )
        )
    seen: set[str] = set()
    for i, d in enumerate(config.destinations):
        here = f"destinations[{i}]"
        if d.name in seen:
            found.append((f"{here}.name", f"expected a unique name; '{d.name}' is used twice"))
        seen.add(d.name)
        for j, name in enumerate(raw["destinations"][i].get("transfer_syntaxes", [])):
            try:
                resolve(name)
            except ValueError as e:
                found.append((f"{here}.transfer_syntaxes[{j}]", f"expected a transfer syntax: {e}"))
        if d.dose_registry and d.default:
            found.append(
                (
                    f"{here}.default",
                    "expected false for a dose_registry: it receives dose reports, never images",
                )
            )
        if d.storage_commitment and config.agent.listen_port is None:
            found.append(
                (
                    f"{here}.storage_commitment",
                    "expected agent.listen_port to be set: storage commitment reports need our SCP",
                )
            )
    if not config.default_destinations:
        found.append(("destinations", "expected at least one destination with default = true"))
    keys = {d.name: f"destinations[{i}]" for i, d in enumerate(config.destinations)}
    peers = [(keys.get(name, name), p) for name, p in config.peers().items()]

    for key, peer in peers:
        if peer.tls is None:
            continue
        for name in ("ca_file", "cert_file", "key_file"):
            f = getattr(peer.tls, name)
            if f is not None and not f.is_file():
                found.append((f"{key}.tls.{name}", f"expected a readable file, {f} does not exist"))
    return found
