"""The fast sending path (issue 10): spooled files streamed as they are after the spool's
check, transcoding once per instance and syntax in the process pool, associations kept open
between batches, several associations per destination with each series on one."""

from __future__ import annotations

import dataclasses
import select
from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.config import ConfigError, load
from agent.delivery import DestinationSender
from agent.dicom.assembler import Assembler
from agent.net.retry import Backoff
from agent.net.staging import Staging
from agent.spool import DeliveryState
from tests import factory
from tests.fault_scp import FaultSCP, by_instance
from tests.orthanc import orthanc
from tests.peers import storescp
from tests.test_send_faults import destination as fault_destination
from tests.test_send_storescp import EXPLICIT, JPEG_LS, destination, received, states

ROOT = Path(__file__).resolve().parents[1]


def test_a_damaged_spooled_file_is_not_sent_and_the_others_are(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    damaged = spool.path(accepted[1])
    data = bytearray(damaged.read_bytes())
    data[-10] ^= 0xFF  # one pixel byte: the size is right, the SHA-256 is not
    damaged.write_bytes(bytes(data))
    with storescp(tmp_path / "archive", syntaxes=[EXPLICIT]) as port:
        DestinationSender("CT_TEST", destination(port, (EXPLICIT,)), spool).send_due()
    assert states(spool) == [DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.DELIVERED]
    (d,) = spool.deliveries(accepted[1].sop_instance_uid)
    assert d.last_error and "SHA-256" in d.last_error and str(damaged) in d.last_error
    assert [p.kind for p in spool.problems] == ["corrupt"]
    sent = {pydicom.dcmread(f).SOPInstanceUID for f in received(tmp_path / "archive")}
    assert sent == {accepted[0].sop_instance_uid, accepted[2].sop_instance_uid}


def test_a_missing_spooled_file_is_not_sent(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    spool.path(accepted[0]).unlink()
    with storescp(tmp_path / "archive", syntaxes=[EXPLICIT]) as port:
        DestinationSender("CT_TEST", destination(port, (EXPLICIT,)), spool).send_due()
    assert states(spool) == [DeliveryState.FAILED, DeliveryState.DELIVERED]
    (d,) = spool.deliveries(accepted[0].sop_instance_uid)
    assert d.last_error and "missing" in d.last_error


def test_uncompressed_instances_go_out_byte_for_byte_as_spooled(tmp_path: Path) -> None:
    """No decode and re-encode: the archive's file holds the spooled data set unchanged."""
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    with storescp(tmp_path / "archive", syntaxes=[EXPLICIT]) as port:
        DestinationSender("CT_TEST", destination(port, (EXPLICIT,)), spool).send_due()
    by_uid = {pydicom.dcmread(f).SOPInstanceUID: f for f in received(tmp_path / "archive")}
    for inst in accepted:
        ours = pydicom.dcmread(spool.path(inst))
        theirs = pydicom.dcmread(by_uid[inst.sop_instance_uid])
        assert theirs == ours  # every element of the data set, Pixel Data included


def test_transcoding_is_done_once_per_instance_and_syntax_in_the_pool(tmp_path: Path) -> None:
    (ds,) = factory.ct_images(1)
    spool, (inst,) = factory.spooled(tmp_path / "spool", [ds])
    staging = Staging()

    def source() -> Path:
        return spool.verified_path(inst)

    try:
        first = staging.stage(inst.sop_instance_uid, EXPLICIT, JPEG_LS, source)
        again = staging.stage(inst.sop_instance_uid, EXPLICIT, JPEG_LS, source)
        assert again is first  # a retry sends the copy made the first time
        path = first.result(timeout=60)
        out = pydicom.dcmread(path)
        assert out.file_meta.TransferSyntaxUID == JPEG_LS
        assert np.array_equal(out.pixel_array, ds.pixel_array)
        # the stored syntax needs no copy: the spooled file itself, once verified
        same = staging.stage(inst.sop_instance_uid, EXPLICIT, EXPLICIT, source)
        assert same.result() == spool.path(inst)
        staging.discard(inst.sop_instance_uid)
        assert not path.exists()
    finally:
        staging.clear()


def test_a_retried_instance_is_not_transcoded_again(tmp_path: Path) -> None:
    """A700 on the second instance: it is retried on the same association and the same
    staged JPEG-LS copy goes out; the staging folder is empty once all is delivered."""
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with FaultSCP(by_instance({2: 0xA700})) as scp:
        dest = dataclasses.replace(fault_destination(scp.port), transfer_syntaxes=(JPEG_LS,))
        sender = DestinationSender("CT_TEST", dest, spool, Backoff(5, 60))
        assert sender.send_due() == 3
        staged = list(sender._staging._staged)
        assert staged == [(accepted[1].sop_instance_uid, JPEG_LS)]  # kept for the retry
        kept = sender._staging._staged[staged[0]]
        scp.answer = by_instance({})
        assert spool.rearm("PACS") == 1
        sender.retry_now()
        assert sender.send_due() == 1
        assert kept.done() and not sender._staging._staged  # discarded once delivered
        assert scp.associations == 1
        sender.close()
    assert [r.instance_number for r in scp.received] == [1, 2, 3, 2]
    assert spool.count("PACS", DeliveryState.DELIVERED) == 3


def test_each_series_keeps_to_one_of_several_associations(tmp_path: Path) -> None:
    the_exam = factory.exam()
    assembler = Assembler(factory.EQUIPMENT, factory.UIDS)
    acquired = factory.acquire(assembler, the_exam, series=2, slices=5)
    spool, _ = factory.spooled(tmp_path / "spool", acquired.datasets)
    with FaultSCP(by_instance({})) as scp:
        dest = dataclasses.replace(fault_destination(scp.port), associations=2)
        sender = DestinationSender("CT_TEST", dest, spool)
        assert sender.send_due() == 10
        assert scp.associations == 2
        sender.close()
    assert spool.count("PACS", DeliveryState.DELIVERED) == 10
    series_of = {str(ds.SOPInstanceUID): str(ds.SeriesInstanceUID) for ds in acquired.datasets}
    for series in {str(s.series_instance_uid) for s in acquired.series}:
        numbers = [
            r.instance_number for r in scp.received if series_of[r.sop_instance_uid] == series
        ]
        assert numbers == [1, 2, 3, 4, 5]  # in order within the series


@pytest.mark.parametrize("value", ["0", "9", '"two"'])
def test_associations_out_of_range_is_a_clear_error(value: str, tmp_path: Path) -> None:
    text = (ROOT / "configs" / "mock.toml").read_text()
    assert "# associations = 1" in text
    f = tmp_path / "agent.toml"
    f.write_text(text.replace("# associations = 1", f"associations = {value}", 1))
    with pytest.raises(ConfigError) as e:
        load(f)
    assert "destinations[0].associations" in str(e.value)


def test_associations_is_read_from_the_config(tmp_path: Path) -> None:
    text = (ROOT / "configs" / "mock.toml").read_text()
    f = tmp_path / "agent.toml"
    f.write_text(text.replace("# associations = 1", "associations = 3", 1))
    assert load(f).destinations[0].associations == 3


def test_spool_verified_path_is_the_accepted_file(tmp_path: Path) -> None:
    spool, (inst,) = factory.spooled(tmp_path / "spool", factory.ct_images(1))
    assert spool.verified_path(inst) == spool.path(inst)
    assert spool.verified_path(inst).read_bytes() == spool.read(inst)
    spool.close()


def test_an_association_the_archive_dropped_while_idle_is_opened_again(tmp_path: Path) -> None:
    """Orthanc (DicomScpTimeout 1) closes an association idle for a second: the next batch
    sees that and opens a new one by itself, with nothing held back or retried."""
    spool, _ = factory.spooled(tmp_path / "spool", factory.ct_images(4))
    with orthanc(tmp_path / "orthanc", DicomScpTimeout=1) as port:
        dest = dataclasses.replace(destination(port, (EXPLICIT,)), ae_title="ORTHANC", batch_size=2)
        sender = DestinationSender("CT_TEST", dest, spool, Backoff(5, 60))
        assert sender.send_due() == 2
        assoc = sender._links[0]._assoc
        assert assoc is not None and assoc.is_established
        readable, _, _ = select.select([assoc], [], [], 30)
        assert readable  # Orthanc gave up on the idle association: EOF (or an A-ABORT)
        assert sender.send_due() == 2
        sender.close()
    assert states(spool) == [DeliveryState.DELIVERED] * 4
    assert sender.status.associations == 2 and sender.status.hold_until is None
