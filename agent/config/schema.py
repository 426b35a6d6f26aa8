"""The config file's schema: one JSON Schema (draft 2020-12) for every key, its type and range.

It is the single source for validation here and for the configuration reference later.
"""

from __future__ import annotations

from typing import Any

AE_TITLE: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 16,
    # PS3.5 AE: default character repertoire without backslash and control characters
    "pattern": r"^[\x20-\x5b\x5d-\x7e]*[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]*$",
    "description": "DICOM AE title: 1 to 16 printable ASCII characters, no backslash",
}
PORT: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 65535}
HOST: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255}
PATH: dict[str, Any] = {"type": "string", "minLength": 1}
TEXT_LO: dict[str, Any] = {"type": "string", "maxLength": 64}
SECONDS: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}

TLS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ca_file": {**PATH, "description": "CA bundle that signs the peer's certificate"},
        "cert_file": {**PATH, "description": "our certificate (mutual TLS)"},
        "key_file": {**PATH, "description": "our private key (mutual TLS)"},
        "check_hostname": {"type": "boolean", "default": False},
    },
    "required": ["ca_file"],
    "dependentRequired": {"cert_file": ["key_file"], "key_file": ["cert_file"]},
}

SERVER_TLS: dict[str, Any] = {  # our SCP's: our certificate; with ca_file, mutual TLS
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "cert_file": {**PATH, "description": "our certificate (PEM)"},
        "key_file": {**PATH, "description": "its private key"},
        "ca_file": {**PATH, "description": "peers must present a certificate from this CA"},
    },
    "required": ["cert_file", "key_file"],
}

PEER_PROPERTIES: dict[str, Any] = {
    "ae_title": AE_TITLE,
    "host": HOST,
    "port": PORT,
    "tls": TLS,
    "connect_timeout": {**SECONDS, "default": 10},
    "acse_timeout": {**SECONDS, "default": 30},
    "dimse_timeout": {**SECONDS, "default": 30},
}
PEER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": PEER_PROPERTIES,
    "required": ["ae_title", "host", "port"],
}

DESTINATION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **PEER_PROPERTIES,
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 32,
            "pattern": r"^[A-Za-z0-9_.-]+$",
        },
        "transfer_syntaxes": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1},
            "description": "UIDs or pydicom keywords, in order of preference",
        },
        "storage_commitment": {"type": "boolean", "default": False},
        "commitment_timeout": {
            **SECONDS,
            "default": 3600,
            "description": "how long to wait for the archive's commitment report",
        },
        "commitment_report_ae_titles": {
            "type": "array",
            "uniqueItems": True,
            "items": AE_TITLE,
            "description": "other AE titles that may send this archive's commitment reports",
        },
        "send_while_scanning": {"type": "boolean", "default": True},
        "default": {"type": "boolean", "default": False},
        "dose_registry": {
            "type": "boolean",
            "default": False,
            "description": "a dose registry: gets every exam's dose report (none of "
            "simulated acquisitions), never an image",
        },
        "max_pdu": {"type": "integer", "minimum": 4096, "maximum": 4194304, "default": 131072},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 64},
        "associations": {"type": "integer", "minimum": 1, "maximum": 8, "default": 1},
        "adaptive_compression": {
            "type": "boolean",
            "default": False,
            "description": "true: when the archive accepts the stored syntax too, send an "
            "instance as stored rather than wait for its compressed copy, where that is "
            "sooner (fast links, few cores); false: always the most preferred accepted syntax",
        },
        "retry_initial": {
            **SECONDS,
            "default": 2,
            "description": "seconds to wait after the first failed attempt (doubles each time)",
        },
        "retry_max": {**SECONDS, "default": 300, "description": "longest wait between attempts"},
    },
    "required": ["name", "ae_title", "host", "port"],
}

WORKLIST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **PEER_PROPERTIES,
        "modality": {
            "type": "string",
            "pattern": "^[A-Z0-9_ ]{1,16}$",
            "default": "CT",
            "description": "Modality matching key (CS): upper case, at most 16 characters",
        },
        "station_ae_title": {
            **AE_TITLE,
            "description": "Scheduled Station AE Title to match (default: agent.ae_title)",
        },
        "match_station": {
            "type": "boolean",
            "default": True,
            "description": "match the Scheduled Station AE Title; false: items for any station",
        },
        "patient_name": {
            "type": "string",
            "maxLength": 64,
            "pattern": r"^[^\\\x00-\x1f]*$",
            "description": "Patient's Name matching key (PN, * and ? wildcards), no backslash",
        },
        "days_before": {"type": "integer", "minimum": 0, "maximum": 31, "default": 0},
        "days_after": {"type": "integer", "minimum": 0, "maximum": 31, "default": 0},
        "refresh_interval": {
            "type": "number",
            "minimum": 5,
            "maximum": 86400,
            "default": 300,
            "description": "seconds between background refreshes of the list",
        },
        "query_timeout": {
            **SECONDS,
            "default": 30,
            "description": "seconds one query may take in all before it is cancelled",
        },
        "max_items": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100000,
            "default": 5000,
            "description": "items kept from one query; the query is cancelled beyond",
        },
    },
    "required": ["ae_title", "host", "port"],
}

