"""
A mixed IMAP workload, mailplat beside Dovecot in the same run on the same
mail: C{--clients} sessions at once (10 and 50 by default), each on its
own account, each repeating a round of

    connect, LOGIN, SELECT INBOX, FETCH the newest 50 (UID FLAGS
    RFC822.SIZE ENVELOPE), FETCH 5 random messages BODY.PEEK[], STORE a
    5-message range +FLAGS or -FLAGS (\\Flagged) (by turns), APPEND a
    message, NOOP, UID STORE it +FLAGS.SILENT (\\Deleted), EXPUNGE, IDLE
    (entered, then DONE after C{--idle-ms}), LOGOUT

for C{--seconds} (or C{--rounds} rounds per client, whichever ends
first).  Prints operations per second (every command above, and the
connection, is one operation) and the p50/p99 of each operation, for
each server, with ratios.

    /work/venv/bin/python bench/imap_mixed.py [--clients 10,50] [--seconds 10] [--repeat 3]
                                              [--messages 1000] [--workers 2]

Needs root and Debian's dovecot-imapd.  Each account's INBOX holds
C{--messages} messages (text, multipart/alternative and attachments,
1-25 KB; L{bench.peers.maildir}) written straight into C{cur/} once and
linked (C{cp -al}, L{bench.peers.maildir.copyTree}) for every server
and every run, so both servers start each run from the same files and neither has seen them (each builds its
own uidlist or index).  Before the timed part every client logs in and
selects once (untimed), so the figures are the steady state.  mailplat
runs under C{twistd ... --workers N} (default 2, one per core, the
default of a real start; L{bench.peers.mailplat}), Dovecot from a scratch
configuration (L{bench.peers.dovecot}); passwords are plain secrets on
both (Twisted's C{memory:} checker, Dovecot's C{{PLAIN}} passwd-file).
The servers' order alternates between repeats; medians over the repeats
are shown.  With C{--baseline CMD}, a second mailplat run by C{CMD} (say
an older checkout: C{"env PYTHONPATH=/tmp/old /work/venv/bin/twistd"},
after C{git worktree add /tmp/old HEAD}) joins the alternation, for a
paired before/after comparison in one run (C{--servers
mailplat,baseline} leaves Dovecot out).  Loopback only; bounded by C{--seconds} per server and run
(at most 300) and a 60-second limit on every command.
"""

import argparse
import asyncio
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.peers import system  # noqa: E402
from bench.peers.dovecot import Dovecot  # noqa: E402
from bench.peers.imapclient import AsyncIMAP, IMAPError  # noqa: E402
from bench.peers.maildir import Fill, copyTree, message  # noqa: E402
from bench.peers.mailplat import Mailplat  # noqa: E402

OPERATIONS = [
    "connect", "LOGIN", "SELECT", "FETCH 50 envelopes", "FETCH 5 bodies", "STORE flags", "APPEND", "NOOP",
    "STORE \\Deleted", "EXPUNGE", "IDLE+DONE", "LOGOUT",
]
TIMEOUT = 60.0


class Baseline(Mailplat):
    """
    mailplat run by another command (C{--baseline}), reported apart.
    """

    name = "baseline"


def address(n: int) -> str:
    return f"c{n}@example.test"


def password(n: int) -> str:
    return f"pw{n}"


