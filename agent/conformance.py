"""The DICOM Conformance Statement (docs/conformance-statement.md, PS3.2's structure): the prose
is the template `conformance_template.md`; every table and value that follows from the code is
generated here from the constants and functions the code itself uses, so that the document
cannot promise what the agent does not do.

`modality-agent conformance --write` regenerates the file; tests/test_conformance.py fails when
the file and the code differ, and compares the presentation contexts with those on the wire.
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import pynetdicom
from pydicom.charset import python_encoding
from pydicom.uid import UID, CTImageStorage, XRayRadiationDoseSRStorage
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from agent.config.model import Equipment
from agent.config.schema import DESTINATION, SCHEMA
from agent.dicom import codecs
from agent.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, UidFactory
from agent.docs_output import publish
from agent.exam import Patient, Procedure, open_exam
from agent.mpps import steps
from agent.mpps.sender import MAX_ATTEMPTS, MPPS_SOP_CLASS, MPPS_SYNTAXES
from agent.net import association, tls
from agent.net.commitment import FAILURE_REASONS, PUSH_MODEL
from agent.net.echo import VERIFICATION
from agent.net.outcome import n_service_verdict, store_verdict
from agent.worklist import query
from agent.worklist.client import QUERY_SYNTAXES

TEMPLATE = "conformance_template.md"
STORAGE_SOP_CLASSES = (CTImageStorage, XRayRadiationDoseSRStorage)  # what the spool holds

DOCUMENT = "conformance-statement.md"


@dataclass(frozen=True)
class ContextRow:
    """One proposed (or accepted) presentation context, as a table row."""

    activity: str
    sop_class: str
    syntaxes: tuple[str, ...]  # in one context, in this order
    role: str


def _name(uid: str) -> str:
    return UID(uid).name


def supported_syntaxes() -> tuple[str, ...]:
    """Every transfer syntax a destination may list, in the codecs' order."""
    return tuple(codecs.available())


def storage_rows() -> list[ContextRow]:
    """Storage: one context per SOP class and transfer syntax (agent.net.contexts), here for a
    destination that lists every supported syntax; a site lists a subset, in its order."""
    return [
        ContextRow("Send instances", str(sop), (ts,), "SCU")
        for sop in STORAGE_SOP_CLASSES
        for ts in supported_syntaxes()
    ]


def other_scu_rows() -> list[ContextRow]:
    def row(activity: str, sop: str, syntaxes: Iterable[str]) -> ContextRow:
        return ContextRow(activity, sop, tuple(str(s) for s in syntaxes), "SCU")

    return [
        row("Verify", VERIFICATION, build_context(VERIFICATION).transfer_syntax),
        row("Query worklist", str(ModalityWorklistInformationFind), QUERY_SYNTAXES),
        row("Report the procedure step", MPPS_SOP_CLASS, MPPS_SYNTAXES),
        row("Request storage commitment", PUSH_MODEL, build_context(PUSH_MODEL).transfer_syntax),
    ]


def scp_rows() -> list[ContextRow]:
    """What our SCP (agent.net.scp) accepts: pynetdicom's default syntaxes for each."""
    defaults = tuple(str(s) for s in pynetdicom.DEFAULT_TRANSFER_SYNTAXES)
    return [
        ContextRow("Be verified", VERIFICATION, defaults, "SCP"),
        ContextRow("Receive commitment reports", PUSH_MODEL, defaults, "SCU (SCP role selected)"),
    ]


