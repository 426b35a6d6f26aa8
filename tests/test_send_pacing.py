"""Adaptive compression (agent/net/pacing.py): with both the compressed and the stored syntax
accepted, an instance whose compressed copy could not be ready when the sender reaches it goes
as stored; everything arrives, lossless, in order; `adaptive_compression = false` and an archive
taking only the compressed syntax keep to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import cast

import numpy as np
import pydicom
import pytest

from agent.config import ConfigError, load
from agent.delivery import DestinationSender, outgoing
from agent.dicom.codecs import CodecError
from agent.net.outcome import Outcome
from agent.net.pacing import Choice, Pace, Plan
from agent.net.sender import Link, SendResult
from agent.net.staging import Staging
from agent.spool import DeliveryState
from tests import factory
from tests.peers import storescp
from tests.test_send_storescp import EXPLICIT, JPEG_LS, destination, received, states

ROOT = Path(__file__).resolve().parents[1]


class RecordingStaging:
    """Stands in for Staging in the unit tests of the plan: every copy is ready at once, and
    what was asked for is recorded."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def stage(
        self,
        sop_uid: str,
        stored_ts: str,
        ts: str,
        source: Callable[[], Path],
        checked: Future[Path] | None = None,
        timed: Callable[[float], None] | None = None,
    ) -> Future[Path]:
        self.asked.append((sop_uid, ts))
        ready: Future[Path] = Future()
        ready.set_result(Path(f"/{sop_uid}.{ts}"))
        return ready


def choices(n: int, *, stored_too: bool = True) -> list[Choice]:
    return [Choice(f"1.2.{i}", EXPLICIT, JPEG_LS, stored_too, lambda: Path("/")) for i in range(n)]


def taken(plan: Plan, n: int) -> list[str]:
    return [plan.take(i)[0] for i in range(n)]


def test_without_figures_yet_every_instance_is_compressed() -> None:
    staging = RecordingStaging()
    plan = Plan(cast(Staging, staging), choices(6), Pace(), adaptive=True)
    assert taken(plan, 6) == [JPEG_LS] * 6


def test_the_instances_the_sender_reaches_before_a_copy_could_be_ready_go_as_stored() -> None:
    """One compression takes as long as two C-STOREs: the first two go as stored while the
    pool compresses the third onwards, which are then always ready in time."""
    pace = Pace()
    pace.compressed(0.010)
    pace.stored(0.005)
    staging = RecordingStaging()
    plan = Plan(cast(Staging, staging), choices(8), pace, adaptive=True)
    assert taken(plan, 8) == [EXPLICIT, EXPLICIT] + [JPEG_LS] * 6
    # each compression asked for once, none for the two sent as stored
    compressed = [uid for uid, ts in staging.asked if ts == JPEG_LS]
    assert compressed == [f"1.2.{i}" for i in range(2, 8)]


def test_a_slow_link_gets_every_instance_compressed() -> None:
    """C-STOREs slower than a compression: a copy is always ready, nothing goes as stored."""
    pace = Pace()
    pace.compressed(0.010)
    pace.stored(0.040)
    plan = Plan(cast(Staging, RecordingStaging()), choices(8), pace, adaptive=True)
    assert taken(plan, 8) == [JPEG_LS] * 8


@pytest.mark.parametrize("adaptive, stored_too", [(False, True), (True, False)])
def test_one_way_only_compresses_every_instance_and_at_once(
    adaptive: bool, stored_too: bool
) -> None:
    pace = Pace()
    pace.compressed(0.010)
    pace.stored(0.001)
    staging = RecordingStaging()
    plan = Plan(cast(Staging, staging), choices(5, stored_too=stored_too), pace, adaptive)
    assert [ts for _, ts in staging.asked] == [JPEG_LS] * 5  # before the first is taken
    assert taken(plan, 5) == [JPEG_LS] * 5


def test_lead_counts_the_compressions_queued_before() -> None:
    pace = Pace()
    pace.compressed(0.010)
    pace.stored(0.004)
    assert pace.lead(0, 2) == 2  # ready in 10 ms: 2.5 C-STOREs, the third one waits a little
    assert pace.lead(2, 2) == 5  # behind two others on two workers: 20 ms