# Each driver's own keys; `driver` picks which apply (unknown keys are errors as everywhere).
DRIVER_KEYS: dict[str, dict[str, Any]] = {
    "mock": {
        "localizer": {
            "type": "boolean",
            "default": False,
            "description": "a localizer's dose record before each exam's first acquisition",
        },
        "dose_check_ctdivol_mgy": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "the dose check notifies of acquisitions above this CTDIvol (mGy)",
        },
    },
    "directory": {
        "folder": {**PATH, "description": "the drop folder the reconstructor writes into"},
        "polling": {
            "type": "boolean",
            "default": False,
            "description": "poll instead of inotify (network file systems: inotify sees nothing)",
        },
        "poll_interval": {**SECONDS, "default": 1.0},
    },
    "serial-shm": {
        "port": {
            "type": "string",
            "minLength": 1,
            "description": "the serial device (e.g. /dev/modality-scanner) or a pyserial URL",
        },
        "baudrate": {"type": "integer", "minimum": 9600, "maximum": 12000000, "default": 921600},
        "ring_name": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$",
            "description": "the ring under /dev/shm; when set, it must be the one the device names",
        },
    },
}
REQUIRED_KEYS = {"directory": ["folder"], "serial-shm": ["port"]}
HARDWARE: dict[str, Any] = {
    "type": "object",
    "properties": {"driver": {"enum": sorted(DRIVER_KEYS)}},
    "required": ["driver"],
    "allOf": [
        {
            "if": {"properties": {"driver": {"const": name}}},
            "then": {
                "properties": {"driver": True, **keys},
                "additionalProperties": False,
                "required": REQUIRED_KEYS.get(name, []),
            },
        }
        for name, keys in DRIVER_KEYS.items()
    ],
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "agent": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ae_title": AE_TITLE,
                "spool_dir": PATH,
                "control_socket": PATH,
                "uid_root": {
                    "type": "string",
                    "pattern": r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$",
                    "maxLength": 40,
                    "description": "organisation UID root; leaves room for unique suffixes",
                },
                "listen_port": PORT,
                "listen_host": {
                    **HOST,
                    "description": "the address our SCP listens on (default: every interface)",
                },
                "scp_max_associations": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 64,
                    "default": 4,
                    "description": "associations our SCP serves at once",
                },
                "tls": SERVER_TLS,
                "dose_report_when_simulated": {
                    "type": "boolean",
                    "default": False,
                    "description": "a dose report for simulated acquisitions too, to the archives "
                    "only: never to a dose registry (integrators)",
                },
                "retention_days": {
                    "type": "number",
                    "minimum": 0,
                    "default": 7,
                    "description": "a delivered (and committed) study is kept this many days",
                },
                "spool_budget_mb": {
                    "type": "integer",
                    "minimum": 0,
                    "default": 0,
                    "description": "above this, delivered studies go oldest first (0: none)",
                },
                "spool_warn_free_mb": {
                    "type": "integer",
                    "minimum": 0,
                    "default": 1000,
                    "description": "below this much free space on the spool's disk: an alarm",
                },
                "spool_refuse_free_mb": {
                    "type": "integer",
                    "minimum": 0,
                    "default": 200,
                    "description": "below this: new exams are refused (at most the warning)",
                },
            },
            "required": ["ae_title", "spool_dir", "control_socket"],
        },
        "equipment": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "manufacturer": TEXT_LO,
                "model_name": TEXT_LO,
                "device_serial_number": TEXT_LO,
                "station_name": {"type": "string", "maxLength": 16},
                "institution_name": TEXT_LO,
                "institution_address": {"type": "string", "maxLength": 1024},
                "department_name": TEXT_LO,
                "software_versions": TEXT_LO,
            },
            "required": [
                "manufacturer",
                "model_name",
                "device_serial_number",
                "station_name",
                "institution_name",
                "software_versions",
            ],
        },
        "hardware": HARDWARE,
        "worklist": WORKLIST,
        "mpps": PEER,
        "destinations": {"type": "array", "minItems": 1, "items": DESTINATION},
        "tui": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "idle_lock_minutes": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 1440,
                    "default": 10,
                    "description": "minutes without a key before the TUI locks (asks the name)",
                },
            },
        },
    },
    "required": ["agent", "equipment", "hardware", "destinations"],
}

