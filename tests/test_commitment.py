"""Storage Commitment SCU: against Orthanc (a real archive: stores, commits what it holds,
reports on a new association to our SCP), and against tests/commitment_scp.py for what no real
peer does on request: some instances failed, the report on the same association, a wrong
Transaction UID, a report from an AE title nobody configured, no report at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from agent.config import Destination, Peer
from agent.dicom.uids import UidFactory
from agent.net.commitment import (
    STATUS_INVALID_ARGUMENT,
    STATUS_SUCCESS,
    CommitmentReport,
    CommitmentRequest,
    CommitmentResult,
    FailedInstance,
    InstanceRef,
    ReportBook,
    ReportError,
    State,
    commit,
    match,
    new_request,
    parse_report,
    request_commitment,
)
from agent.net.outcome import Outcome, Verdict
from agent.net.scp import AgentScp, AllowedPeer, ScpSettings
from agent.net.sender import send_batch
from tests import factory
from tests.commitment_scp import Behaviour, CommitmentScp
from tests.orthanc import orthanc as run_orthanc
from tests.peers import CT_IMAGE_STORAGE, free_port
from tests.test_tls import outgoing

US = "CT_TEST"
UIDS = UidFactory()
NO_SUCH_OBJECT = 0x0112


def refs(count: int) -> list[InstanceRef]:
    return [InstanceRef(CT_IMAGE_STORAGE, UIDS.new()) for _ in range(count)]


def peer(port: int, ae_title: str = "ARCHIVE") -> Peer:
    return Peer(ae_title, "127.0.0.1", port, None, 5, 10, 5)


def request(
    instances: list[InstanceRef], ae_title: str = "ARCHIVE", timeout_s: float = 30
) -> CommitmentRequest:
    return new_request("PACS", ae_title, instances, UIDS, timeout_s)


@pytest.fixture
def book() -> ReportBook:
    return ReportBook()


@pytest.fixture
def our_scp(book: ReportBook) -> Iterator[AgentScp]:
    """The agent's SCP, taking reports from ARCHIVE and ORTHANC; RIS may only echo."""
    peers = (AllowedPeer("ARCHIVE"), AllowedPeer("ORTHANC"), AllowedPeer("RIS"))
    with AgentScp(ScpSettings(US, 0, peers, host="127.0.0.1"), book) as scp:
        yield scp


def settled(outcome: CommitmentResult | Verdict) -> CommitmentResult:
    assert isinstance(outcome, CommitmentResult), outcome
    return outcome


# --- against the fake SCP -------------------------------------------------------------------


def test_all_committed_reported_on_a_new_association(book: ReportBook, our_scp: AgentScp) -> None:
    instances = refs(3)
    behaviour = Behaviour(report_to=("127.0.0.1", our_scp.port, US))
    with CommitmentScp(behaviour) as archive:
        result = settled(commit(US, peer(archive.port), request(instances), book))
        (action,) = archive.actions
    assert result.state is State.COMMITTED and result.verdict.outcome is Outcome.OK
    assert result.committed == tuple(instances) and result.failed == ()
    assert result.report is not None and not result.report.same_association
    assert result.report.reporter == "ARCHIVE"
    # the N-ACTION: the request's Transaction UID and every instance, in order
    assert action.TransactionUID == result.request.transaction_uid
    assert [r.ReferencedSOPInstanceUID for r in action.ReferencedSOPSequence] == [
        i.sop_instance_uid for i in instances
    ]
    assert archive.answers == [STATUS_SUCCESS]
    assert book.pending() == []


def test_some_instances_reported_failed_with_reasons(book: ReportBook, our_scp: AgentScp) -> None:
    instances = refs(4)
    failed = {instances[1].sop_instance_uid: NO_SUCH_OBJECT, instances[3].sop_instance_uid: 0x0110}
    behaviour = Behaviour(report_to=("127.0.0.1", our_scp.port, US), failed=failed)
    with CommitmentScp(behaviour) as archive:
        result = settled(commit(US, peer(archive.port), request(instances), book))
    assert result.state is State.FAILED and result.verdict.outcome is Outcome.FAIL
    assert result.committed == (instances[0], instances[2])
    assert result.failed == (
        FailedInstance(instances[1], NO_SUCH_OBJECT),
        FailedInstance(instances[3], 0x0110),
    )
    assert "2 of 4 not committed" in result.verdict.reason
    assert "no such object instance (0x0112)" in result.verdict.reason