class Client:
    """
    One simulated user: rounds of the mixed workload on its own account,
    timing each operation.
    """

    def __init__(self, n: int, port: int, messages: int, idle: float, samples: Dict[str, List[float]]) -> None:
        self.n = n
        self.port = port
        self.messages = messages
        self.idle = idle
        self.samples = samples
        self.rng = random.Random(n)
        self.rounds = 0

    async def timed(self, name: str, work):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        result = await asyncio.wait_for(work, TIMEOUT)
        self.samples[name].append(time.perf_counter() - start)
        return result

    async def warmUp(self) -> None:
        """
        Log in and select once, untimed: the server builds its uidlist or
        index here.
        """
        imap = await AsyncIMAP.connect(self.port)
        await imap.command(b'LOGIN "%s" "%s"' % (address(self.n).encode(), password(self.n).encode()))
        await asyncio.wait_for(imap.command(b"SELECT INBOX"), 600)
        await imap.close()

    async def round(self) -> None:
        imap = await self.timed("connect", AsyncIMAP.connect(self.port))
        await self.timed("LOGIN", imap.command(
            b'LOGIN "%s" "%s"' % (address(self.n).encode(), password(self.n).encode())))
        lines = await self.timed("SELECT", imap.command(b"SELECT INBOX"))
        exists = next(int(x.split()[1]) for x in lines if x.endswith(b" EXISTS\r\n"))
        if exists != self.messages:
            raise IMAPError(f"{address(self.n)} has {exists} messages, expected {self.messages}")
        lines = await self.timed("FETCH 50 envelopes", imap.command(
            b"FETCH %d:%d (UID FLAGS RFC822.SIZE ENVELOPE)" % (max(1, exists - 49), exists)))
        if sum(1 for x in lines if b" FETCH (" in x[:30]) != min(50, exists):
            raise IMAPError("FETCH envelopes: wrong count")
        picks = sorted(self.rng.sample(range(1, exists + 1), min(5, exists)))
        lines = await self.timed("FETCH 5 bodies", imap.command(
            b"FETCH %s (BODY.PEEK[])" % b",".join(b"%d" % p for p in picks)))
        if sum(1 for x in lines if b" FETCH (" in x[:30]) != len(picks):
            raise IMAPError("FETCH bodies: wrong count")
        first = self.rng.randint(1, max(1, exists - 4))
        sign = b"+" if self.rounds % 2 == 0 else b"-"
        await self.timed("STORE flags", imap.command(
            b"STORE %d:%d %sFLAGS (\\Flagged)" % (first, min(exists, first + 4), sign)))
        body = message(100000 + self.n * 1000 + self.rounds % 1000).replace(b"\n", b"\r\n")
        lines = await self.timed("APPEND", imap.append(b"INBOX", b"\\Seen", body))
        tagged = lines[-1]
        if b"[APPENDUID " not in tagged:
            raise IMAPError(f"APPEND gave no APPENDUID: {tagged!r}")
        uid = int(tagged.split(b"[APPENDUID ", 1)[1].split(b"]", 1)[0].split()[1])
        await self.timed("NOOP", imap.command(b"NOOP"))
        await self.timed("STORE \\Deleted", imap.command(b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid))
        lines = await self.timed("EXPUNGE", imap.command(b"EXPUNGE"))
        if sum(1 for x in lines if x.endswith(b" EXPUNGE\r\n")) != 1:
            raise IMAPError(f"EXPUNGE removed {lines!r}, not the one appended message")
        await self.timed("IDLE+DONE", imap.idle(self.idle))
        await self.timed("LOGOUT", imap.close())
        self.rounds += 1


async def drive(port: int, clients: int, messages: int, seconds: float, rounds: int, idle: float,
                serverCPU: Callable[[], float] = lambda: 0.0) -> dict:
    """
    Warm up, then run C{clients} clients until C{seconds} or C{rounds}.

    @return: elapsed seconds, operation samples, rounds, client CPU
        seconds, the server's CPU seconds (from C{serverCPU}), errors.
    """
    samples: Dict[str, List[float]] = {name: [] for name in OPERATIONS}
    users = [Client(n, port, messages, idle, samples) for n in range(clients)]
    await asyncio.gather(*(u.warmUp() for u in users))
    errors: List[str] = []
    deadline = time.monotonic() + seconds

    async def loop(user: Client) -> None:
        while user.rounds < rounds and time.monotonic() < deadline:
            try:
                await user.round()
            except (IMAPError, OSError, asyncio.TimeoutError) as e:
                errors.append(f"{address(user.n)}: {e!r}")
                return

    cpu = time.process_time()
    server = serverCPU()
    start = time.perf_counter()
    await asyncio.gather(*(loop(u) for u in users))
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "samples": samples, "rounds": sum(u.rounds for u in users),
            "cpu": time.process_time() - cpu, "serverCPU": serverCPU() - server, "errors": errors}


