"""At exam end (completed or discontinued): the exam's CT Radiation Dose SR, made from the
irradiation records, checked, spooled and routed to the exam's destinations like its images.

- Which records: those acquired under the exam's token, and those whose Irradiation Event
  UID an image of the exam names in (0008,3010) (a series assigned from another token keeps
  its record under that token).
- No record, no report: TID 10011 needs at least one irradiation event (an exam ended before
  any acquisition exposed nobody).
- Once per exam: an exam end that is repeated (its MPPS could not be queued, say) finds the
  report already in the spool and uses it; re-sends send the same file, so every UID in it
  (Irradiation Event UIDs from the hardware, the device observer's) is stable.
- Only a failure to make it durable (OSError) is raised, for the exam end to be refused and
  retried; a report that cannot be built or fails the content check raises the alarm
  `dose_report_failed` and the exam still ends (its images must not wait for it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.uid import XRayRadiationDoseSRStorage

from agent.acquisition import Routing
from agent.config.model import Equipment
from agent.dicom import files
from agent.dicom.files import instance_record
from agent.dicom.uids import UidFactory
from agent.dose import check, document
from agent.exam import Exam
from agent.faults import describe
from agent.irradiation import IrradiationRecords
from agent.spool import Spool, SpooledInstance
from hardware.dose import IrradiationEvent

if TYPE_CHECKING:
    from agent.daemon import Daemon

log = logging.getLogger(__name__)
ALARM = "dose_report_failed"


class DoseReportInvalid(ValueError):
    """The report failed our own TID 10011 content check."""


@dataclass
class DoseReports:
    spool: Spool
    records: IrradiationRecords
    equipment: Equipment
    uids: UidFactory
    route: Callable[[Exam], Routing]
    wake: Callable[[Iterable[str]], None]
    clock: Callable[[], datetime] = lambda: datetime.now().astimezone()
    when_simulated: bool = False  # a report for simulated acquisitions too (integrators)
    registries: tuple[str, ...] = ()  # dose registries: every report not simulated, at once

    def exam_ended(self, exam: Exam) -> SpooledInstance | None:
        """The exam's report, spooled and routed (the one already spooled, if any); None
        when the exam has no irradiation record. Raises OSError (not durable),
        `DoseReportInvalid`, or what building it met."""
        mine = [
            i
            for i in self.spool.instances(exam.study_instance_uid)
            if i.record.exam_token == exam.token
        ]
        for inst in mine:
            if inst.record.sop_class_uid == XRayRadiationDoseSRStorage:
                return inst
        evidence, referenced = self._evidence(mine)
        if evidence.simulated and not self.when_simulated:
            # nobody was irradiated: no made-up dose unless an integrator asks for it
            log.info("exam %s: simulated acquisition, no dose report", exam.token)
            return None
        events = self._events(exam.token, referenced)
        if not events:
            log.info("exam %s: no irradiation record, no dose report", exam.token)
            return None
        ds = document.report(
            exam,
            events,
            self.equipment,
            sop_instance_uid=self.uids.new(),
            series_instance_uid=self.uids.new(),
            created=self.clock(),
            evidence=evidence,
        )
        found = check.problems(ds)
        if found:
            raise DoseReportInvalid("; ".join(found))
        data = files.encode(ds)
        routing = self.route(exam)
        # made-up dose never reaches a registry: a simulated report goes to the archives only
        registries = () if evidence.simulated else self.registries
        now = (*routing.now, *(r for r in registries if r not in routing.now))
        spooled = self.spool.accept(instance_record(ds, exam.token), data, now, routing.deferred)
        self.wake(now)
        log.info("exam %s: dose report of %d irradiation event(s) queued", exam.token, len(events))
        return spooled

    def _evidence(self, mine: list[SpooledInstance]) -> tuple[document.Evidence, set[str]]:
        """The exam's images by series, their acquisitions' protocols, and the Irradiation
        Event UIDs they name (one image read per series)."""
        by_series: dict[str, list[SpooledInstance]] = {}
        for inst in sorted(mine, key=lambda i: i.seq):
            by_series.setdefault(inst.record.series_instance_uid, []).append(inst)
        protocols: dict[str, str] = {}
        simulated = False
        for instances in by_series.values():
            try:
                ds = dcmread(
                    self.spool.path(instances[0]),
                    stop_before_pixels=True,
                    specific_tags=["IrradiationEventUID", "ProtocolName", "SeriesDescription"],
                )
            except Exception as e:  # a damaged file: its series is still listed as evidence
                log.error("dose report: an image of the exam is unreadable: %s", describe(e))
                continue
            simulated |= str(ds.get("SeriesDescription", "")).startswith("SIMULATED")
            value = ds.get("IrradiationEventUID")
            uids = [str(v) for v in value] if isinstance(value, list) else [str(value or "")]
            for uid in filter(None, (u.strip() for u in uids)):
                protocols.setdefault(uid, str(ds.get("ProtocolName", "")))
        series = tuple(
            (
                uid,
                tuple(
                    (i.record.sop_class_uid, i.sop_instance_uid)
                    for i in sorted(instances, key=lambda i: i.record.instance_number)
                ),
            )
            for uid, instances in by_series.items()
        )
        return document.Evidence(series, protocols, simulated), set(protocols)

    def _events(self, token: str, referenced: set[str]) -> list[IrradiationEvent]:
        events = {e.event_uid: e for e in self.records.for_token(token)}
        missing = referenced - set(events)
        if missing:  # acquired under another token, then assigned here
            events.update((e.event_uid, e) for e in self.records.by_uid(missing))
        return sorted(events.values(), key=lambda e: e.start_time)


def for_daemon(d: Daemon) -> DoseReports:
    return DoseReports(
        spool=d.spool,
        records=d.acquisition.irradiation,
        equipment=d.cfg.equipment,
        uids=d.uids,
        route=d.route,
        wake=d.wake,
        when_simulated=d.cfg.agent.dose_report_when_simulated,
        registries=d.cfg.dose_registries,
    )


def exam_ended(d: Daemon, exam: Exam) -> None:
    """The hook of `exam end`: raises only OSError (the report could not be made durable)."""
    try:
        for_daemon(d).exam_ended(exam)
    except OSError:
        raise
    except Exception as e:
        # the checker's findings quote no patient data; other texts might: kind only
        why = str(e) if isinstance(e, DoseReportInvalid) else describe(e)
        log.error("exam %s: no dose report: %s", exam.token, why)
        log.debug("dose report", exc_info=True)
        d.alarms.raise_(ALARM, f"the dose report of exam {exam.token} failed: {why}", exam.token)