def test_a_report_on_the_same_association(book: ReportBook) -> None:
    """No SCP of ours at all: the report can only come on the N-ACTION's association."""
    instances = refs(2)
    with CommitmentScp(Behaviour(same_association=True)) as archive:
        result = settled(commit(US, peer(archive.port), request(instances), book, linger_s=10))
        assert archive.wait_answers(1, 10)
    assert result.state is State.COMMITTED
    assert result.report is not None and result.report.same_association
    assert archive.answers == [STATUS_SUCCESS]


def test_a_wrong_transaction_uid_is_refused_and_the_request_times_out(
    book: ReportBook, our_scp: AgentScp
) -> None:
    behaviour = Behaviour(report_to=("127.0.0.1", our_scp.port, US), wrong_transaction=True)
    req = request(refs(2))
    with CommitmentScp(behaviour) as archive:
        verdict = request_commitment(US, peer(archive.port), req, book)
        assert verdict.outcome is Outcome.OK
        assert archive.wait_answers(1, 10)
    assert archive.answers == [STATUS_INVALID_ARGUMENT]
    assert book.pending() == [req]  # still awaited, until its deadline
    (timed_out,) = book.expire(now=req.deadline)
    assert timed_out.state is State.TIMED_OUT and timed_out.verdict.outcome is Outcome.RETRY


def test_a_report_from_an_unknown_ae_title_is_rejected(book: ReportBook, our_scp: AgentScp) -> None:
    behaviour = Behaviour(report_to=("127.0.0.1", our_scp.port, US), reporter_ae="STRANGER")
    req = request(refs(2))
    with CommitmentScp(behaviour) as archive:
        assert request_commitment(US, peer(archive.port), req, book).outcome is Outcome.OK
        assert archive.wait_answers(1, 10)
    assert archive.answers == [None]  # the association was rejected
    assert our_scp.rejected == 1
    assert book.pending() == [req]


def test_a_report_from_a_peer_that_is_not_the_destination_is_refused(
    book: ReportBook, our_scp: AgentScp
) -> None:
    """RIS may call our SCP, but the request was made to ARCHIVE."""
    behaviour = Behaviour(report_to=("127.0.0.1", our_scp.port, US), reporter_ae="RIS")
    req = request(refs(1))
    with CommitmentScp(behaviour) as archive:
        assert request_commitment(US, peer(archive.port), req, book).outcome is Outcome.OK
        assert archive.wait_answers(1, 10)
    assert archive.answers == [STATUS_INVALID_ARGUMENT]
    assert book.pending() == [req]


def test_a_destination_may_name_the_ae_titles_its_reports_come_from(
    book: ReportBook, our_scp: AgentScp
) -> None:
    behaviour = Behaviour(report_to=("127.0.0.1", our_scp.port, US), reporter_ae="RIS")
    req = new_request("PACS", "ARCHIVE", refs(1), UIDS, 30, also_from=["RIS"])
    with CommitmentScp(behaviour) as archive:
        result = settled(commit(US, peer(archive.port), req, book))
    assert result.state is State.COMMITTED


def test_no_report_times_out(book: ReportBook, our_scp: AgentScp) -> None:
    results: list[CommitmentResult] = []
    book.on_result = results.append
    with CommitmentScp(Behaviour(never=True)) as archive:
        result = settled(commit(US, peer(archive.port), request(refs(1), timeout_s=1), book))
        assert len(archive.actions) == 1
    assert result.state is State.TIMED_OUT and result.verdict.outcome is Outcome.RETRY
    assert results == [result]  # the callback heard of it once
    assert book.pending() == []


