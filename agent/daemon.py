"""`modality-agent run`: components started in dependency order, stopped in reverse.

spool -> exam book -> holding -> senders -> hardware + acquisition -> worklist -> control
socket; then
systemd is told READY and the watchdog is fed while every component thread is alive.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import signal
import threading
from collections.abc import Callable, Iterable
from functools import partial
from types import FrameType
from typing import Any

from agent import sdnotify
from agent.acquisition import Acquisition, Routing
from agent.alarms import Alarms
from agent.assignment import resume_assignments
from agent.audit import AuditTrail
from agent.commitment.service import CommitmentService
from agent.config import Config
from agent.control.server import ControlServer
from agent.delivery import DestinationSender
from agent.dicom.assembler import Assembler
from agent.dicom.uids import UidFactory
from agent.disk_space import Level, SpaceLimits, SpoolSpace
from agent.events import EventBus
from agent.exam import Exam
from agent.exam_book import ExamBook
from agent.holding import Holding
from agent.mpps.service import MppsService
from agent.net.outcome import Outcome
from agent.net.scp import AgentScp, ScpSettings
from agent.net.sender import SendResult
from agent.operations import Operations
from agent.retention import Purged, Retention, RetentionPolicy
from agent.spool import DeliveryState, Spool, SpooledInstance
from agent.spool.model import StudySummary
from agent.spool_rebuild import adopt_orphans
from agent.worklist.service import ALARM as WORKLIST_ALARM
from agent.worklist.service import Worklist
from hardware import open_driver
from hardware.base import Driver, DriverError

log = logging.getLogger(__name__)
SPACE_CHECK_S = 30.0  # free space on the spool's disk is looked at this often


class Daemon:
    def __init__(self, cfg: Config, driver: Driver | None = None) -> None:
        self.cfg = cfg
        self.bus = EventBus()
        self.alarms = Alarms(self.notify)
        self.changed = threading.Condition()  # notified on every acceptance and delivery
        self.stopping = threading.Event()
        self._driver = driver
        self._threads: list[threading.Thread] = []
        self._first_connect = threading.Event()  # the hardware was tried once
        self._undo: list[Callable[[], None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.cfg
        cfg.agent.spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(cfg.agent.spool_dir)
        self._undo.append(self.spool.close)
        self.book = ExamBook(cfg.agent.spool_dir / "exams.json")
        if self.spool.rebuilt is not None:
            adopted, left = adopt_orphans(self.spool, self.book, cfg)
            self.alarms.raise_(
                "spool_rebuilt",
                f"the spool's index was damaged: set aside in {self.spool.rebuilt}, rebuilt "
                f"from the files ({adopted} accepted again and sent again, {left} unreadable "
                "left in orphans)",
            )
        self._check_spool()
        self.audit = AuditTrail(cfg.agent.spool_dir / "audit.log")
        self._record_start()
        self._undo.append(self._audit_stop)
        limits = SpaceLimits(cfg.agent.spool_warn_free_mb, cfg.agent.spool_refuse_free_mb)
        self.space = SpoolSpace(cfg.agent.spool_dir, limits, self.alarms)
        self.space.check()
        self.uids = UidFactory(cfg.agent.uid_root)
        self.holding = Holding(cfg.agent.spool_dir / "unassigned", self.uids)
        for held in self.holding.series():
            self.alarms.raise_("unassigned_series", held.alarm_message, held.series_instance_uid)
        self.senders = {
            d.name: DestinationSender(
                cfg.agent.ae_title,
                d,
                self.spool,
                on_delivery=partial(self._delivered, destination=d.name),
            )
            for d in cfg.destinations
        }
        # an exam that ended just before a crash: its deferred deliveries are due now
        current = self.book.current
        self.spool.release_deferred_except(current.token if current else None)
        for name, sender in self.senders.items():
            self._thread(f"send-{name}", partial(sender.run, self.stopping), sender.wake)
        # opened by the acquisition thread, which reconnects: images already spooled are
        # delivered and the socket answers even while the scanner link is down
        self.driver = self._driver or open_driver(cfg.hardware.driver, cfg.hardware.options)
        self._undo.append(self.driver.close)
        self.acquisition = Acquisition(
            self.driver,
            Assembler(cfg.equipment, self.uids),
            self.spool,
            self._exam_for_token,
            route=self.route,
            holding=self.holding,
            on_accepted=self._accepted,
            notify=self.notify,
            alarms=self.alarms,
        )
        resume_assignments(self)  # an assign cut short by a crash finishes to its target
        self._thread("acquisition", self._acquire, lambda: None)
        self._first_connect.wait(10)
        self.worklist: Worklist | None = None
        if cfg.worklist is not None:  # the last good list first, then a refresh in the thread
            self.worklist = Worklist(
                cfg.agent.ae_title,
                cfg.worklist,
                cfg.agent.spool_dir / "worklist.json",
                on_answer=self._worklist_answered,
            )
            self._thread("worklist", partial(self.worklist.run, self.stopping), self.worklist.wake)
        self._start_commitment()
        policy = RetentionPolicy(
            cfg.agent.retention_days,
            cfg.agent.spool_budget_mb,
            frozenset(self.commitment.destinations),
        )
        self.retention = Retention(self.spool, policy, self._in_open_exam, self._purged)
        self._thread("retention", partial(self.retention.run, self.stopping), self.retention.wake)
        self._thread("disk", self._watch_space, lambda: None)
        self.mpps: MppsService | None = None
        if cfg.mpps is not None:
            self.mpps = MppsService(cfg, cfg.mpps, self.spool, self.alarms, self._changed)
            self._thread("mpps", partial(self.mpps.run, self.stopping), self.mpps.wake)
        self.ops = Operations(self)
        self.control = ControlServer(
            cfg.agent.control_socket, self.ops.table(), self.bus, hello_info=self.ops.hello
        )
        self.control.start()
        self._undo.append(self.control.stop)
        sdnotify.ready(f"ready; {len(self.senders)} destination(s)")
        log.info(
            "modality-agent ready (AE %s, %s hardware)", cfg.agent.ae_title, cfg.hardware.driver
        )

    def _start_commitment(self) -> None:
        """Storage commitment requests for the destinations that want them, and our SCP
        (listen_port), where reports on a new association and C-ECHOs arrive."""
        cfg = self.cfg
        self.commitment = CommitmentService(
            cfg, self.spool, self.uids, self.alarms, self._changed, self._resend
        )
        if self.commitment.destinations:
            self._thread(
                "commitment", partial(self.commitment.run, self.stopping), self.commitment.wake
            )
        if cfg.agent.listen_port is None:
            return
        settings = ScpSettings(
            cfg.agent.ae_title,
            cfg.agent.listen_port,
            self.commitment.allowed_peers(),
            host=cfg.agent.listen_host,
            tls=cfg.agent.tls,
            max_associations=cfg.agent.scp_max_associations,
        )
        self.scp = AgentScp(settings, self.commitment.book).start()
        self._undo.append(self.scp.stop)

    def _resend(self, destination: str) -> None:
        sender = self.senders.get(destination)
        if sender is not None:
            sender.retry_now()

    def _check_spool(self) -> None:
        """What recovery found is shown, and a damaged instance fails instead of waiting."""
        for problem in self.spool.problems:
            self.alarms.raise_("spool_problem", problem.message, problem.sop_instance_uid)
            if problem.kind == "orphan":
                continue
            for d in self.spool.deliveries(problem.sop_instance_uid):
                if d.state in (DeliveryState.PENDING, DeliveryState.DEFERRED):
                    self.spool.mark_failed(
                        [problem.sop_instance_uid], d.destination, problem.message
                    )
        configured = {d.name for d in self.cfg.destinations}
        for study in self.spool.summary():
            for dest in study.destinations:
                if dest.name not in configured and dest.pending:
                    self.alarms.raise_(
                        "unknown_destination",
                        f"{dest.pending} image(s) wait for destination {dest.name}, which is no "
                        "longer configured",
                        dest.name,
                    )

    def _thread(self, name: str, target: Callable[[], None], wake: Callable[[], None]) -> None:
        """A component thread; stopping sets `stopping`, wakes it and joins it."""
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

        def join() -> None:
            self.stopping.set()
            wake()
            t.join(timeout=30)

        self._undo.append(join)

    def stop(self) -> None:
        sdnotify.stopping()
        self.stopping.set()
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception:
                log.exception("while stopping")

    def run_forever(self) -> None:
        """Block until SIGTERM or SIGINT, feeding the systemd watchdog while healthy."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        interval = sdnotify.watchdog_interval()  # None: no watchdog asked for
        while not self.stopping.wait(interval or 5.0):
            if interval is None:
                continue
            dead = [t.name for t in self._threads if not t.is_alive()]
            if dead:
                log.error("component thread(s) died: %s; not feeding the watchdog", dead)
                continue
            sdnotify.watchdog()

    # -- wiring ---------------------------------------------------------------------------

    def notify(self, event: str, data: dict[str, Any]) -> None:
        self.bus.publish(event, data)
        with self.changed:
            self.changed.notify_all()

    def route(self, exam: Exam) -> Routing:
        """Where an image of `exam` goes: destinations that send while scanning at once, the
        others when the exam ends (late reconstructions of an ended exam: everywhere now)."""
        entry = self.book.entry(exam.token)
        ended = entry is not None and not entry.is_open
        now: list[str] = []
        later: list[str] = []
        for name in exam.destinations:
            try:
                dest = self.cfg.destination(name)
            except KeyError:
                self.alarms.raise_(
                    "unknown_destination", f"destination {name} is not configured", name
                )
                continue
            if dest.dose_registry:
                continue  # dose reports only: `dose.hook` adds it to theirs
            (now if ended or dest.send_while_scanning else later).append(name)
        return Routing(tuple(now), tuple(later))

    def _worklist_answered(self, error: str | None) -> None:
        if error is None:
            self.alarms.clear(WORKLIST_ALARM)
        else:
            self.alarms.raise_(WORKLIST_ALARM, f"worklist: {error}; the last good list is shown")

    def _exam_for_token(self, token: str) -> Exam | None:
        entry = self.book.entry(token)
        return entry.exam if entry else None

    def _acquire(self) -> None:
        """The acquisition thread: (re)connect the hardware, then handle its events. Errors
        back off exponentially: a broken link or a bug never spins or floods the journal."""
        failures = 0
        connected = False
        while not self.stopping.is_set():
            try:
                if not connected:
                    self.driver.open()
                    current = self.book.current
                    self.driver.set_exam_token(current.token if current else None)
                    connected = True
                    self.alarms.clear("hardware_disconnected")
                    self._first_connect.set()
                self.acquisition.poll(0.2)
                failures = 0
            except DriverError as e:
                failures += 1
                connected = False
                self.alarms.raise_("hardware_disconnected", f"acquisition hardware: {e}")
                self._first_connect.set()
                log.error("hardware: %s; reconnecting", e)
                with contextlib.suppress(Exception):
                    self.driver.close()
            except Exception as e:  # a bad event never stops acquisition
                failures += 1
                # the message may quote a patient's data: its text goes to DEBUG only
                log.error("acquisition failed: %s (details at debug level)", type(e).__name__)
                log.debug("acquisition", exc_info=True)
                self.alarms.raise_("acquisition_error", f"acquisition failed: {type(e).__name__}")
            if failures:
                self.stopping.wait(min(30.0, 0.1 * 2 ** min(failures, 10)))

    def wake(self, destinations: Iterable[str]) -> None:
        """Work is due for these destinations: cut their senders' idle wait short."""
        for name in destinations:
            sender = self.senders.get(name)
            if sender is not None:
                sender.wake()

    def _accepted(self, item: SpooledInstance, exam: Exam) -> None:
        self.wake(self.route(exam).now)
        if self.mpps is not None:
            self.mpps.image_accepted(exam, item.record.series_instance_uid)

    def _record_start(self) -> None:
        """agent.start, with the config file's digest; a digest other than the last start's
        is a config change, recorded as such (who changed it the file system knows)."""
        try:
            digest = hashlib.sha256(self.cfg.source.read_bytes()).hexdigest()
        except OSError:
            digest = ""
        records, _ = self.audit.read()
        starts = [r for r in records if r["action"] == "agent.start"]
        before = starts[-1]["objects"].get("config_sha256") if starts else None
        if before is not None and before != digest:
            self.record(
                "config.change",
                os_user=_os_user(),
                config=str(self.cfg.source),
                before=before,
                after=digest,
            )
        self.record("agent.start", os_user=_os_user(), config_sha256=digest)

    def _audit_stop(self) -> None:
        self.record("agent.stop", os_user=_os_user())

    def record(self, action: str, **details: Any) -> None:
        """An audit record. One that cannot be written (a full disk) never stops the action
        it records (an exam must not wait for its audit line): an alarm says it is missing."""
        try:
            self.audit.record(action, **details)
        except OSError as e:
            log.error("audit record %s not written: %s", action, e.strerror)
            self.alarms.raise_("audit_failed", f"the audit trail cannot be written: {e.strerror}")
        else:
            self.alarms.clear("audit_failed")

    def _watch_space(self) -> None:
        while not self.stopping.wait(SPACE_CHECK_S):
            if self.space.check() is not Level.OK:
                self.retention.wake()  # delivered studies may make room

    def _in_open_exam(self, study: StudySummary) -> bool:
        current = self.book.current
        return current is not None and current.token in study.exam_tokens

    def _purged(self, purged: Purged) -> None:
        self.record(
            "purge",
            outcome=f"{purged.instances} instance(s), {purged.why}",
            study=purged.study_instance_uid,
        )
        self.notify(
            "delivery.purged",
            {"study_instance_uid": purged.study_instance_uid, "instances": purged.instances},
        )

    def _changed(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _nothing_failed(self, destination: str) -> bool:
        """Checked only while the alarm is up: the spool query is not on every delivery."""
        if not self.alarms.is_active("delivery_failed", destination):
            return False
        return self.spool.count(destination, DeliveryState.FAILED) == 0

    def _delivered(self, result: SendResult, destination: str) -> None:
        if result.verdict.outcome is Outcome.FAIL:
            self.alarms.raise_(
                "delivery_failed", f"{destination}: {result.verdict.reason}", destination
            )
        elif result.verdict.outcome is Outcome.OK and self._nothing_failed(destination):
            self.alarms.clear("delivery_failed", destination)
        self.notify(
            "delivery.progress",
            {
                "destination": destination,
                "sop_instance_uid": result.sop_instance_uid,
                "outcome": result.verdict.outcome.value,
                "reason": result.verdict.reason,
                "transfer_syntax": result.transfer_syntax_uid,
            },
        )


def _os_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"
