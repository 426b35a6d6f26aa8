"""The MPPS outbox and its delivery, against the MPPS SCP written for the tests (no Debian
package provides one, tests/mpps_scp.py): order kept through a RIS outage and a restart,
the IHE SWF duplicate rule, refusals set aside without blocking the rest, bytes kept."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from agent.config import Peer
from agent.mpps.outbox import N_CREATE, N_SET, MppsOutbox
from agent.mpps.sender import deliver
from agent.net.outcome import Outcome
from tests.mpps_scp import DUPLICATE_INSTANCE, INVALID_ATTRIBUTE_VALUE, MppsSCP
from tests.peers import free_port

STEP = "1.2.826.0.1.3680043.10.999.1"


def create(status: str = "IN PROGRESS") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepID = "PPS1"
    ds.Modality = "CT"
    return ds


def final(status: str = "COMPLETED") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261126"
    return ds


def peer(port: int) -> Peer:
    return Peer("RIS", "127.0.0.1", port, connect_timeout_s=2, dimse_timeout_s=5)


def test_messages_arrive_in_order_and_leave_the_outbox(tmp_path: Path) -> None:
    outbox = MppsOutbox(tmp_path / "mpps")
    outbox.put(N_CREATE, STEP, create())
    outbox.put(N_SET, STEP, final())
    with MppsSCP() as ris:
        result = deliver(outbox, "CT_TEST", peer(ris.port))
        assert (result.taken, result.stopped, result.set_aside) == (2, None, [])
        assert [(m.kind, m.status) for m in ris.messages] == [("N-CREATE", 0), ("N-SET", 0)]
        assert ris.messages[0].calling_ae == "CT_TEST"
        assert ris.step(STEP).PerformedProcedureStepStatus == "COMPLETED"
    assert outbox.count() == 0


def test_ris_down_then_restart_then_up_keeps_the_order(tmp_path: Path) -> None:
    outbox = MppsOutbox(tmp_path / "mpps")
    outbox.put(N_CREATE, STEP, create())
    port = free_port()
    result = deliver(outbox, "CT_TEST", peer(port))  # nobody listens
    assert result.taken == 0 and result.stopped is not None
    assert result.stopped.outcome is Outcome.RETRY
    outbox.put(N_SET, STEP, final())
    restarted = MppsOutbox(tmp_path / "mpps")  # the daemon restarts: the files are the queue
    assert [m.kind for m in restarted.pending() if not isinstance(m, Exception)] == [
        N_CREATE,
        N_SET,
    ]
    third = restarted.put(N_SET, STEP, final("DISCONTINUED"))
    assert third.number == 3  # numbering goes on after a restart
    ris = MppsSCP()
    ris.start(port)
    try:
        result = deliver(restarted, "CT_TEST", peer(port))
    finally:
        ris.stop()
    # the third is refused (the step is final), set aside; the first two arrived in order
    assert [(m.kind, m.status) for m in ris.messages] == [
        ("N-CREATE", 0),
        ("N-SET", 0),
        ("N-SET", 0x0110),
    ]
    assert result.taken == 2 and len(result.set_aside) == 1 and "0000000003" in result.set_aside[0]
    assert restarted.count() == 0 and restarted.failed() == 1


def test_duplicate_n_create_counts_as_success(tmp_path: Path) -> None:
    """A retried N-CREATE whose first attempt arrived (its answer lost): the RIS answers 0111,
    which IHE SWF says means it has the step; the N-SET after it goes on."""
    outbox = MppsOutbox(tmp_path / "mpps")
    with MppsSCP() as ris:
        outbox.put(N_CREATE, STEP, create())
        assert deliver(outbox, "CT_TEST", peer(ris.port)).taken == 1
        outbox.put(N_CREATE, STEP, create())  # the same message again, as after a lost answer
        outbox.put(N_SET, STEP, final())
        result = deliver(outbox, "CT_TEST", peer(ris.port))
        assert [m.status for m in ris.messages] == [0, DUPLICATE_INSTANCE, 0]
    assert result.taken == 2 and not result.set_aside and outbox.count() == 0


def test_permanent_refusal_is_set_aside_and_the_rest_goes_on(tmp_path: Path) -> None:
    outbox = MppsOutbox(tmp_path / "mpps")
    other = STEP + ".2"
    outbox.put(N_CREATE, STEP, create())
    outbox.put(N_CREATE, other, create())
    answer = {STEP: INVALID_ATTRIBUTE_VALUE}
    with MppsSCP(lambda kind, uid: answer.get(uid)) as ris:
        result = deliver(outbox, "CT_TEST", peer(ris.port))
        assert list(ris.steps) == [other]
    assert result.taken == 1 and "invalid attribute value" in result.set_aside[0]
    assert outbox.count() == 0 and outbox.failed() == 1


def test_unreadable_message_is_set_aside(tmp_path: Path) -> None:
    outbox = MppsOutbox(tmp_path / "mpps")
    first = outbox.put(N_CREATE, STEP, create())
    outbox.put(N_SET, STEP, final())
    (tmp_path / "mpps" / first.name).write_bytes(b"not a message")
    (tmp_path / "mpps" / ".0000000009.mpps.tmp").write_bytes(b"half")  # a crash's leftover
    outbox = MppsOutbox(tmp_path / "mpps")
    assert not (tmp_path / "mpps" / ".0000000009.mpps.tmp").exists()
    with MppsSCP() as ris:
        result = deliver(outbox, "CT_TEST", peer(ris.port))
        assert [m.kind for m in ris.messages] == ["N-SET"]  # 0112: the create never came
    assert "unreadable" in result.set_aside[0] and outbox.failed() == 2


def test_values_keep_their_bytes(tmp_path: Path) -> None:
    """A name copied from the worklist in its own character set arrives byte for byte."""
    ds = create()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.add_new(0x00100010, "PN", "Müller^Jürgen".encode())  # raw UTF-8, as the RIS sent it
    outbox = MppsOutbox(tmp_path / "mpps")
    outbox.put(N_CREATE, STEP, ds)
    with MppsSCP() as ris:
        deliver(outbox, "CT_TEST", peer(ris.port))
        got = ris.step(STEP)
    got.decode()
    assert str(got.PatientName) == "Müller^Jürgen"
