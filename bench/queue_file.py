"""
What a runner's pass costs the reactor with a backlog in the file queue
(L{mailplat.queue.Queue}, the queue of every store but PostgreSQL): N
entries waiting for their next attempt (deferred for an hour, as after an
outage of their destination), then

  - C{due}: one pass's look at the queue (L{Queue.due}, on the reactor
    thread), median of 20;
  - C{enqueue + pass}: a new message queued and the pass its enqueue
    wakes the runner for (each enqueue does), per message, median of 50;
  - C{list}: every entry copied (the admin command's C{queue list}).

    /work/venv/bin/python bench/queue_file.py --entries 5000

To measure another version of the queue (for example before a change):

    git show REV:mailplat/queue/__init__.py > /tmp/queue.py
    /work/venv/bin/python bench/queue_file.py --queue-module /tmp/queue.py

Bounded: at most 20,000 entries; the queue lives in a scratch directory
under C{--dir} (default: the system's temporary directory), removed at
the end.
"""

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.queue_sql import loadModule  # noqa: E402

BODY = b"From: alice@example.test\r\nTo: someone@far.test\r\nSubject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 13


def _median(f: Callable[[], Any], times: int) -> float:
    taken: List[float] = []
    for _ in range(times):
        began = time.perf_counter()
        f()
        taken.append(time.perf_counter() - began)
    return statistics.median(taken) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--queue-module", metavar="FILE", help="another version of mailplat/queue/__init__.py")
    parser.add_argument("--dir", default=None, help="where to make the scratch queue directory")
    args = parser.parse_args()
    if not 1 <= args.entries <= 20000:
        parser.error("--entries: 1 to 20,000")
    if args.queue_module:
        loadModule("mailplat.queue", args.queue_module)
    from twisted.internet import task

    from mailplat.queue import Queue

    scratch = tempfile.mkdtemp(prefix="mpbqueue", dir=args.dir)
    try:
        clock = task.Clock()
        clock.advance(1_700_000_000)
        queue = Queue(os.path.join(scratch, "queue"), clock)

        def enqueue(i: int) -> str:
            d = queue.enqueue("alice@example.test", [f"r{i}@far{i % 10}.test"], io.BytesIO(BODY))
            entryId = d.result
            queue.markDeferred(entryId, [f"r{i}@far{i % 10}.test"], "451 4.4.1 later", clock.seconds() + 3600)
            return entryId

        began = time.perf_counter()
        for i in range(args.entries):
            enqueue(i)
        filled = time.perf_counter() - began
        due = _median(queue.due, 20)
        counter = iter(range(args.entries, args.entries + 50))
        both = _median(lambda: (enqueue(next(counter)), queue.due()), 50)
        listed = _median(queue.list, 5)
        print(f"# {args.queue_module or 'mailplat/queue/__init__.py'}; {args.entries} entries filled in {filled:.1f} s")
        print("| entries | due ms | enqueue + pass ms | list ms |")
        print("|---:|---:|---:|---:|")
        print(f"| {args.entries} | {due:.1f} | {both:.1f} | {listed:.1f} |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
