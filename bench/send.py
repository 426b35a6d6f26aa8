"""Sending: the agent against DCMTK `storescu`, same files, same `storescp`, same run.

    .venv/bin/python -m bench.send [--images 1000] [--runs 3] [--links 100mbit,1gbit]

- loopback, uncompressed: the agent sends Explicit VR Little Endian, as stored;
- over a shaped link (bench/link.py): the agent proposes JPEG-LS Lossless first and Explicit
  VR Little Endian second, as the shipped configs do, and compresses in its process pool
  inside the timed window (with `adaptive_compression = true`, set here, an instance whose
  compressed copy would come later than the link could carry the stored one goes as stored:
  `agent_sent_in` counts both); DCMTK sends the uncompressed files.

The archive is DCMTK `storescp --ignore` (receives and answers every C-STORE, writes nothing),
128 KiB PDUs both ways, TCP_NODELAY. Agent window: from the release of a queue of accepted
instances (a new destination added to them in the spool) to the last acknowledgement, with
the daemon's delivery loop (agent.delivery.DestinationSender). DCMTK window: storescu's start
to its exit. The runs alternate agent and DCMTK so that load changes hit both alike.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import common, link


def compare(
    corpus: common.Corpus, host: str, runs: int, syntaxes: list[str], tag: str, netns: str = ""
) -> dict[str, Any]:
    n = len(corpus.files)
    agent, dcmtk, sent_in = [], [], []
    port = common.free_port()
    with common.storescp(port, host, netns):
        for k in range(runs):
            seconds, by_syntax = common.send_with_agent(corpus, host, port, syntaxes, f"{tag}{k}")
            agent.append(n / seconds)
            sent_in.append(by_syntax)
            dcmtk.append(n / common.storescu_seconds(corpus.files, host, port))
    ratios = [a / d for a, d in zip(agent, dcmtk, strict=True)]
    return {
        "images": n,
        "agent_syntaxes": syntaxes,
        "agent_sent_in": sent_in,  # run by run: instances per transfer syntax
        "dcmtk_syntax": common.EXPLICIT,
        "agent_images_per_s": common.figure(agent),
        "dcmtk_images_per_s": common.figure(dcmtk),
        "ratio_vs_dcmtk": common.figure(ratios, 2),  # run by run, then the median
    }


def measure(images: int, runs: int, links: list[str], workdir: Path) -> dict[str, Any]:
    corpus = common.make_corpus(workdir, images)
    out: dict[str, Any] = {
        "bench": "send",
        "corpus": {
            "images": images,
            "rows": 512,
            "columns": 512,
            "bits": 16,
            "mean_file_bytes": corpus.bytes_total // images,
        },
        "archive": "DCMTK storescp --ignore +xa -pdu 131072, TCP_NODELAY=1",
        "dcmtk_sender": "DCMTK storescu -pdu 131072, TCP_NODELAY=1, one association, "
        "the uncompressed files as stored",
        "window": {
            "agent": "queue released (destination added in the spool) -> last C-STORE response",
            "dcmtk": "storescu process start -> exit",
        },
        "loopback": compare(corpus, "127.0.0.1", runs, [common.EXPLICIT], "LO"),
    }
    if links:
        why = link.unavailable()
        if why is not None:
            out["links"] = {"skipped": why}
            return out
        out["links"] = {"method": link.DESCRIPTION}
        for rate in links:
            with link.shaped(rate) as shaped:
                result = compare(
                    corpus, shaped.host, runs, [common.JPEG_LS, common.EXPLICIT], rate, shaped.netns
                )
            out["links"][rate] = result
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.send", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--links", default="100mbit,1gbit", help="tc rates; '' for loopback only")
    p.add_argument("--workdir", type=Path, help="default: a temporary folder in /var/tmp")
    args = p.parse_args(argv)
    # a kill runs the clean-ups (namespace, veth, storescp) as Ctrl-C would
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    links = [r for r in args.links.split(",") if r]
    with tempfile.TemporaryDirectory(dir=args.workdir or "/var/tmp") as work:
        report = measure(args.images, args.runs, links, Path(work))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
