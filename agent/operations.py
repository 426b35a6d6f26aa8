"""The daemon's operations, as served on the control socket (docs/control-protocol.md).

Each takes the request's `args` and returns the `result` object, or raises `OpError`.
"""

from __future__ import annotations

import difflib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from agent import __version__
from agent.assignment import assign_series
from agent.control.protocol import OpError
from agent.control.server import caller_user
from agent.dicom import files, modules
from agent.dose import hook as dose
from agent.exam import Exam, Patient, Procedure, open_exam
from agent.exam_book import ExamConflict, ExamEntry
from agent.exam_series import SeriesLister
from agent.net.echo import echo
from agent.queue_report import queue_document
from agent.timestamps import utc_iso
from agent.worklist.item import WorklistItem
from agent.worklist.query import Filter, parse_dates
from hardware.base import DriverError, ScanRequest

if TYPE_CHECKING:
    from agent.daemon import Daemon

log = logging.getLogger(__name__)
Op = Callable[[dict[str, Any]], dict[str, Any]]
_SEX = {"M", "F", "O", ""}


class Operations:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._simulating = threading.Lock()
        # exam start and end, with the token given to the hardware, happen one at a time
        self._lifecycle = threading.Lock()
        self._series = SeriesLister(daemon.spool)

    def table(self) -> dict[str, Op]:
        ops: dict[str, tuple[Op, set[str]]] = {
            "status": (self.status, set()),
            "exam.start": (self.exam_start, set(_EXAM_START_ARGS)),
            "exam.end": (self.exam_end, {"discontinue"}),
            "exam.status": (self.exam_status, set()),
            "exam.assign": (
                self.exam_assign,
                {"series_instance_uid", "exam", "operator", "incomplete"},
            ),
            "simulate": (self.simulate, {"series", "slices", "rate", "token", "timeout"}),
            "queue": (self.queue, set()),
            "retry": (self.retry, {"study", "dest"}),
            "wait": (self.wait, {"timeout"}),
            "echo": (self.echo, {"names"}),
            "worklist": (
                self.worklist,
                {"date", "patient_name", "accession", "sps_id", "cached"},
            ),
            "alarm.acknowledge": (self.alarm_acknowledge, {"kind", "subject", "operator"}),
            "operator.sign_in": (self.operator_event("operator.sign_in"), {"operator"}),
            "operator.lock": (self.operator_event("operator.lock"), {"operator"}),
            "audit": (self.audit, {"last"}),
        }
        return {name: _strict(op, allowed) for name, (op, allowed) in ops.items()}

    def hello(self) -> dict[str, Any]:
        cfg = self.d.cfg
        return {
            "agent_version": __version__,
            "ae_title": cfg.agent.ae_title,
            "driver": cfg.hardware.driver,
            "simulated": cfg.hardware.driver == "mock",
        }

    # -- exams ----------------------------------------------------------------------------

    def exam_start(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lifecycle:
            return self._exam_start(args)

    def exam_end(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lifecycle:
            return self._exam_end(args)

    def _exam_start(self, args: dict[str, Any]) -> dict[str, Any]:
        refusal = self.d.space.refusal()
        if refusal is not None:  # the scanner must stop before data could be lost (SPEC §5)
            raise OpError("failed", f"no new exam: {refusal}")
        if self._from_worklist(args):
            if any(args.get(k) is not None for k in _MEASURES):
                raise OpError("bad_request", "weight_kg and size_m are for a patient by hand")
            patient, procedure = self._worklist_item(args).exam_parts()
        else:
            patient, procedure = _patient_and_procedure(args)
        names = _strings(args, "destinations") or [d.name for d in self.d.cfg.default_destinations]
        known = {d.name for d in self.d.cfg.destinations}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise OpError(
                "not_found",
                f"no destination named {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            )
        registries = [n for n in names if n in self.d.cfg.dose_registries]
        if registries:
            raise OpError(
                "bad_request",
                f"{', '.join(registries)}: a dose registry gets every exam's dose report by "
                "itself, and never an image",
            )
        exam = open_exam(
            patient,
            procedure,
            self.d.uids,
            operator=_string(args, "operator", 64),
            destinations=tuple(names),
        )
        warnings = self._check_values(exam)
        try:
            self.d.book.start(exam)
        except ExamConflict as e:
            raise OpError("conflict", str(e)) from None
        self.d.driver.set_exam_token(exam.token)
        started = exam_json(ExamEntry(exam))
        self.d.record(
            "exam.start",
            operator=exam.operator,
            os_user=caller_user(),
            token=exam.token,
            study=exam.study_instance_uid,
            accession=exam.procedure.accession_number,
            patient_id=exam.patient.id,
        )
        self.d.notify("exam.started", started)
        return {"exam": started, "warnings": warnings}

    def _from_worklist(self, args: dict[str, Any]) -> bool:
        """SPEC §8: `accession` or `sps_id` alone takes the item from the worklist; with a
        patient given by hand (or without a [worklist] section) the accession is a value."""
        by_hand = any(args.get(k) for k in ("patient_id", "patient_name", "unscheduled"))
        if args.get("sps_id") is not None and (by_hand or self.d.worklist is None):
            raise OpError(
                "bad_request",
                "sps_id takes an item from the worklist: it needs a [worklist] section and "
                "no patient given by hand",
            )
        return (
            self.d.worklist is not None
            and not by_hand
            and bool(args.get("accession") or args.get("sps_id"))
        )

    def _worklist_item(self, args: dict[str, Any]) -> WorklistItem:
        assert self.d.worklist is not None
        accession = _string(args, "accession", 16)
        sps_id = _string(args, "sps_id", 16)
        listing = self.d.worklist.query(Filter(accession=accession, sps_id=sps_id))
        found = [
            i
            for i in listing.items
            if (not accession or i.accession_number == accession)
            and (not sps_id or i.scheduled_procedure_step_id == sps_id)
        ]
        wanted = " and ".join(
            f"{k} {v}" for k, v in (("accession", accession), ("SPS ID", sps_id)) if v
        )
        source = _source(listing.stale, listing.fetched_at, listing.error)
        if not found:
            kept = self.d.worklist.kept().items
            known = "; ".join(_item_line(i) for i in kept[:10]) or "none"
            more = f" and {len(kept) - 10} more" if len(kept) > 10 else ""
            raise OpError(
                "not_found",
                f"no worklist item with {wanted} ({source}). The kept list has: {known}{more}",
            )
        if len(found) > 1:
            raise OpError(
                "conflict",
                f"{len(found)} worklist items with {wanted}; give --sps-id to pick one: "
                + "; ".join(_item_line(i) for i in found),
                items=[i.to_json() for i in found],
            )
        item = found[0]
        if not item.usable:
            raise OpError(
                "failed",
                f"the worklist item {_item_line(item)} cannot be used: "
                f"{'; '.join(item.problems)}. Register the patient by hand instead",
            )
        return item

    def _check_values(self, exam: Exam) -> list[str]:
        """The exam's values in the images, checked now (never at every slice); our own text
        that the worklist's character set cannot hold is named (it is written with "?")."""
        ds = modules.exam_preview(exam, self.d.cfg.equipment)
        try:
            files.validate(ds)
        except files.InvalidDataset as e:
            raise OpError("bad_request", str(e)) from None
        terms = modules.character_set(ds)  # (): no worklist set, UTF-8 when needed
        changed = modules.fit_text(ds, terms) if terms else []
        if not changed:
            return []
        shown = "\\".join(terms)
        message = (
            f"the worklist's character set {shown} cannot hold every "
            f"character of {', '.join(changed)}: each such character is written as '?'"
        )
        log.warning("exam %s: %s", exam.token, message)
        return [message]

    def worklist(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.d.worklist is None:
            raise OpError("failed", "no worklist: the config has no [worklist] section")
        dates = None
        if args.get("date") is not None:
            try:
                dates = parse_dates(_string(args, "date", 17))
            except ValueError as e:
                raise OpError("bad_request", f"date: {e}") from None
        f = Filter(
            dates=dates,
            patient_name=_string(args, "patient_name", 64),
            accession=_string(args, "accession", 16),
            sps_id=_string(args, "sps_id", 16),
        )
        listing = self.d.worklist.kept(f) if _bool(args, "cached") else self.d.worklist.query(f)
        return listing.to_json()

    def _exam_end(self, args: dict[str, Any]) -> dict[str, Any]:
        reason = args.get("discontinue")
        if reason is not None and (not isinstance(reason, str) or not reason.strip()):
            raise OpError("bad_request", "discontinue: expected a non-empty reason")
        current = self.d.book.current
        if current is None:
            raise OpError("conflict", "no exam is open")
        ended = datetime.now(UTC)
        try:  # the dose report first: spooled, so that the MPPS N-SET references it
            dose.exam_ended(self.d, current)
        except OSError as e:
            raise OpError("failed", f"the exam's dose report cannot be queued: {e.strerror}") from e
        if self.d.mpps is not None:  # its final N-SET is queued before the exam is closed
            try:
                self.d.mpps.exam_ended(current, ended.astimezone(), reason)
            except OSError as e:
                raise OpError("failed", f"the exam's MPPS cannot be queued: {e.strerror}") from e
        try:
            entry = self.d.book.end(reason, ended)
        except ExamConflict as e:
            raise OpError("conflict", str(e)) from None
        self.d.record(
            "exam.end",
            operator=entry.exam.operator,
            os_user=caller_user(),
            outcome="discontinued: " + reason if reason else "success",
            token=entry.exam.token,
            study=entry.exam.study_instance_uid,
        )
        if self.d.spool.release_deferred(entry.exam.token):
            self.d.wake(entry.exam.destinations)
        self.d.driver.set_exam_token(None)
        closed = exam_json(entry)
        self.d.notify("exam.ended", closed)
        return {"exam": closed}

    def exam_status(self, args: dict[str, Any]) -> dict[str, Any]:
        exam = self._current_json()
        series = []
        if exam is not None:
            listed = self._series.of_exam(
                exam["study_instance_uid"], exam["token"], self.d.acquisition.open_series_uids()
            )
            series = [s.to_json() for s in listed]
        return {
            "exam": exam,
            "series": series,
            "unassigned": [h.to_json() for h in self.d.holding.series()],
        }

    def _current_json(self) -> dict[str, Any] | None:
        current = self.d.book.current
        entry = self.d.book.entry(current.token) if current else None
        return exam_json(entry) if entry else None

    def exam_assign(self, args: dict[str, Any]) -> dict[str, Any]:
        series_uid = _string(args, "series_instance_uid", 64, required=True)
        target = _string(args, "exam", 64, required=True)
        operator = _string(args, "operator", 64) or "unknown"
        incomplete = _bool(args, "incomplete")
        entry = assign_series(self.d, series_uid, target, operator, incomplete=incomplete)
        self.d.record(
            "exam.assign",
            operator=operator,
            os_user=caller_user(),
            series=series_uid,
            token=entry.exam.token,
            study=entry.exam.study_instance_uid,
        )
        return {"series_instance_uid": series_uid, "exam": exam_json(entry)}

    # -- acquisition ----------------------------------------------------------------------

    def simulate(self, args: dict[str, Any]) -> dict[str, Any]:
        series = _int(args, "series", 1, 1, 1000)
        slices = _int(args, "slices", 1, 1, 100000)
        rate = args.get("rate")
        if rate is not None and not (isinstance(rate, int | float) and rate > 0):
            raise OpError("bad_request", "rate: expected a positive number of slices per second")
        timeout = _timeout(args, 600)
        token = args.get("token")
        if token is not None and not isinstance(token, str):
            raise OpError("bad_request", "token: expected text")
        if token is None:
            current = self.d.book.current
            if current is None:
                raise OpError("conflict", "no exam is open: start one, or give --token")
            token = current.token
        counts = self.d.acquisition.counts
        wanted = series * slices
        with self._simulating:
            before = counts.slices_accepted + counts.slices_held
            try:
                self.d.driver.request_scan(ScanRequest(str(token), series, slices, rate))
            except DriverError as e:
                raise OpError("failed", str(e)) from None
            with self.d.changed:
                done = self.d.changed.wait_for(
                    lambda: (
                        self.d.stopping.is_set()
                        or counts.slices_accepted + counts.slices_held - before >= wanted
                    ),
                    timeout,
                )
            got = counts.slices_accepted + counts.slices_held - before
        if got < wanted:
            why = "the daemon is stopping" if done else f"not done after {timeout:g} s"
            raise OpError(
                "timeout",
                f"{got} of {wanted} slices accepted: {why}",
                requested=wanted,
                accepted=got,
            )
        return {"requested": wanted, "accepted": got}

    # -- delivery -------------------------------------------------------------------------

    def queue(self, args: dict[str, Any]) -> dict[str, Any]:
        return queue_document(self.d)

    def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        study = _string(args, "study", 64) or None
        dest = _string(args, "dest", 32) or None
        if dest is not None and dest not in self.d.senders:
            raise OpError("not_found", f"no destination named {dest}")
        rearmed = self.d.spool.rearm(dest, study)
        for name, sender in self.d.senders.items():
            if dest in (None, name):
                sender.retry_now()
        if self.d.mpps is not None and dest is None:
            self.d.mpps.retry_now()
        self.d.record(
            "retry", os_user=caller_user(), study=study or "all", destination=dest or "all"
        )
        return {"rearmed": rearmed}

    def wait(self, args: dict[str, Any]) -> dict[str, Any]:
        timeout = _timeout(args, 600)
        deadline = time.monotonic() + timeout
        while True:
            doc = queue_document(self.d)
            open_items = [
                {
                    "study_instance_uid": s["study_instance_uid"],
                    "destination": d["name"],
                    "state": d["state"],
                }
                for s in doc["studies"]
                for d in s["destinations"]
                if d["state"] not in self._done_states(d["name"])
            ]
            failed = [i for i in open_items if i["state"] == "failed"]
            if failed:
                raise OpError("failed", f"{len(failed)} delivery(ies) failed", failed=failed)
            mpps = doc.get("mpps")
            if mpps is not None and self.d.alarms.is_active("mpps_refused"):
                raise OpError(
                    "failed", "the RIS refused MPPS message(s); see the alarms", mpps=mpps
                )
            if mpps is not None and mpps["pending"]:
                open_items.append({"mpps": mpps["pending"], "state": "pending"})
            if not open_items:
                return {"done": True}
            left = deadline - time.monotonic()
            if left <= 0 or self.d.stopping.is_set():
                raise OpError("timeout", f"not done after {timeout:g} s", open=open_items)
            with self.d.changed:
                self.d.changed.wait(min(left, 1.0))

    def _done_states(self, destination: str) -> tuple[str, ...]:
        """Where `wait` may stop: committed, for a destination that commits (SPEC §8)."""
        wants = self.d.commitment.destinations
        return ("committed",) if destination in wants else ("delivered", "committed")

    def echo(self, args: dict[str, Any]) -> dict[str, Any]:
        cfg = self.d.cfg
        peers = cfg.peers()
        names = _strings(args, "names") or list(peers)
        unknown = [n for n in names if n not in peers]
        if unknown:
            raise OpError(
                "not_found", f"no peer named {', '.join(unknown)}; known: {', '.join(peers)}"
            )
        out = []
        for name in names:
            r = echo(cfg.agent.ae_title, peers[name])
            out.append({"name": name, "ok": r.ok, "seconds": round(r.seconds, 3), "error": r.error})
        return {"peers": out}

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        c = self.d.acquisition.counts
        self.d.space.check()  # afresh: a statvfs, cheap; the alarm follows at once
        return {
            "exam": self._current_json(),
            "alarms": [a.to_json() for a in self.d.alarms.active()],
            "counts": {
                "slices_accepted": c.slices_accepted,
                "slices_held": c.slices_held,
                "bad_events": c.bad_events,
                "irradiation_events": c.irradiation_events,
            },
            "hardware": {
                "driver": self.d.cfg.hardware.driver,
                "counters": self.d.driver.counters(),  # what the link survived (SPEC §3)
            },
            "disk": {"free_mb": self.d.space.free_mb, "level": self.d.space.level.value},
        }

    # -- people ---------------------------------------------------------------------------

    def alarm_acknowledge(self, args: dict[str, Any]) -> dict[str, Any]:
        """The operator saw it: recorded; the alarm stays while its cause lasts."""
        kind = _string(args, "kind", 64, required=True)
        subject = _string(args, "subject", 128)
        operator = _string(args, "operator", 64)
        if self.d.alarms.acknowledge(kind, subject, operator or caller_user()) is None:
            raise OpError("not_found", f"no active alarm {kind} {subject}".rstrip())
        self.d.record(
            "alarm.acknowledge",
            operator=operator,
            os_user=caller_user(),
            alarm=kind,
            subject=subject,
        )
        return {"acknowledged": {"kind": kind, "subject": subject}}

    def operator_event(self, action: str) -> Op:
        def op(args: dict[str, Any]) -> dict[str, Any]:
            operator = _string(args, "operator", 64, required=True)
            self.d.record(action, operator=operator, os_user=caller_user())
            return {}

        return op

    def audit(self, args: dict[str, Any]) -> dict[str, Any]:
        last = _int(args, "last", 100, 1, 100000)
        records, damaged = self.d.audit.read()
        return {"records": records[-last:], "damaged_lines": damaged}


# -- argument checks and JSON shapes -----------------------------------------------------

_EXAM_START_ARGS = (
    "patient_id",
    "patient_name",
    "birth_date",
    "sex",
    "weight_kg",
    "size_m",
    "accession",
    "unscheduled",
    "operator",
    "destinations",
    "sps_id",
)
MAX_TIMEOUT_S = 86400.0


def _strict(op: Op, allowed: set[str]) -> Op:
    """Unknown arguments are refused: a misspelt `discontinue` must not complete an exam."""

    def checked(args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(args) - allowed)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], allowed, n=1)
            also = f" (did you mean {hint[0]}?)" if hint else ""
            raise OpError("bad_request", f"unknown argument {unknown[0]}{also}")
        return op(args)

    return checked


def _timeout(args: dict[str, Any], default: float) -> float:
    value = args.get("timeout", default)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 < value <= MAX_TIMEOUT_S:
        raise OpError(
            "bad_request", f"timeout: expected seconds above 0, at most {MAX_TIMEOUT_S:g}"
        )
    return float(value)


def _bool(args: dict[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise OpError("bad_request", f"{key}: expected true or false")
    return value


def _string(args: dict[str, Any], key: str, max_len: int, required: bool = False) -> str:
    value = args.get(key)
    if value is None:
        if required:
            raise OpError("bad_request", f"{key}: required")
        return ""
    if (
        not isinstance(value, str)
        or len(value) > max_len
        or "\\" in value  # DICOM's value separator: one value, never several
        or any(ord(c) < 32 for c in value)
    ):
        raise OpError(
            "bad_request", f"{key}: expected text of at most {max_len} characters, no backslash"
        )
    return value.strip()


def _strings(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OpError("bad_request", f"{key}: expected a list of names")
    return value


def _int(args: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise OpError("bad_request", f"{key}: expected an integer from {low} to {high}")
    return value


def _patient_and_procedure(args: dict[str, Any]) -> tuple[Patient, Procedure]:
    unscheduled = _bool(args, "unscheduled")
    unidentified = False
    pid = _string(args, "patient_id", 64)
    name = _string(args, "patient_name", 64 * 5)
    if not pid and not name:
        if not unscheduled:
            raise OpError(
                "bad_request", "give patient_id and patient_name, or unscheduled for an emergency"
            )
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        pid, name = f"EMERG-{stamp}-{secrets.token_hex(2).upper()}", f"EMERGENCY^{stamp}"
        unidentified = True
    elif not (pid and name):
        raise OpError("bad_request", "patient_id and patient_name go together")
    birth = _string(args, "birth_date", 8)
    if birth and not re.fullmatch(r"\d{8}", birth):
        raise OpError("bad_request", "birth_date: expected YYYYMMDD")
    try:
        birth_date = date(int(birth[:4]), int(birth[4:6]), int(birth[6:])) if birth else None
    except ValueError:
        raise OpError("bad_request", f"birth_date: {birth} is not a date") from None
    sex = _string(args, "sex", 1).upper()
    if sex not in _SEX:
        raise OpError("bad_request", "sex: expected M, F or O")
    accession = _string(args, "accession", 16)
    _check_vrs(PatientName=name, PatientID=pid, AccessionNumber=accession)
    weight, size = (_measure(args, key) for key in _MEASURES)
    return (
        Patient(name=name, id=pid, birth_date=birth_date, sex=sex, weight_kg=weight, size_m=size),
        Procedure(accession_number=accession, unscheduled=True, unidentified=unidentified),
    )


# Patient's Weight (kg) and Size (m) given by hand: the upper bounds catch a size in cm
_MEASURES = {"weight_kg": (650, "kilograms"), "size_m": (3, "metres (e.g. 1.75)")}


def _measure(args: dict[str, Any], key: str) -> str:
    """A Patient's Weight or Size as a Decimal String; "" when not given."""
    value = args.get(key)
    if value is None:
        return ""
    high, unit = _MEASURES[key]
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= high:
        raise OpError("bad_request", f"{key}: expected {unit}, above 0 and at most {high}")
    return f"{value:.6g}"


def _check_vrs(**values: str) -> None:
    """The DICOM rules for these values, checked now rather than failing at every slice."""
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    try:
        files.validate(ds)
    except files.InvalidDataset as e:
        raise OpError("bad_request", str(e)) from None


def exam_json(entry: ExamEntry) -> dict[str, Any]:
    e: Exam = entry.exam
    return {
        "token": e.token,
        "study_instance_uid": e.study_instance_uid,
        "accession_number": e.procedure.accession_number,
        "patient_id": e.patient.id,
        "patient_name": e.patient.name,
        "unscheduled": e.procedure.unscheduled,
        "unidentified": e.procedure.unidentified,
        "scheduled_procedure_step_id": e.procedure.scheduled_procedure_step_id,
        "requested_procedure_description": e.procedure.requested_procedure_description,
        "operator": e.operator,
        "destinations": list(e.destinations),
        "started": utc_iso(e.started),
        "state": entry.state,
        "ended": utc_iso(entry.ended) if entry.ended else None,
        "discontinue_reason": entry.discontinue_reason,
    }


def _item_line(item: WorklistItem) -> str:
    when = item.scheduled_date.isoformat() if item.scheduled_date else "no date"
    return (
        f"accession {item.accession_number or '-'} SPS {item.scheduled_procedure_step_id or '-'}"
        f" ({when} {item.scheduled_time}, {item.modality}, "
        f"{item.scheduled_procedure_step_description or item.requested_procedure_description})"
    )


def _source(stale: bool, fetched_at: datetime | None, error: str | None) -> str:
    if not stale:
        return "the RIS answered now"
    if fetched_at is None:
        return f"the RIS did not answer ({error}) and no list was kept"
    return f"the RIS did not answer ({error}); searched the list kept from {utc_iso(fetched_at)}"