def measure(server, tree: str, clients: int, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    """
    Copy the fill for C{server}, start it, drive it, stop it.
    """
    copyTree(os.path.join(tree, "example.test"), os.path.join(server.mailRoot, "example.test"))
    with server:
        result = asyncio.run(drive(server.ports["imap"], clients, args.messages, args.seconds, args.rounds,
                                   args.idle_ms / 1000, lambda: system.cpuSeconds(server.pids())))
        result["memory"] = system.memoryKiB(server.pids())[1]
        if result["errors"]:
            print(f"    {server.name}: {len(result['errors'])} client(s) failed; first: {result['errors'][0]}")
            print(server.log()[-2000:])
    ops = sum(len(v) for v in result["samples"].values())
    result["ops"] = ops / result["elapsed"]
    return result


def report(clients: int, results: Dict[str, List[dict]], args: argparse.Namespace) -> None:
    def med(name: str, f) -> float:  # type: ignore[no-untyped-def]
        return system.median([f(r) for r in results[name]])

    runs = max(len(r) for r in results.values())
    if results.get("baseline"):
        reportBaseline(clients, results, args, med)
        if not results["dovecot"]:
            return
    for name in ("mailplat", "dovecot"):
        if not results[name]:
            results[name] = [{"ops": 0.0, "rounds": 0, "elapsed": 1.0, "cpu": 0.0, "serverCPU": 0.0, "memory": 0,
                              "samples": {op: [] for op in OPERATIONS}}]
    print(f"\n{clients} clients, {args.messages} messages per INBOX, mailplat --workers {args.workers}, "
          f"median of {runs} run(s) of {args.seconds:.0f} s")
    ours, theirs = med("mailplat", lambda r: r["ops"]), med("dovecot", lambda r: r["ops"])
    print("| | mailplat | Dovecot | mailplat/Dovecot |")
    print("|---|---:|---:|---:|")
    print(f"| operations/s | **{ours:.0f}** | {theirs:.0f} | **{system.ratio(ours, theirs, True)}** |")
    r1, r2 = med("mailplat", lambda r: r["rounds"] / r["elapsed"]), med("dovecot", lambda r: r["rounds"] / r["elapsed"])
    print(f"| rounds/s | {r1:.1f} | {r2:.1f} | {system.ratio(r1, r2, True)} |")
    c1, c2 = med("mailplat", lambda r: r["cpu"] / r["elapsed"]), med("dovecot", lambda r: r["cpu"] / r["elapsed"])
    print(f"| load generator CPU (cores) | {c1:.2f} | {c2:.2f} | |")
    s1, s2 = med("mailplat", cpuPerOperation), med("dovecot", cpuPerOperation)
    print(f"| server CPU ms per operation | {s1 * 1000:.2f} | {s2 * 1000:.2f} | {system.ratio(s1, s2, False)} |")
    m1, m2 = med("mailplat", lambda r: r["memory"] / 1024), med("dovecot", lambda r: r["memory"] / 1024)
    print(f"| server memory at the end (PSS, MiB) | {m1:.0f} | {m2:.0f} | |")
    print("\n| operation | mailplat p50 ms | p99 ms | Dovecot p50 ms | p99 ms | p50 ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for op in OPERATIONS:
        p = {name: (med(name, lambda r: system.percentile(r["samples"][op], 0.5)) * 1000,
                    med(name, lambda r: system.percentile(r["samples"][op], 0.99)) * 1000) for name in results}
        print(f"| {op} | {p['mailplat'][0]:.2f} | {p['mailplat'][1]:.2f} | {p['dovecot'][0]:.2f} | "
              f"{p['dovecot'][1]:.2f} | {system.ratio(p['mailplat'][0], p['dovecot'][0], False)} |")


def cpuPerOperation(result: dict) -> float:
    """
    The server's CPU seconds per operation in one run.
    """
    return float(result["serverCPU"]) / max(1, sum(len(v) for v in result["samples"].values()))


def reportBaseline(clients: int, results: Dict[str, List[dict]], args: argparse.Namespace, med) -> None:  # type: ignore[no-untyped-def]
    """
    The paired comparison of mailplat with the C{--baseline} mailplat:
    each run's figure, and the medians.
    """
    print(f"\n{clients} clients, mailplat against the baseline ({args.baseline}), --workers {args.workers}, "
          f"{len(results['baseline'])} run(s) each of {args.seconds:.0f} s, alternating")
    print("| | mailplat | baseline | mailplat/baseline |")
    print("|---|---:|---:|---:|")
    for n, (ours, theirs) in enumerate(zip(results["mailplat"], results["baseline"]), 1):
        print(f"| run {n} operations/s | {ours['ops']:.0f} | {theirs['ops']:.0f} | "
              f"{system.ratio(ours['ops'], theirs['ops'], True)} |")
    ours, theirs = med("mailplat", lambda r: r["ops"]), med("baseline", lambda r: r["ops"])
    print(f"| median operations/s | **{ours:.0f}** | {theirs:.0f} | **{system.ratio(ours, theirs, True)}** |")
    c1, c2 = med("mailplat", cpuPerOperation), med("baseline", cpuPerOperation)
    print(f"| server CPU ms per operation | {c1 * 1000:.2f} | {c2 * 1000:.2f} | {system.ratio(c1, c2, False)} |")
    print("\n| operation | mailplat p50 ms | p99 ms | baseline p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for op in OPERATIONS:
        p = {name: (med(name, lambda r: system.percentile(r["samples"][op], 0.5)) * 1000,
                    med(name, lambda r: system.percentile(r["samples"][op], 0.99)) * 1000)
             for name in ("mailplat", "baseline")}
        print(f"| {op} | {p['mailplat'][0]:.2f} | {p['mailplat'][1]:.2f} | {p['baseline'][0]:.2f} | "
              f"{p['baseline'][1]:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="10,50", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--messages", type=int, default=1000, help="messages in each account's INBOX")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed part of each run")
    parser.add_argument("--rounds", type=int, default=100000, help="most rounds per client and run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server and client count")
    parser.add_argument("--workers", type=int, default=2, help="mailplat's --workers")
    parser.add_argument("--idle-ms", type=float, default=0.0, help="time spent in IDLE before DONE")
    parser.add_argument("--twistd", default="", help="command running twistd for mailplat (default: the venv's)")
    parser.add_argument("--baseline", default="",
                        help="command running twistd for a second mailplat measured in alternation (a paired "
                             "before/after run)")
    parser.add_argument("--servers", default="mailplat,dovecot",
                        help="which servers to run (mailplat, dovecot; baseline is added by --baseline)")
    args = parser.parse_args()
    args.seconds = min(max(1.0, args.seconds), 300.0)
    args.messages = min(max(10, args.messages), 20000)
    counts = [min(max(1, int(c)), 500) for c in args.clients.split(",")]
    print(f"machine: {system.machine()}")
    tree = tempfile.mkdtemp(prefix="mpbmix")
    failed = False
    try:
        written, took = Fill(tree).add([address(n) for n in range(max(counts))], args.messages)
        print(f"filled {max(counts)} INBOXes of {written} messages in {took:.1f} s")
        for clients in counts:
            users = {address(n): password(n) for n in range(clients)}
            results: Dict[str, List[dict]] = {"mailplat": [], "dovecot": [], "baseline": []}
            wanted = args.servers.split(",") + (["baseline"] if args.baseline else [])
            for run in range(max(1, min(args.repeat, 9))):
                makers = {"mailplat": lambda: Mailplat(users, connections=clients + 10, workers=args.workers,
                                                       twistd=shlex.split(args.twistd) or None),
                          "baseline": lambda: Baseline(users, connections=clients + 10, workers=args.workers,
                                                       twistd=shlex.split(args.baseline)),
                          "dovecot": lambda: Dovecot(users, connections=clients + 10)}
                servers = [make() for name, make in makers.items() if name in wanted]
                for server in servers if run % 2 == 0 else reversed(servers):
                    result = measure(server, tree, clients, args)
                    failed = failed or bool(result["errors"])
                    results[server.name].append(result)
                    print(f"  {clients} clients, run {run + 1}: {server.name} {result['ops']:.0f} ops/s "
                          f"(load {system.machine().rsplit('average ', 1)[1]})", flush=True)
            report(clients, results, args)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