def test_no_association_no_request(book: ReportBook) -> None:
    verdict = request_commitment(US, peer(free_port()), request(refs(1)), book)
    assert verdict.outcome is Outcome.RETRY and "cannot connect" in verdict.reason
    assert book.pending() == []


def test_a_restarted_agent_still_matches_a_persisted_request(our_scp: AgentScp) -> None:
    """The request, as JSON, outlives the ReportBook that sent it."""
    req = request(refs(2))
    assert CommitmentRequest.from_json(req.to_json()) == req
    sent_by = ReportBook()
    behaviour = Behaviour(report_to=("127.0.0.1", our_scp.port, US))
    our_scp.book.expect(CommitmentRequest.from_json(req.to_json()))  # "after the restart"
    with CommitmentScp(behaviour) as archive:
        assert request_commitment(US, peer(archive.port), req, sent_by).outcome is Outcome.OK
        result = our_scp.book.wait(req.transaction_uid, 10)
    assert result is not None and result.state is State.COMMITTED


# --- pure parts -----------------------------------------------------------------------------


def test_match_counts_unmentioned_and_contradicted_instances_as_failed() -> None:
    a, b, c = refs(3)
    req = request([a, b, c])
    report = CommitmentReport(
        req.transaction_uid, "ARCHIVE", (a, b), (FailedInstance(b, 0x0119),), False
    )
    result = match(req, report)
    assert result.committed == (a,)
    assert result.failed == (FailedInstance(b, 0x0119), FailedInstance(c, None))
    assert result.failed[1].reason_text == "not mentioned in the report"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_parse_report_refuses_what_is_not_a_result() -> None:
    ds = Dataset()
    ds.TransactionUID = "1.2.3"
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    item.ReferencedSOPInstanceUID = "../../etc/passwd"
    ds.ReferencedSOPSequence = [item]
    with pytest.raises(ReportError, match="valid UIDs"):
        parse_report(1, ds, "ARCHIVE", False)
    with pytest.raises(ReportError, match="event type"):
        parse_report(3, ds, "ARCHIVE", False)
    ds.TransactionUID = "not a uid"
    with pytest.raises(ReportError, match="Transaction UID"):
        parse_report(1, ds, "ARCHIVE", False)
    with pytest.raises(ReportError):
        parse_report(1, None, "ARCHIVE", False)


# --- against Orthanc ------------------------------------------------------------------------


@pytest.fixture
def orthanc(tmp_path: Path, our_scp: AgentScp) -> Iterator[int]:
    """Orthanc on a free loopback port, with the agent (our SCP) in its DicomModalities."""
    agent = {"AET": US, "Host": "127.0.0.1", "Port": our_scp.port, "AllowStorageCommitment": True}
    with run_orthanc(tmp_path / "orthanc", DicomModalities={"agent": agent}) as port:
        yield port


def test_orthanc_commits_what_it_holds_and_reports_on_a_new_association(
    orthanc: int, book: ReportBook
) -> None:
    archive = Destination(
        "ORTHANC", "127.0.0.1", orthanc, name="PACS", transfer_syntaxes=("1.2.840.10008.1.2.1",)
    )
    images = factory.ct_images(3)
    assert {r.verdict.outcome for r in send_batch(US, archive, outgoing(images))} == {Outcome.OK}
    stored = [InstanceRef(CT_IMAGE_STORAGE, str(ds.SOPInstanceUID)) for ds in images]

    all_held = new_request("PACS", "ORTHANC", stored, UIDS, 60)
    result = settled(commit(US, archive, all_held, book))
    assert result.state is State.COMMITTED and result.committed == tuple(stored)
    assert result.report is not None and not result.report.same_association
    assert result.report.reporter == "ORTHANC"

    (never_sent,) = refs(1)
    one_missing = new_request("PACS", "ORTHANC", [*stored, never_sent], UIDS, 60)
    result = settled(commit(US, archive, one_missing, book))
    assert result.state is State.FAILED
    assert result.committed == tuple(stored)
    assert result.failed == (FailedInstance(never_sent, NO_SUCH_OBJECT),)
