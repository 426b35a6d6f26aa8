"""Delivery to a real DCMTK storescp: negotiation, lossless transcoding checked by independent
decoders, and the faults storescp can inject. Nothing accepted is ever lost from the spool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.config import Destination
from agent.delivery import DestinationSender
from agent.dicom import codecs
from agent.net.retry import Backoff
from agent.spool import DeliveryState, Spool
from tests import factory
from tests.peers import CT_IMAGE_STORAGE, VALIDATE_DICOM, free_port, require, storescp

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_2000 = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
ALL = (JPEG_LS, JPEG_2000, RLE, JPEG_LOSSLESS_SV1, DEFLATED, EXPLICIT, IMPLICIT)

# An independent decoder per syntax: DCMTK, or gdcm for JPEG 2000; output is uncompressed.
DECODER = {
    JPEG_LS: ["dcmdjpls"],
    RLE: ["dcmdrle"],
    JPEG_LOSSLESS_SV1: ["dcmdjpeg"],
    JPEG_2000: ["gdcmconv", "--raw"],
    DEFLATED: ["dcmconv", "+te"],
    EXPLICIT: ["dcmconv", "+te"],
    IMPLICIT: ["dcmconv", "+te"],
}


def destination(port: int, syntaxes: tuple[str, ...] = ALL, name: str = "PACS") -> Destination:
    return Destination(
        ae_title="ARCHIVE",
        host="127.0.0.1",
        port=port,
        name=name,
        transfer_syntaxes=syntaxes,
        default=True,
        connect_timeout_s=5,
        acse_timeout_s=5,
        dimse_timeout_s=5,
    )


def states(spool: Spool, dest: str = "PACS") -> list[DeliveryState]:
    out = []
    for inst in spool.instances():
        (d,) = [d for d in spool.deliveries(inst.sop_instance_uid) if d.destination == dest]
        out.append(d.state)
    return out


def received(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file())


@pytest.mark.parametrize("ts", ALL)
def test_each_syntax_delivered_and_pixels_identical_by_an_independent_decoder(
    ts: str, tmp_path: Path
) -> None:
    if not codecs.is_available(ts):
        pytest.fail(f"codec missing: {codecs.unavailable_reason(ts)}")
    require(DECODER[ts][0])
    images = factory.ct_images(3)
    spool, _ = factory.spooled(tmp_path / "spool", images)
    with storescp(tmp_path / "archive", syntaxes=[ts]) as port:
        sender = DestinationSender("CT_TEST", destination(port), spool)
        assert sender.send_due() == 3
    assert states(spool) == [DeliveryState.DELIVERED] * 3
    files = received(tmp_path / "archive")
    assert len(files) == 3
    originals = {str(ds.SOPInstanceUID): ds.pixel_array for ds in images}
    for f in files:
        assert pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        decoded = tmp_path / (f.name + ".raw.dcm")
        subprocess.run([*DECODER[ts], str(f), str(decoded)], check=True, capture_output=True)
        out = pydicom.dcmread(decoded)
        assert not out.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(out.pixel_array, originals[str(out.SOPInstanceUID)])
        decoded.unlink()
    if ts != DEFLATED:  # dicom3tools cannot read Deflated files at all (DCMTK's neither)
        require("dciodvfy")
        v = subprocess.run(
            [str(VALIDATE_DICOM), str(tmp_path / "archive")], capture_output=True, text=True
        )
        assert v.returncode == 0, v.stdout


@pytest.mark.parametrize(("preferred", "other"), [(JPEG_LS, EXPLICIT), (EXPLICIT, JPEG_LS)])
def test_the_destinations_preference_is_honoured(
    preferred: str, other: str, tmp_path: Path
) -> None:
    """storescp accepting both picks Explicit VR from one context; one context per syntax
    lets our preference win whichever it is."""
    spool, _ = factory.spooled(tmp_path / "spool", factory.ct_images(1))
    with storescp(tmp_path / "archive", syntaxes=[EXPLICIT, JPEG_LS]) as port:
        DestinationSender("CT_TEST", destination(port, (preferred, other)), spool).send_due()
    (f,) = received(tmp_path / "archive")
    assert pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == preferred


def test_refused_association_is_failed_with_reason_and_kept(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    with storescp(tmp_path / "archive", extra=["--refuse"]) as port:
        sender = DestinationSender("CT_TEST", destination(port), spool)
        sender.send_due()
    assert states(spool) == [DeliveryState.FAILED] * 2
    (d,) = spool.deliveries(accepted[0].sop_instance_uid)
    assert d.last_error and "rejected the association" in d.last_error
    assert all(spool.read(i) for i in accepted)  # nothing lost
    assert spool.rearm("PACS") == 2
    with storescp(tmp_path / "archive2") as port:
        DestinationSender("CT_TEST", destination(port), spool).send_due()
    assert states(spool) == [DeliveryState.DELIVERED] * 2


def test_abort_during_store_is_retried_later_and_nothing_is_lost(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with storescp(tmp_path / "archive", extra=["--abort-during"]) as port:
        sender = DestinationSender("CT_TEST", destination(port), spool, Backoff(0.01, 0.02))
        sender.send_due()
    assert states(spool) == [DeliveryState.PENDING] * 3
    assert sender.status.hold_until is not None and sender.status.failures_in_a_row == 1
    (d,) = spool.deliveries(accepted[0].sop_instance_uid)
    assert d.attempts == 1 and d.last_error
    with storescp(tmp_path / "archive2") as port:
        sender = DestinationSender("CT_TEST", destination(port), spool)
        # the backoff wait is over or cut short; all three go out
        sender.wake()
        while sender.send_due():
            pass
    assert states(spool) == [DeliveryState.DELIVERED] * 3
    assert len(received(tmp_path / "archive2")) == 3


def test_archive_accepting_no_ct_context_is_permanent(tmp_path: Path) -> None:
    """pynetdicom aborts an association with no accepted context: permanent, not retried."""
    spool, _ = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    with storescp(tmp_path / "archive", syntaxes=[EXPLICIT], sop_class="MRImageStorage") as port:
        DestinationSender("CT_TEST", destination(port), spool).send_due()
    assert states(spool) == [DeliveryState.FAILED] * 2
    (d,) = spool.deliveries(spool.instances()[0].sop_instance_uid)
    assert d.last_error and "presentation context" in d.last_error


def test_archive_down_is_retried_with_backoff(tmp_path: Path) -> None:
    spool, _ = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    sender = DestinationSender("CT_TEST", destination(free_port()), spool, Backoff(5, 60))
    assert sender.send_due() == 2
    assert states(spool) == [DeliveryState.PENDING] * 2
    assert sender.status.last_error and "cannot connect" in sender.status.last_error
    assert sender.status.hold_until is not None
    # nothing is due before the backoff expires: no tight loop
    assert sender.send_due() == 0


def test_ct_sop_class_constant() -> None:
    assert CT_IMAGE_STORAGE == "1.2.840.10008.5.1.4.1.1.2"
