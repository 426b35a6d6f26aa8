"""Helper for the spool crash and fsync-order tests: accept instances as fast as possible.

Prints "ready" once the spool is open, then "accepted <sop uid> <sha256>" (flushed) after each
accept() returns. Run as `python tests/spool_writer.py ROOT --tag N --count C [--threads T]`
(T accepts in flight at once, as the acquisition's workers make them).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.spool import InstanceRecord, Spool

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ROOT_UID = "1.2.826.0.1.3680043.10.999"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--tag", type=int, default=1, help="makes this run's UIDs unique")
    p.add_argument("--count", type=int, default=10**9)
    p.add_argument("--per-study", type=int, default=7, help="instances per study")
    p.add_argument("--min-size", type=int, default=1024)
    p.add_argument("--max-size", type=int, default=512 * 1024)
    p.add_argument("--dest", action="append", default=None)
    p.add_argument("--threads", type=int, default=1, help="accepts in flight at once")
    args = p.parse_args(argv)
    rng = random.Random(args.tag)
    block = rng.randbytes(args.max_size)
    out = sys.stdout
    printing = threading.Lock()
    with Spool(args.root) as spool:
        out.write("ready\n")
        out.flush()

        def accept(i: int) -> None:
            # Fixed-width numbers: no UID is a prefix of another (the fsync-order test greps them).
            study = f"{ROOT_UID}.{args.tag}.1.{1_000_000 + i // args.per_study}"
            record = InstanceRecord(
                sop_instance_uid=f"{ROOT_UID}.{args.tag}.3.{1_000_000 + i}",
                sop_class_uid=CT_IMAGE,
                study_instance_uid=study,
                series_instance_uid=f"{ROOT_UID}.{args.tag}.2.{1_000_000 + i // args.per_study}",
                transfer_syntax_uid=EXPLICIT_LE,
                instance_number=i + 1,
                exam_token=f"exam-{args.tag}",
            )
            size = random.Random(i).randint(args.min_size, args.max_size)
            data = i.to_bytes(8, "big") + block[: size - 8]
            spool.accept(record, data, args.dest or ["PACS"])
            with printing:
                out.write(
                    f"accepted {record.sop_instance_uid} {hashlib.sha256(data).hexdigest()}\n"
                )
                out.flush()

        def share(first: int) -> None:  # every `threads`-th instance from `first`
            for i in range(first, args.count, args.threads):
                accept(i)

        with ThreadPoolExecutor(args.threads) as pool:
            for _ in pool.map(share, range(args.threads)):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
