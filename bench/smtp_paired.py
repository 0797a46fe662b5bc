"""
A change to the SMTP path measured before and after: mailplat as committed
at a revision beside this checkout, both up at the same time, in
alternating rounds.

    /work/venv/bin/python bench/smtp_paired.py --baseline REV [--rounds 10] [--sessions 10]
                                               [--size 2048] [--messages 3000] [--workers 1]

Rates on a shared machine drift by tens of percent within minutes, so a
change of a few percent shows only when the two trees take turns: each
round sends the same load to one server then the other (the order
swapping every round), each round to a user of its own, with
C{bench/smtp_accept.py}.  The first round of each server warms it up
and is left out.  Prints each round and the medians: messages/s, the
p50 from the end of DATA to the 250, and the server's CPU per message
(all its processes, the message index's parser included).

Loopback only; bounded by the rounds, the messages and a time limit per
round.  No Postfix: C{bench/compare_smtp.py} is the comparison with it.
"""

import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import smtp_accept  # noqa: E402
from bench.compare_smtp import REPO, MailplatSMTP, _commitName, _snapshot, median, revision  # noqa: E402
from bench.peers.system import cpuSeconds, settle  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, metavar="REV", help="the revision to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds per server (after one to warm up)")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048, help="message size in octets")
    parser.add_argument("--messages", type=int, default=3000, help="messages per round")
    parser.add_argument("--workers", type=int, default=1, help="mailplat's --workers, for both")
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit of one round")
    args = parser.parse_args(argv)
    snapshot = _snapshot(args.baseline)
    trees = {"baseline": snapshot, "mailplat": REPO}
    print(f"# baseline: {_commitName(args.baseline)}; mailplat: {revision(REPO)}")
    print(f"# {args.sessions} sessions, {args.size} octets, {args.messages} messages a round, "
          f"--workers {args.workers}, {args.rounds} rounds after one to warm up")
    servers: Dict[str, MailplatSMTP] = {}
    results: Dict[str, List[Dict[str, float]]] = {name: [] for name in trees}
    try:
        recipients = [f"r{n}@example.test" for n in range(args.rounds + 1)]
        for name, tree in trees.items():
            servers[name] = MailplatSMTP(recipients, args.workers, source=tree, name=name).start()
        for n in range(args.rounds + 1):
            order = list(trees) if n % 2 == 0 else list(reversed(list(trees)))
            for name in order:
                server = servers[name]
                before = cpuSeconds(server.pids())
                out = smtp_accept.run(server.port, args.sessions, args.messages, args.size, recipients[n],
                                      args.seconds)
                settle(server.pids)  # its message index, written after the burst, counts too
                cpu = cpuSeconds(server.pids()) - before
                done = int(out["messages"])  # type: ignore[call-overload]
                if out["errors"] or not done:
                    print(f"round {n} {name}: errors {out['errors'][:2]}")  # type: ignore[index]
                    return 1
                latencies = sorted(out["latencies"])  # type: ignore[type-var]
                row = {"rate": done / float(out["seconds"]),  # type: ignore[arg-type]
                       "p50": latencies[len(latencies) // 2] * 1000, "cpu": cpu / done * 1000}
                print(f"round {n} {name:8s}: {row['rate']:7.0f} msg/s, p50 {row['p50']:.2f} ms, "
                      f"CPU {row['cpu']:.3f} ms/msg{'  (warm-up)' if n == 0 else ''}", flush=True)
                if n:
                    results[name].append(row)
    finally:
        for server in servers.values():
            server.cleanup()
        shutil.rmtree(snapshot, ignore_errors=True)
    print()
    print("| tree | msg/s (median) | p50 ms | CPU ms/msg |")
    print("|---|---:|---:|---:|")
    medians = {}
    for name in trees:
        medians[name] = {key: median(results[name], key) for key in ("rate", "p50", "cpu")}  # type: ignore[arg-type]
        m = medians[name]
        print(f"| {name} | {m['rate']:.0f} | {m['p50']:.2f} | {m['cpu']:.3f} |")
    wins = sum(1 for a, b in zip(results["baseline"], results["mailplat"]) if b["rate"] > a["rate"])
    print(f"\nmailplat/baseline: {medians['mailplat']['rate'] / medians['baseline']['rate']:.3f}x msg/s; "
          f"faster in {wins} of {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
