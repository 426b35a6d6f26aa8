"""MPPS in the daemon: when each exam's messages are made, and the thread that delivers them.

- The exam's first accepted image makes its N-CREATE (IN PROGRESS).
- `exam end` makes the final N-SET (COMPLETED, or DISCONTINUED with the reason), listing the
  series and images the spool holds for the exam; an exam ended before any image gets its
  N-CREATE first, then DISCONTINUED or COMPLETED with no series.
- Images acquired under an exam after its step was closed (a late reconstruction) are
  delivered but not reported: IHE SWF forbids updating a completed step, and this agent does
  not yet create the separate "append" step the profile describes for them; a warning in the
  log names the series.

What was made for each exam is recorded durably (`steps/<token>.created`, `.final`) so that a
restart neither repeats nor forgets a message. The messages wait in the outbox until the RIS
takes them (agent.mpps.outbox, agent.mpps.sender); the alarm `mpps_unreachable` shows while it
cannot be reached, `mpps_refused` when it refused messages for good.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread

from agent.alarms import Alarms
from agent.config import Config, Peer
from agent.exam import Exam
from agent.mpps import steps
from agent.mpps.outbox import N_CREATE, N_SET, MppsOutbox
from agent.mpps.sender import deliver
from agent.net.outcome import Outcome
from agent.net.retry import Backoff
from agent.spool import Spool
from agent.spool.files import create_durable, make_dirs

log = logging.getLogger(__name__)
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
IDLE_POLL_S = 60.0


class MppsService:
    def __init__(
        self,
        cfg: Config,
        peer: Peer,
        spool: Spool,
        alarms: Alarms,
        changed: Callable[[], None],
        backoff: Backoff | None = None,
    ) -> None:
        self.cfg = cfg
        self.peer = peer
        self.spool = spool
        self.alarms = alarms
        self.changed = changed  # tells `wait` and the queue that the outbox moved
        self.backoff = backoff or Backoff(2.0, 300.0)
        root = cfg.agent.spool_dir / "mpps"
        self.outbox = MppsOutbox(root)
        self.steps_dir = root / "steps"
        make_dirs(self.steps_dir)
        self._lock = threading.Lock()  # one exam's messages made at a time, in order
        self._late: set[str] = set()  # series already warned about
        self._wake = threading.Event()
        self._failures = 0
        self._retry_at = 0.0
        self.last_error: str | None = None

    # -- making the messages --------------------------------------------------------------

    def image_accepted(self, exam: Exam, series_instance_uid: str) -> None:
        """The exam has an image: IN PROGRESS, once. After the step was closed: a late
        image, not reported (see above), said once per series."""
        with self._lock:
            if not self._made(exam, "final"):
                self._create(exam)
                return
            if series_instance_uid not in self._late:
                self._late.add(series_instance_uid)
                log.warning(
                    "series %s came after its exam's MPPS was closed: not reported to the RIS",
                    series_instance_uid,
                )

    def exam_ended(self, exam: Exam, ended: datetime, discontinue_reason: str | None) -> None:
        """The exam ended: its final N-SET (after an N-CREATE, if none was made yet)."""
        with self._lock:
            if self._made(exam, "final"):
                return
            self._create(exam)
            series = self._performed_series(exam)
            ds = steps.final(exam, ended, series, discontinue_reason)
            self.outbox.put(N_SET, exam.performed_procedure_step_uid, ds)
            self._mark(exam, "final")
        self.wake()

    def closed(self, exam: Exam) -> bool:
        return self._made(exam, "final")

    def _create(self, exam: Exam) -> None:
        if self._made(exam, "created"):
            return
        ds = steps.in_progress(exam, self.cfg.agent.ae_title, self.cfg.equipment)
        self.outbox.put(N_CREATE, exam.performed_procedure_step_uid, ds)
        self._mark(exam, "created")
        self.wake()

    def _performed_series(self, exam: Exam) -> list[steps.PerformedSeries]:
        by_series: dict[str, list[Any]] = {}
        for inst in self.spool.instances(exam.study_instance_uid):
            if inst.record.exam_token in (None, exam.token):
                by_series.setdefault(inst.record.series_instance_uid, []).append(inst)
        out = []
        for uid, instances in by_series.items():
            instances.sort(key=lambda i: i.record.instance_number)
            description, protocol = self._series_names(instances[0])
            images = tuple((i.record.sop_class_uid, i.sop_instance_uid) for i in instances)
            out.append(steps.PerformedSeries(uid, description, protocol, images))
        return out

    def _series_names(self, instance: Any) -> tuple[str, str]:
        try:
            ds = dcmread(
                self.spool.path(instance),
                stop_before_pixels=True,
                specific_tags=["SeriesDescription", "ProtocolName"],
            )
        except Exception as e:  # a damaged file: the series is still reported, unnamed
            log.error("MPPS: cannot read the series names of an image: %s", type(e).__name__)
            return "", ""
        return str(ds.get("SeriesDescription", "")), str(ds.get("ProtocolName", ""))

    def _made(self, exam: Exam, what: str) -> bool:
        return self._marker(exam, what).exists()

    def _mark(self, exam: Exam, what: str) -> None:
        create_durable(self._marker(exam, what), b"")

    def _marker(self, exam: Exam, what: str) -> Path:
        if not _TOKEN.match(exam.token):
            raise ValueError(f"exam token {exam.token!r} is not a safe file name")
        return self.steps_dir / f"{exam.token}.{what}"

    # -- delivering them ------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def retry_now(self) -> None:
        self._retry_at = 0.0
        self.alarms.clear("mpps_refused")
        self._wake.set()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            wait = self._retry_at - time.monotonic()
            if wait <= 0:
                try:
                    self._round()
                except Exception as e:  # a bug must not end MPPS for good
                    log.exception("MPPS delivery round")
                    self._failed(f"internal error: {type(e).__name__}")
                wait = self._retry_at - time.monotonic() if self._failures else IDLE_POLL_S
            self._wake.wait(max(0.0, wait))
            self._wake.clear()

    def _round(self) -> None:
        result = deliver(self.outbox, self.cfg.agent.ae_title, self.peer)
        if result.set_aside:
            text = "; ".join(result.set_aside)
            log.error("MPPS: the RIS refused %d message(s): %s", len(result.set_aside), text)
            self.alarms.raise_("mpps_refused", f"the RIS refused MPPS message(s): {text}")
        if result.stopped is not None and result.stopped.outcome is not Outcome.OK:
            self._failed(result.stopped.reason)
        else:
            if self._failures:
                log.info("MPPS: the RIS takes messages again")
            self._failures, self._retry_at, self.last_error = 0, 0.0, None
            self.alarms.clear("mpps_unreachable")
        if result.taken or result.set_aside:
            self.changed()

    def _failed(self, reason: str) -> None:
        self._failures += 1
        self.last_error = reason
        delay = self.backoff.delay(self._failures)
        self._retry_at = time.monotonic() + delay
        log.warning("MPPS: %s; retry in %.0f s", reason, delay)
        self.alarms.raise_(
            "mpps_unreachable",
            f"MPPS messages wait for the RIS ({self.outbox.count()} queued): {reason}",
        )

    def status(self) -> dict[str, Any]:
        """For the queue document and `wait`."""
        return {
            "pending": self.outbox.count(),
            "set_aside": self.outbox.failed(),
            "last_error": self.last_error,
        }
