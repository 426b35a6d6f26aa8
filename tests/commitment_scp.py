"""A Storage Commitment SCP for the tests, written with pynetdicom.

It exists because no real peer can be told to misbehave: Orthanc (tests/test_commitment.py)
commits what it holds and reports on a new association, correctly. This one can report some
instances failed, report on the same association, report a wrong Transaction UID, report
under an AE title nobody configured, or never report. It records each N-ACTION and the status
the agent answered to each of its N-EVENT-REPORTs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association

from agent.dicom.uids import UidFactory
from agent.net.commitment import PUSH_MODEL, PUSH_MODEL_INSTANCE
from tests.loopback_scp import LoopbackScp


@dataclass
class Behaviour:
    """How the SCP reports."""

    report_to: tuple[str, int, str] | None = None  # (host, port, AE title) of the agent's SCP
    same_association: bool = False  # report before the requestor releases, not on a new one
    failed: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> Failure Reason
    wrong_transaction: bool = False
    reporter_ae: str = "ARCHIVE"  # calling AE title of the reporting association
    never: bool = False
    fail_once: bool = False  # each instance in `failed` fails in the first report only
    fail_first: int = 0  # so many instances of the first request fail (0x0110), once


class CommitmentScp(LoopbackScp):
    """`with CommitmentScp(Behaviour(...)) as scp:` listens on `scp.port` as ARCHIVE."""

    def __init__(self, behaviour: Behaviour, ae_title: str = "ARCHIVE") -> None:
        super().__init__()
        self._failed_first = False
        self.behaviour = behaviour
        self.ae_title = ae_title
        self.actions: list[Dataset] = []  # every N-ACTION's Action Information
        self.answers: list[int | None] = []  # the agent's status per report; None: no answer
        self._done = threading.Condition()
        self._threads: list[threading.Thread] = []

    def wait_answers(self, count: int, timeout: float) -> bool:
        with self._done:
            return self._done.wait_for(lambda: len(self.answers) >= count, timeout)

    def contexts(self) -> list[tuple[str, list[str] | None]]:
        return [(PUSH_MODEL, None)]

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_N_ACTION, self._on_action)]

    def stop(self) -> None:
        for t in self._threads:  # reports still being sent
            t.join(30)
        super().stop()

    def _on_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = event.action_information
        with self._done:
            self.actions.append(info)
        b = self.behaviour
        if b.never:
            return 0x0000, None
        report = self._report(info)
        if b.same_association:
            # after our N-ACTION response has gone: wait for it to be sent
            sent = threading.Event()

            def on_sent(e: evt.Event) -> None:
                if type(e.message).__name__ == "N_ACTION_RSP":
                    sent.set()

            event.assoc.bind(evt.EVT_DIMSE_SENT, on_sent)
            t = threading.Thread(
                target=self._report_here, args=(event.assoc, sent, report), daemon=True
            )
        else:
            t = threading.Thread(target=self._report_anew, args=(report,), daemon=True)
        self._threads.append(t)
        t.start()
        return 0x0000, None

    def _report(self, info: Dataset) -> tuple[int, Dataset]:
        b = self.behaviour
        ds = Dataset()
        ds.TransactionUID = UidFactory().new() if b.wrong_transaction else info.TransactionUID
        ok, failed = [], []
        if b.fail_first and not self._failed_first:
            self._failed_first = True
            for ref in list(info.ReferencedSOPSequence)[: b.fail_first]:
                b.failed[str(ref.ReferencedSOPInstanceUID)] = 0x0110
                b.fail_once = True
        for ref in info.ReferencedSOPSequence:
            item = Dataset()
            item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
            item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
            uid = str(ref.ReferencedSOPInstanceUID)
            reason = b.failed.pop(uid, None) if b.fail_once else b.failed.get(uid)
            if reason is None:
                ok.append(item)
            else:
                item.FailureReason = reason
                failed.append(item)
        if ok:
            ds.ReferencedSOPSequence = ok
        if failed:
            ds.FailedSOPSequence = failed
        return (2 if failed else 1), ds

    def _answered(self, status: Dataset) -> None:
        with self._done:
            self.answers.append(int(status.Status) if "Status" in status else None)
            self._done.notify_all()

    def _report_here(
        self, assoc: Association, sent: threading.Event, report: tuple[int, Dataset]
    ) -> None:
        sent.wait(10)
        event_type, ds = report
        status, _reply = assoc.send_n_event_report(ds, event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE)
        self._answered(status)

    def _report_anew(self, report: tuple[int, Dataset]) -> None:
        b = self.behaviour
        assert b.report_to is not None, "where to report: Behaviour.report_to"
        host, port, called = b.report_to
        ae = AE(ae_title=b.reporter_ae)
        ae.add_requested_context(PUSH_MODEL)
        role = build_role(PUSH_MODEL, scu_role=False, scp_role=True)
        assoc = ae.associate(host, port, ae_title=called, ext_neg=[role])
        if not assoc.is_established:
            with self._done:
                self.answers.append(None)
                self._done.notify_all()
            return
        try:
            event_type, ds = report
            status, _reply = assoc.send_n_event_report(
                ds, event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE
            )
            self._answered(status)
        finally:
            if assoc.is_established:
                assoc.release()