def _context_table(rows: Sequence[ContextRow], one_per_syntax: bool) -> str:
    out = [
        "| activity | abstract syntax | UID | transfer syntax | UID | role | ext. negotiation |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        names = "<br>".join(_name(ts) for ts in r.syntaxes)
        uids = "<br>".join(r.syntaxes)
        out.append(
            f"| {r.activity} | {_name(r.sop_class)} | {r.sop_class} | {names} | {uids} | "
            f"{r.role} | none |"
        )
    note = (
        "Each row is a presentation context of its own."
        if one_per_syntax
        else "Each row is one presentation context proposing its transfer syntaxes in this order."
    )
    return "\n".join([*out, "", note])


def parse_context_table(markdown: str, heading: str) -> list[tuple[str, tuple[str, ...]]]:
    """(abstract syntax UID, transfer syntax UIDs) of each row of the table under `heading`
    in a generated statement: what the wire test compares with."""
    start = markdown.index(heading)
    rows: list[tuple[str, tuple[str, ...]]] = []
    for line in markdown[start:].splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("activity", "---"):
            continue
        rows.append((cells[2], tuple(cells[4].split("<br>"))))
    return rows


def _services_table() -> str:
    rows = [
        ("Transfer", str(CTImageStorage), "Yes", "No"),
        ("Transfer", str(XRayRadiationDoseSRStorage), "Yes", "No"),
        ("Workflow", VERIFICATION, "Yes", "Yes"),
        ("Workflow", str(ModalityWorklistInformationFind), "Yes", "No"),
        ("Workflow", MPPS_SOP_CLASS, "Yes", "No"),
        ("Workflow", PUSH_MODEL, "Yes", "No"),
    ]
    out = [
        "| kind | SOP class | UID | user of service (SCU) | provider of service (SCP) |",
        "| --- | --- | --- | --- | --- |",
    ]
    out += [f"| {k} | {_name(uid)} | {uid} | {scu} | {scp} |" for k, uid, scu, scp in rows]
    return "\n".join(out)


def _default(schema: dict[str, Any], key: str) -> Any:
    return schema["properties"][key].get("default")


def _policies() -> str:
    agent = SCHEMA["properties"]["agent"]
    scu_pdu = inspect.signature(association.open_association).parameters["max_pdu"].default
    dest = DESTINATION["properties"]
    if "associations" in dest:
        per_dest = (
            f"up to `associations` per destination (default {dest['associations'].get('default')}"
            f", at most {dest['associations'].get('maximum')})"
        )
    else:
        per_dest = "one at a time per destination"
    lines = [
        "| policy | value |",
        "| --- | --- |",
        "| Application Context Name | 1.2.840.10008.3.1.1.1 |",
        f"| Maximum PDU size received, storage associations | `max_pdu` of the destination "
        f"(default {_default(DESTINATION, 'max_pdu')}) |",
        f"| Maximum PDU size received, other associations we open | {scu_pdu} |",
        f"| Maximum PDU size received, our SCP | {AE().maximum_pdu_size} |",
        f"| Associations opened for sending | {per_dest}; worklist, MPPS, commitment and "
        "verification each on an association of their own |",
        f"| Associations accepted at once by our SCP | `scp_max_associations` (default "
        f"{_default(agent, 'scp_max_associations')}) |",
        "| Asynchronous operations window | not proposed: one operation outstanding at a time |",
        f"| Implementation Class UID (association) | {pynetdicom.PYNETDICOM_IMPLEMENTATION_UID} "
        "(pynetdicom's) |",
        f"| Implementation Version Name (association) | "
        f"{pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION} |",
        f"| Implementation Class UID (File Meta of our instances) | {IMPLEMENTATION_CLASS_UID} |",
        f"| Implementation Version Name (File Meta) | {_version_pattern()} |",
    ]
    return "\n".join(lines)


def _version_pattern() -> str:
    # the version number changes with each release; the statement names the pattern
    return re.sub(r"_.*", "_<version>", IMPLEMENTATION_VERSION_NAME)


STORE_STATUSES = (0x0000, 0x0001, 0x0111, 0xB000, 0xB006, 0xB007, 0xB123, 0x0110, 0x0117)
STORE_STATUSES_MORE = (0x0122, 0x0124, 0x0210, 0x0211, 0x0212, 0x0213, 0xA700, 0xA7FF)
STORE_STATUSES_LAST = (0xA900, 0xA9FF, 0xC000, 0xCFFF, 0xFE00, 0xD000)


def _store_statuses() -> str:
    out = ["| status | meaning | what the agent does |", "| --- | --- | --- |"]
    action = {
        "ok": "counted as delivered",
        "retry": "retried with exponential backoff and jitter",
        "fail": "marked failed, shown in `queue`; retried only by `retry`",
    }
    for code in STORE_STATUSES + STORE_STATUSES_MORE + STORE_STATUSES_LAST:
        v = store_verdict(code)
        out.append(f"| {code:04X} | {v.reason} | {action[v.outcome.value]} |")
    none = store_verdict(None)
    out.append(f"| (none) | {none.reason} | {action[none.outcome.value]} |")
    return "\n".join(out)


def _mpps_statuses() -> str:
    out = ["| status | N-CREATE | N-SET |", "| --- | --- | --- |"]
    for code in (0x0000, 0x0001, 0x0105, 0x0106, 0x0110, 0x0111, 0x0112, 0x0120, 0xA700):
        cells = []
        for op in ("N-CREATE", "N-SET"):
            v = n_service_verdict(op, code)
            cells.append(f"{v.outcome.value}: {v.reason}")
        out.append(f"| {code:04X} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def _keywords(keys: Iterable[str]) -> str:
    return ", ".join(f"`{k}`" for k in keys)


def _mpps_attributes() -> str:
    equipment = Equipment("M", "N", "S", "ST", "I", "1")
    exam = open_exam(Patient("DOE^JANE", "P1"), Procedure(), UidFactory(), now=_NOON)
    created = steps.in_progress(exam, "CT", equipment)
    (scheduled,) = created.ScheduledStepAttributesSequence
    final = steps.final(exam, _NOON, [], discontinue_reason="equipment failure")
    return "\n".join(
        [
            f"- N-CREATE (IN PROGRESS): {_keywords(e.keyword for e in created)}.",
            "- N-CREATE, its Scheduled Step Attributes Sequence item: "
            f"{_keywords(e.keyword for e in scheduled)}; for an exam from the worklist, the "
            "item's values as encoded, and of its patient attributes only "
            f"{_keywords(steps.PATIENT_KEYS)} (with `SpecificCharacterSet`): no other "
            "worklist value (PS3.4 F.7.2).",
            f"- N-SET (COMPLETED or DISCONTINUED): {_keywords(e.keyword for e in final)}.",
        ]
    )


_NOON = datetime.fromisoformat("2026-01-01T12:00:00+00:00")


def _worklist_keys() -> str:
    return "\n".join(
        [
            "- Matching keys: `ScheduledStationAETitle` (`station_ae_title`, default our AE "
            "title), `ScheduledProcedureStepStartDate` (a date or range around today), "
            "`Modality` (`modality`, default "
            f"{_default(SCHEMA['properties']['worklist'], 'modality')}), `PatientName` "
            "(wildcards), `AccessionNumber`, `ScheduledProcedureStepID` (from the command "
            "line).",
            f"- Return keys, patient: {_keywords(query.PATIENT_KEYS)}"
            f"{_code_sequences(query.PATIENT_CODE_SEQUENCES)}.",
            f"- Return keys, request: {_keywords(query.REQUEST_KEYS)}"
            f"{_code_sequences(query.REQUEST_CODE_SEQUENCES)}.",
            f"- Return keys, scheduled step: {_keywords(query.STEP_KEYS)}"
            f"{_code_sequences(query.STEP_CODE_SEQUENCES)}.",
            f"- Each code sequence: one item of {_keywords(query.CODE_KEYS)}.",
        ]
    )


def _code_sequences(keywords: Sequence[str]) -> str:
    return "".join(f", `{k}`" for k in keywords)


def _commitment_reasons() -> str:
    out = ["| Failure Reason | meaning |", "| --- | --- |"]
    out += [f"| {code:04X} | {text} |" for code, text in FAILURE_REASONS.items()]
    return "\n".join(out)


def _character_sets() -> str:
    terms = sorted(t for t in python_encoding if t)
    return f"(none: the default repertoire), {_keywords(terms)}"


def _tls() -> str:
    version = tls.MINIMUM_VERSION.name.replace("v", " ").replace("_", ".")
    return "\n".join(
        [
            f"- Protocol: {version} or later (BCP 195); TLS compression off.",
            f"- TLS 1.2 cipher suites (OpenSSL list): `{tls.CIPHERS}`; TLS 1.3: OpenSSL's "
            "suites (all AEAD).",
        ]
    )


def _syntax_list() -> str:
    return "\n".join(f"- {_name(ts)} ({ts})" for ts in supported_syntaxes())


def parts() -> dict[str, str]:
    """Every generated part, by its placeholder name in the template."""
    return {
        "services": _services_table(),
        "policies": _policies(),
        "storage_contexts": _context_table(storage_rows(), one_per_syntax=True),
        "other_contexts": _context_table(other_scu_rows(), one_per_syntax=False),
        "scp_contexts": _context_table(scp_rows(), one_per_syntax=False),
        "syntaxes": _syntax_list(),
        "store_statuses": _store_statuses(),
        "mpps_statuses": _mpps_statuses(),
        "mpps_attributes": _mpps_attributes(),
        "mpps_attempts": str(MAX_ATTEMPTS),
        "worklist_keys": _worklist_keys(),
        "commitment_reasons": _commitment_reasons(),
        "commitment_timeout": str(_default(DESTINATION, "commitment_timeout")),
        "character_sets": _character_sets(),
        "tls": _tls(),
    }


def render() -> str:
    text = resources.files("agent").joinpath(TEMPLATE).read_text(encoding="utf-8")
    for name, value in parts().items():
        placeholder = "{{" + name + "}}"
        if placeholder not in text:
            raise ValueError(f"{TEMPLATE}: no placeholder {placeholder}")
        text = text.replace(placeholder, value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise ValueError(f"{TEMPLATE}: nothing generates {', '.join(left)}")
    return text


def command(args: argparse.Namespace) -> int:
    """`modality-agent conformance [--write | --check]`."""
    return publish(render, DOCUMENT, write=args.write, check=args.check)
