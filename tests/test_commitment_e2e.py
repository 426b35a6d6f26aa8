"""Storage Commitment through the real daemon (mock scanner): `wait` returns only once the
archive committed to every image, and `queue` says `committed`. Against Orthanc (a real
commitment SCP, reporting on a new association to the agent's own SCP) and against the SCP
written for the tests, for what no real peer does on request: reporting some images failed
(they are sent again and committed on the next request) and never reporting."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import evt

from tests.agent_process import Agent, Dest, write_config
from tests.commitment_scp import Behaviour, CommitmentScp
from tests.orthanc import orthanc
from tests.peers import free_port

CT = "1.2.840.10008.5.1.4.1.1.2"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR: the exam's dose report
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def start(tmp_path: Path, stack: ExitStack, dest: Dest, listen_port: int, extra: str) -> Agent:
    cfg = write_config(tmp_path, [dest])
    text = cfg.read_text()
    text = text.replace(
        "[agent]\n", f'[agent]\nlisten_port = {listen_port}\nlisten_host = "127.0.0.1"\n', 1
    )
    text = text.replace("default = true\n", f"default = true\nstorage_commitment = true\n{extra}")
    cfg.write_text(text)
    agent = Agent(cfg, tmp_path / "daemon.log")
    agent.start()
    stack.callback(agent.stop)
    return agent


def exam(agent: Agent, slices: int = 3) -> None:
    r = agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE")
    assert r.returncode == 0, r.stderr
    assert agent.cli("simulate", "--series", "1", "--slices", str(slices)).returncode == 0
    assert agent.cli("exam", "end").returncode == 0


def test_orthanc_commits_and_wait_returns_once_committed(tmp_path: Path, stack: ExitStack) -> None:
    listen = free_port()
    me = {"AET": "CT_TEST", "Host": "127.0.0.1", "Port": listen, "AllowStorageCommitment": True}
    port = stack.enter_context(orthanc(tmp_path / "orthanc", DicomModalities={"agent": me}))
    dest = Dest("PACS", port, ("ExplicitVRLittleEndian",), ae_title="ORTHANC")
    agent = start(tmp_path, stack, dest, listen, "commitment_timeout = 60\n")
    exam(agent)
    r = agent.cli("wait", "--timeout", "120")
    assert r.returncode == 0, r.stderr
    (study,) = agent.json("queue")["studies"]
    (d,) = study["destinations"]
    assert d["state"] == "committed" and d["images"] == study["images"] >= 3


class StoringCommitmentScp(CommitmentScp):
    """The test commitment SCP that also stores (accepts every C-STORE), as an archive."""

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(behaviour)
        self.stored: list[str] = []

    def contexts(self) -> list[tuple[str, list[str] | None]]:
        return [*super().contexts(), (CT, SYNTAXES), (DOSE_SR, SYNTAXES)]

    def handlers(self) -> list[evt.EventHandlerType]:
        return [*super().handlers(), (evt.EVT_C_STORE, self._on_store)]

    def _on_store(self, event: evt.Event) -> int:
        ds: Dataset = event.dataset
        self.stored.append(str(ds.SOPInstanceUID))
        return 0x0000


def test_failed_images_are_sent_again_then_committed(tmp_path: Path, stack: ExitStack) -> None:
    listen = free_port()
    behaviour = Behaviour(report_to=("127.0.0.1", listen, "CT_TEST"), fail_first=1)
    archive = stack.enter_context(StoringCommitmentScp(behaviour))
    dest = Dest("PACS", archive.port, ("ExplicitVRLittleEndian",))
    agent = start(tmp_path, stack, dest, listen, "commitment_timeout = 60\n")
    exam(agent)
    r = agent.cli("wait", "--timeout", "120")
    assert r.returncode == 0, r.stderr
    (failed,) = archive.actions[0].ReferencedSOPSequence[:1]
    uid = str(failed.ReferencedSOPInstanceUID)
    assert archive.stored.count(uid) == 2  # the archive said it lost it: sent again
    asked = [str(r.ReferencedSOPInstanceUID) for r in archive.actions[-1].ReferencedSOPSequence]
    assert uid in asked and len(archive.actions) >= 2  # and asked again
    queue = agent.json("queue")
    (study,) = queue["studies"]
    assert study["destinations"][0]["state"] == "committed"
    alarms = {a["kind"]: a["message"] for a in queue["alarms"]}
    assert "commitment_failed" not in alarms  # cleared once committed


def test_no_report_times_out_with_an_alarm_and_asks_again(tmp_path: Path, stack: ExitStack) -> None:
    behaviour = Behaviour(never=True)
    archive = stack.enter_context(StoringCommitmentScp(behaviour))
    dest = Dest("PACS", archive.port, ("ExplicitVRLittleEndian",))
    agent = start(tmp_path, stack, dest, free_port(), "commitment_timeout = 1\n")
    exam(agent)
    r = agent.cli("wait", "--timeout", "15")
    assert r.returncode == 3, r.stderr  # delivered, never committed: not done
    queue = agent.json("queue")
    (study,) = queue["studies"]
    assert study["destinations"][0]["state"] == "delivered"
    assert "commitment_timeout" in {a["kind"] for a in queue["alarms"]}
    assert len(archive.actions) >= 2  # asked again, each time with a fresh Transaction UID
    assert len({str(a.TransactionUID) for a in archive.actions}) == len(archive.actions)
