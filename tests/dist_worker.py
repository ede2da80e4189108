"""The featkit CLI under torchrun, with fault injection for tests/test_distributed.py.

Usage: ``torchrun … tests/dist_worker.py LOG KILL_RANK KILL_AT extract DATA …``.
Every shard a rank moves into place is appended to ``LOG`` as ``<rank> <shard file>``;
rank ``KILL_RANK`` (``-1``: none) SIGKILLs itself right before its ``KILL_AT``-th shard
would be moved into place, leaving that shard's temporary file behind, as a crash
would. Shards are recognised by their ``shard-`` file names (featkit.extraction.run).
"""

from __future__ import annotations

import os
import signal
import sys

log_path, kill_rank, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
del sys.argv[1:4]
rank = int(os.environ["RANK"])
real_replace = os.replace
placed = 0


def replace(src: str, dst: str) -> None:
    global placed
    name = os.path.basename(os.fspath(dst))
    if name.startswith("shard-"):
        placed += 1
        if rank == kill_rank and placed == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"{rank} {name}\n")
        return
    real_replace(src, dst)


os.replace = replace  # type: ignore[assignment]

from featkit.cli import main  # noqa: E402  (after the patch, as a crash would see it)

main()
