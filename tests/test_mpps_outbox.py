"""The MPPS outbox and its delivery, against the MPPS SCP written for the tests (no Debian
package provides one, tests/mpps_scp.py): order kept through a RIS outage and a restart,
the IHE SWF duplicate rule, refusals set aside without blocking the rest, bytes kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.association import Association

from agent.config import Peer
from agent.mpps.outbox import N_CREATE, N_SET, MppsMessage, MppsOutbox
from agent.mpps.sender import MAX_ATTEMPTS, deliver
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
    ds.PerformedProcedureStepEndTime = "101500"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.10.999.2"
    ds.PerformedSeriesSequence = [series]
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
    assert "damaged" in result.set_aside[0] and outbox.failed() == 2


# PS3.5 H.3.1: a Japanese name in ISO 2022 IR 87, alphabetic, ideographic and phonetic groups
YAMADA = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"


def test_values_keep_their_bytes(tmp_path: Path) -> None:
    """A name copied from the worklist in its own character set arrives byte for byte (not
    decoded and encoded again)."""
    ds = create()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.add_new(0x00100010, "PN", YAMADA)  # raw, as the RIS sent it
    outbox = MppsOutbox(tmp_path / "mpps")
    outbox.put(N_CREATE, STEP, ds)
    restarted = MppsOutbox(tmp_path / "mpps")  # read back from disk
    with MppsSCP() as ris:
        deliver(restarted, "CT_TEST", peer(ris.port))
        got = ris.step(STEP)
    assert got.get_item(0x00100010).value == YAMADA
    got.decode()
    assert str(got.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_two_outboxes_on_one_folder_never_overwrite(tmp_path: Path) -> None:
    a, b = MppsOutbox(tmp_path / "mpps"), MppsOutbox(tmp_path / "mpps")
    a.put(N_CREATE, STEP, create())
    b.put(N_SET, STEP, final())  # b still thinks number 1 is free
    kinds = [m.kind for m in MppsOutbox(tmp_path / "mpps").pending() if isinstance(m, MppsMessage)]
    assert kinds == [N_CREATE, N_SET]


def test_a_repeated_final_n_set_whose_answer_was_lost_is_taken(tmp_path: Path) -> None:
    """The RIS took N-SET COMPLETED, but the agent died before it could forget it: sent
    again, the RIS answers 0110 (no longer updatable); that means it has it, not a refusal."""
    outbox = MppsOutbox(tmp_path / "mpps")
    with MppsSCP() as ris:
        outbox.put(N_CREATE, STEP, create())
        completed = outbox.put(N_SET, STEP, final())
        assert deliver(outbox, "CT_TEST", peer(ris.port)).taken == 2
        # the state a crash between the RIS's answer and outbox.done() leaves
        outbox.put(N_SET, STEP, final())
        (again,) = [m for m in outbox.pending() if isinstance(m, MppsMessage)]
        outbox.mark_attempted(again)
        result = deliver(MppsOutbox(tmp_path / "mpps"), "CT_TEST", peer(ris.port))
        assert [m.status for m in ris.messages][-1] == 0x0110
    assert result.taken == 1 and not result.set_aside and completed.number == 2


def test_a_message_the_ris_keeps_choking_on_is_set_aside_after_some_attempts(
    tmp_path: Path,
) -> None:
    outbox = MppsOutbox(tmp_path / "mpps")
    other = STEP + ".2"
    outbox.put(N_CREATE, STEP, create())
    outbox.put(N_SET, STEP, final())
    outbox.put(N_CREATE, other, create())
    answer = {STEP: 0xA700}  # out of resources, for this step only
    with MppsSCP(lambda kind, uid: answer.get(uid)) as ris:
        rounds = [deliver(outbox, "CT_TEST", peer(ris.port)) for _ in range(MAX_ATTEMPTS)]
        assert all(r.stopped is not None for r in rounds[:-1])
        last = rounds[-1]
        assert last.stopped is None and last.taken == 1 and list(ris.steps) == [other]
    # the N-CREATE set aside, and with it the N-SET of the same step (it would be 0112)
    assert len(last.set_aside) == 2 and "its N-CREATE failed" in last.set_aside[1]
    assert outbox.count() == 0 and outbox.failed() == 2


def test_a_message_that_cannot_be_sent_is_set_aside_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom raises for a data set it cannot encode: that message fails, the round and
    the other steps go on."""
    outbox = MppsOutbox(tmp_path / "mpps")
    outbox.put(N_CREATE, STEP, create())
    outbox.put(N_CREATE, STEP + ".2", create())
    real = Association.send_n_create

    def send(self: Association, ds: Dataset, class_uid: str, uid: str) -> Any:
        if uid == STEP:
            raise ValueError("cannot encode")
        return real(self, ds, class_uid, uid)

    monkeypatch.setattr(Association, "send_n_create", send)
    with MppsSCP() as ris:
        result = deliver(outbox, "CT_TEST", peer(ris.port))
        assert list(ris.steps) == [STEP + ".2"]
    assert result.taken == 1 and "cannot encode" in result.set_aside[0]