@pytest.mark.parametrize("adaptive", [True, False])
def test_both_syntaxes_accepted_everything_arrives_lossless_and_in_order(
    adaptive: bool, tmp_path: Path
) -> None:
    """DCMTK storescp taking JPEG-LS and Explicit VR LE keeps each instance in the syntax it
    came in: each is one of the two (with `adaptive_compression = false`, JPEG-LS), as the
    sender reported, and its pixels are the spooled ones."""
    images = factory.ct_images(8)
    spool, accepted = factory.spooled(tmp_path / "spool", images)
    results: list[SendResult] = []
    with storescp(tmp_path / "archive", syntaxes=[JPEG_LS, EXPLICIT], extra=["-v"]) as port:
        dest = dataclasses.replace(
            destination(port, (JPEG_LS, EXPLICIT)), adaptive_compression=adaptive
        )
        sender = DestinationSender("CT_TEST", dest, spool, on_delivery=results.append)
        assert sender.send_due() == 8
        sender.close()
    assert states(spool) == [DeliveryState.DELIVERED] * 8
    sent_in = {r.sop_instance_uid: r.transfer_syntax_uid for r in results}
    by_uid = {}
    for f in received(tmp_path / "archive"):
        ds = pydicom.dcmread(f)
        by_uid[ds.SOPInstanceUID] = ds
    for inst, original in zip(accepted, images, strict=True):
        theirs = by_uid[inst.sop_instance_uid]
        assert theirs.file_meta.TransferSyntaxUID == sent_in[inst.sop_instance_uid]
        assert theirs.file_meta.TransferSyntaxUID in (
            (JPEG_LS, EXPLICIT) if adaptive else (JPEG_LS,)
        )
        assert np.array_equal(theirs.pixel_array, original.pixel_array)
    log = (tmp_path / f"storescp-{port}.log").read_text()
    order = [log.index(inst.sop_instance_uid) for inst in accepted]
    assert order == sorted(order)  # received in acceptance order


def test_adaptive_compression_is_read_from_the_config(tmp_path: Path) -> None:
    text = (ROOT / "configs" / "mock.toml").read_text()
    assert "# adaptive_compression = false" in text
    f = tmp_path / "agent.toml"
    f.write_text(text)
    assert load(f).destinations[0].adaptive_compression is False  # SPEC §6: the best accepted
    f.write_text(text.replace("# adaptive_compression = false", "adaptive_compression = true"))
    assert load(f).destinations[0].adaptive_compression is True
    f.write_text(text.replace("# adaptive_compression = false", 'adaptive_compression = "no"'))
    with pytest.raises(ConfigError) as e:
        load(f)
    assert "destinations[0].adaptive_compression" in str(e.value)


class CopiesFail(Staging):
    """Real staging, except that every compressed copy fails (a codec broken on this
    machine, say): only the stored files can be had."""

    def stage(
        self,
        sop_uid: str,
        stored_ts: str,
        ts: str,
        source: Callable[[], Path],
        checked: Future[Path] | None = None,
        timed: Callable[[float], None] | None = None,
    ) -> Future[Path]:
        if ts == stored_ts:
            return super().stage(sop_uid, stored_ts, ts, source, checked, timed)
        failed: Future[Path] = Future()
        failed.set_exception(CodecError(f"no {ts} encoder here"))
        return failed


def test_a_failed_copy_goes_as_stored_when_the_archive_took_that_too(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with storescp(tmp_path / "archive", syntaxes=[JPEG_LS, EXPLICIT]) as port:
        dest = dataclasses.replace(
            destination(port, (JPEG_LS, EXPLICIT)), adaptive_compression=True
        )
        link = Link("CT_TEST", dest, CopiesFail())
        try:
            results = link.send([outgoing(spool, inst) for inst in accepted])
        finally:
            link.close()
    assert [(r.verdict.outcome, r.transfer_syntax_uid) for r in results] == [
        (Outcome.OK, EXPLICIT)
    ] * 3
    assert len(received(tmp_path / "archive")) == 3


def test_without_adaptive_compression_a_failed_copy_fails_the_instance(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    with storescp(tmp_path / "archive", syntaxes=[JPEG_LS, EXPLICIT]) as port:
        link = Link("CT_TEST", destination(port, (JPEG_LS, EXPLICIT)), CopiesFail())
        try:
            results = link.send([outgoing(spool, inst) for inst in accepted])
        finally:
            link.close()
    assert {r.verdict.outcome for r in results} == {Outcome.FAIL}
    assert all("encoder" in r.verdict.reason for r in results)