# For the configuration reference (agent/config/reference.py): what each key does and an
# example, for keys whose schema has no "description" (which also words validation errors)
# or no default. Looked up as "table.key", then "*.key" for a key every table shares.
KEY_DOCS: dict[str, dict[str, Any]] = {
    "agent.ae_title": {"example": "CT_CONSOLE1"},
    "agent.spool_dir": {
        "description": "the spool: images, delivery state, the open exam (on a local disk)",
        "example": "/var/lib/modality-agent",
    },
    "agent.control_socket": {
        "description": "the daemon's Unix socket for the CLI and the TUI",
        "example": "/run/modality-agent/control.sock",
    },
    "agent.uid_root": {"example": "1.2.826.0.1.3680043.10.999"},
    "agent.listen_port": {
        "description": "our SCP's TCP port (Verification, Storage Commitment reports); "
        "required with storage_commitment",
        "example": 11113,
    },
    "agent.listen_host": {"example": "0.0.0.0"},
    "equipment.manufacturer": {
        "description": "Manufacturer (0008,0070)",
        "example": "Example Medical",
    },
    "equipment.model_name": {
        "description": "Manufacturer's Model Name (0008,1090)",
        "example": "CT-1",
    },
    "equipment.device_serial_number": {
        "description": "Device Serial Number (0018,1000)",
        "example": "SN0001",
    },
    "equipment.station_name": {"description": "Station Name (0008,1010)", "example": "CT1"},
    "equipment.institution_name": {
        "description": "Institution Name (0008,0080)",
        "example": "General Hospital",
    },
    "equipment.institution_address": {
        "description": "Institution Address (0008,0081)",
        "example": "1 Main Street",
    },
    "equipment.department_name": {
        "description": "Institutional Department Name (0008,1040)",
        "example": "Radiology",
    },
    "equipment.software_versions": {
        "description": "Software Versions (0018,1020)",
        "example": "1.0",
    },
    "hardware.folder": {"example": "/srv/recon-drop"},
    "hardware.poll_interval": {"description": "seconds between looks in polling mode"},
    "hardware.port": {"example": "/dev/modality-scanner"},
    "hardware.baudrate": {"description": "the serial line's speed, bits per second"},
    "hardware.ring_name": {"example": "modality-ring"},
    "*.ae_title": {"example": "ARCHIVE"},
    "*.host": {"description": "the peer's host name or IP address", "example": "10.0.0.5"},
    "*.port": {"description": "the peer's TCP port", "example": 104},
    "*.connect_timeout": {"description": "seconds to wait for the TCP connection"},
    "*.acse_timeout": {"description": "seconds to wait for the association to be accepted"},
    "*.dimse_timeout": {"description": "seconds to wait for each DIMSE response"},
    "*.ca_file": {"example": "/etc/modality-agent/tls/ca.pem"},
    "*.cert_file": {"example": "/etc/modality-agent/tls/console.pem"},
    "*.key_file": {"example": "/etc/modality-agent/tls/console.key"},
    "*.check_hostname": {"description": "also check that the certificate names the host"},
    "worklist.ae_title": {"example": "RIS"},
    "worklist.station_ae_title": {"example": "CT_CONSOLE1"},
    "worklist.patient_name": {"example": "DOE*"},
    "worklist.days_before": {"description": "the date range starts this many days before today"},
    "worklist.days_after": {"description": "the date range ends this many days after today"},
    "mpps.ae_title": {"example": "RIS"},
    "destinations.name": {
        "description": "the destination's name in the CLI, the TUI and the logs",
        "example": "PACS",
    },
    "destinations.transfer_syntaxes": {"example": ["JPEGLSLossless", "ExplicitVRLittleEndian"]},
    "destinations.storage_commitment": {
        "description": "ask the archive to commit what it received (needs agent.listen_port)",
    },
    "destinations.commitment_report_ae_titles": {"example": ["ARCHIVE_SC"]},
    "destinations.send_while_scanning": {
        "description": "send each image as soon as it is accepted; false: when the exam ends",
    },
    "destinations.default": {"description": "chosen for an exam unless others are named"},
    "destinations.max_pdu": {"description": "the largest PDU we accept (bytes)"},
    "destinations.batch_size": {"description": "instances sent on one association at most"},
    "destinations.associations": {
        "description": "associations open to it at once; each series keeps to one (order holds)",
    },
}
