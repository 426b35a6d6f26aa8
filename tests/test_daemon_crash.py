"""kill -9 of the daemon at random instants, during acquisition and during sending, again and
again; after each restart the exam is still open, and in the end every accepted image is at
the archive exactly once as a set (by SOP Instance UID), and no file there is corrupt."""

from __future__ import annotations

import random
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pydicom

from agent.control.client import ControlClient
from agent.spool import Spool
from tests.agent_process import Agent, Dest, write_config
from tests.peers import storescp

KILLS = 10


def test_kill_9_during_acquisition_and_sending_loses_nothing(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    with ExitStack() as stack:
        port = stack.enter_context(storescp(tmp_path / "archive"))
        agent = Agent(write_config(tmp_path, [Dest("PACS", port)]), tmp_path / "daemon.log")
        agent.start()
        stack.callback(agent.stop)
        exam = agent.json("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE")[
            "exam"
        ]
        for _ in range(KILLS):
            # a scan going on in the background while the daemon dies under it
            with ControlClient(tmp_path / "control.sock") as client:
                slices = client.events(["slice"])
                scan = threading.Thread(
                    target=agent.cli,
                    args=("simulate", "--slices", "30", "--rate", "100", "--timeout", "30"),
                )
                scan.start()
                next(iter(slices))  # the first slice of this scan is accepted
            time.sleep(rng.uniform(0, 0.5))  # a random instant to kill at, not a sync point
            agent.kill()
            scan.join()
            agent.start()
            status = agent.json("exam", "status")
            assert status["exam"]["token"] == exam["token"], "the open exam was lost"
        r = agent.cli("wait", "--timeout", "120")
        assert r.returncode == 0, r.stderr
        agent.stop()
    with Spool(tmp_path / "spool") as spool:
        accepted = {i.sop_instance_uid for i in spool.instances()}
    assert accepted, "nothing was accepted at all"
    received = set()
    for f in (tmp_path / "archive").iterdir():
        ds = pydicom.dcmread(f)  # a corrupt file raises here
        assert ds.pixel_array.size  # and its pixels decode
        received.add(str(ds.SOPInstanceUID))
    assert received == accepted
