"""Status handling of SPEC §6 end to end: DestinationSender, a real spool and a peer answering
each instance as told (tests/fault_scp.py), plus DCMTK storescp's --sleep-during for a peer that
stops answering. Warnings are delivered, A7xx and silence are retried with backoff, A9xx and
Cxxx fail that instance only, and nothing accepted is ever lost from the spool."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from agent.config import Destination
from agent.delivery import DestinationSender
from agent.net.outcome import Outcome
from agent.net.retry import Backoff
from agent.net.sender import SendResult
from agent.spool import Delivery, DeliveryState, Spool, SpooledInstance
from tests import factory
from tests.fault_scp import NO_RESPONSE, FaultSCP, always, by_instance
from tests.peers import storescp

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DIMSE_TIMEOUT_S = 1.0

PENDING, DELIVERED, FAILED = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.FAILED


def destination(port: int) -> Destination:
    """Uncompressed only (no transcoding time) and a short DIMSE timeout."""
    return Destination(
        ae_title="ARCHIVE",
        host="127.0.0.1",
        port=port,
        name="PACS",
        transfer_syntaxes=(EXPLICIT, IMPLICIT),
        default=True,
        connect_timeout_s=2,
        acse_timeout_s=2,
        dimse_timeout_s=DIMSE_TIMEOUT_S,
    )


def delivery(spool: Spool, inst: SpooledInstance) -> Delivery:
    (d,) = [d for d in spool.deliveries(inst.sop_instance_uid) if d.destination == "PACS"]
    return d


def states(spool: Spool, accepted: list[SpooledInstance]) -> list[DeliveryState]:
    return [delivery(spool, i).state for i in accepted]


def nothing_lost(spool: Spool, accepted: list[SpooledInstance]) -> bool:
    return all(spool.read(i) for i in accepted)


def sender_for(
    port: int, spool: Spool, backoff: Backoff | None = None
) -> tuple[DestinationSender, list[SendResult]]:
    results: list[SendResult] = []
    sender = DestinationSender(
        "CT_TEST", destination(port), spool, backoff or Backoff(5, 60), results.append
    )
    return sender, results


@pytest.mark.parametrize("warning", [0xB000, 0xB006, 0xB007], ids=hex)
def test_warning_statuses_are_delivered(warning: int, tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with FaultSCP(by_instance({2: warning})) as scp:
        sender, results = sender_for(scp.port, spool)
        assert sender.send_due() == 3
    assert states(spool, accepted) == [DELIVERED] * 3
    assert scp.stored() == {i.sop_instance_uid for i in accepted}
    (warned,) = [r for r in results if r.verdict.status == warning]
    assert warned.sop_instance_uid == accepted[1].sop_instance_uid
    assert warned.verdict.outcome is Outcome.OK and "warning" in warned.verdict.reason
    assert f"0x{warning:04X}" in warned.verdict.reason
    assert sender.status.hold_until is None and sender.status.failures_in_a_row == 0
    assert sender.send_due() == 0  # nothing left to do


@pytest.mark.parametrize("warning", [0xB000, 0xB006, 0xB007], ids=hex)
def test_warning_is_recorded_in_the_spool(warning: int, tmp_path: Path) -> None:
    """`queue` shows delivered-with-warning from the spool's `warning` column (SPEC §6:
    "counted as delivered and logged")."""
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with FaultSCP(by_instance({2: warning})) as scp:
        sender_for(scp.port, spool)[0].send_due()
    warned = delivery(spool, accepted[1])
    assert warned.state is DELIVERED
    assert warned.warning is not None and f"0x{warning:04X}" in warned.warning
    assert delivery(spool, accepted[0]).warning is None


def test_out_of_resources_is_retried_with_backoff(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with FaultSCP(by_instance({2: 0xA700})) as scp:
        sender, _ = sender_for(scp.port, spool, Backoff(5, 60))
        before = time.time()
        assert sender.send_due() == 3
        assert states(spool, accepted) == [DELIVERED, PENDING, DELIVERED]
        held = delivery(spool, accepted[1])
        assert held.attempts == 1
        assert held.next_attempt >= before + 2.5  # Backoff(5): a wait in [2.5, 5] s
        assert held.last_error and "out of resources" in held.last_error
        assert "0xA700" in held.last_error
        # one instance's trouble: it waits, the destination does not (SPEC §6)
        assert sender.status.hold_until is None and sender.status.failures_in_a_row == 0
        assert sender.send_due() == 0  # not due before its backoff ends: no tight loop
        # the archive has room again and a person asks to retry now
        scp.answer = by_instance({})
        assert spool.rearm("PACS") == 1
        sender.retry_now()
        assert sender.send_due() == 1
        assert scp.associations == 1  # kept open from one batch to the next
    assert states(spool, accepted) == [DELIVERED] * 3
    assert sender.status.failures_in_a_row == 0 and sender.status.hold_until is None
    assert scp.stored() == {i.sop_instance_uid for i in accepted}
    assert nothing_lost(spool, accepted)


def test_an_archive_refusing_everything_holds_the_destination(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with FaultSCP(always(0xA700)) as scp:
        sender, _ = sender_for(scp.port, spool, Backoff(5, 60))
        assert sender.send_due() == 3
        assert states(spool, accepted) == [PENDING] * 3
        assert sender.status.hold_until is not None and sender.status.hold_until > time.time()
        assert sender.status.failures_in_a_row == 1
        sender.wake()  # new images arriving do not cut the backoff short
        assert sender.status.hold_until is not None
        assert sender.send_due() == 0
        assert scp.associations == 1
    assert nothing_lost(spool, accepted)


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (0xA900, "does not match SOP class"),
        (0xA9FF, "does not match SOP class"),
        (0xC000, "cannot understand"),
        (0xC123, "cannot understand"),
    ],
    ids=["A900", "A9FF", "C000", "C123"],
)
def test_permanent_failure_fails_that_instance_only(
    status: int, words: str, tmp_path: Path
) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(4))
    with FaultSCP(by_instance({2: status})) as scp:
        sender, _ = sender_for(scp.port, spool)
        assert sender.send_due() == 4
        assert sender.send_due() == 0  # failed is parked, not retried
    # one bad instance never blocks the rest: 3 and 4 went out on the same association
    assert states(spool, accepted) == [DELIVERED, FAILED, DELIVERED, DELIVERED]
    assert [r.instance_number for r in scp.received] == [1, 2, 3, 4]
    assert scp.associations == 1
    bad = delivery(spool, accepted[1])
    assert bad.last_error and words in bad.last_error and f"0x{status:04X}" in bad.last_error
    assert bad.attempts == 1
    # permanent: no backoff for the destination, the others keep flowing
    assert sender.status.hold_until is None and sender.status.failures_in_a_row == 0
    assert nothing_lost(spool, accepted)
    # retryable by hand
    with FaultSCP() as scp:
        assert spool.rearm("PACS") == 1
        sender, _ = sender_for(scp.port, spool)
        assert sender.send_due() == 1
    assert states(spool, accepted) == [DELIVERED] * 4


def test_a_failed_instance_does_not_hold_back_the_next_batch(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(4))
    with FaultSCP(by_instance({1: 0xC000})) as scp:
        dest = destination(scp.port)
        small = dataclasses.replace(dest, batch_size=2)
        sender = DestinationSender("CT_TEST", small, spool, Backoff(5, 60))
        assert sender.send_due() == 2
        assert sender.send_due() == 2
        assert sender.send_due() == 0
    assert states(spool, accepted) == [FAILED, DELIVERED, DELIVERED, DELIVERED]
    assert scp.associations == 1  # two batches, one association kept open between them


def test_no_response_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with FaultSCP(by_instance({2: NO_RESPONSE})) as scp:
        sender, results = sender_for(scp.port, spool, Backoff(5, 60))
        started = time.monotonic()
        assert sender.send_due() == 3
        waited = time.monotonic() - started
        # 1 went through; 2 timed out (the association is aborted); 3 was never sent
        assert states(spool, accepted) == [DELIVERED, PENDING, PENDING]
        assert DIMSE_TIMEOUT_S * 0.9 <= waited < DIMSE_TIMEOUT_S + 5
        assert [r.instance_number for r in scp.received] == [1, 2]
        assert [r.verdict.outcome for r in results] == [Outcome.OK, Outcome.RETRY, Outcome.RETRY]
        assert "no response" in results[1].verdict.reason
        assert "association lost" in results[2].verdict.reason
        for inst in accepted[1:]:
            d = delivery(spool, inst)
            assert d.attempts == 1 and d.next_attempt > time.time() and d.last_error
        assert sender.status.hold_until is not None and sender.status.failures_in_a_row == 1
        assert sender.send_due() == 0
        # the archive answers again; retry now
        scp.answer = by_instance({})
        assert spool.rearm("PACS") == 2
        sender.wake()
        assert sender.send_due() == 2
        assert scp.associations == 2
    assert states(spool, accepted) == [DELIVERED] * 3
    assert scp.stored() == {i.sop_instance_uid for i in accepted}
    assert nothing_lost(spool, accepted)


def test_no_response_at_the_first_instance_keeps_the_whole_batch(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with FaultSCP(by_instance({1: NO_RESPONSE})) as scp:
        sender, _ = sender_for(scp.port, spool, Backoff(0.01, 0.02))
        assert sender.send_due() == 3
        assert states(spool, accepted) == [PENDING] * 3
        scp.answer = by_instance({})
        time.sleep(0.05)  # the short backoff ends
        while sender.send_due():
            pass
    assert states(spool, accepted) == [DELIVERED] * 3
    assert nothing_lost(spool, accepted)


def test_storescp_sleeping_past_the_dimse_timeout_is_retried(tmp_path: Path) -> None:
    """A real peer that stops answering: storescp --sleep-during longer than our timeout."""
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    sleep_s = int(DIMSE_TIMEOUT_S) + 2
    with storescp(tmp_path / "archive", extra=["--sleep-during", str(sleep_s)]) as port:
        sender, results = sender_for(port, spool, Backoff(0.01, 0.02))
        started = time.monotonic()
        assert sender.send_due() == 2
        assert time.monotonic() - started < sleep_s + 2
    assert states(spool, accepted) == [PENDING] * 2
    assert all(r.verdict.outcome is Outcome.RETRY for r in results)
    assert "no response" in results[0].verdict.reason
    assert sender.status.hold_until is not None and sender.status.failures_in_a_row == 1
    assert nothing_lost(spool, accepted)
    with storescp(tmp_path / "archive2") as port:
        sender, _ = sender_for(port, spool)
        spool.rearm("PACS")
        assert sender.send_due() == 2
    assert states(spool, accepted) == [DELIVERED] * 2
    assert len([p for p in (tmp_path / "archive2").iterdir() if p.is_file()]) == 2
