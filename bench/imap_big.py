"""
IMAP on big mailboxes: how long SELECT, C{UID FETCH 1:* (FLAGS)},
C{FETCH 1:* (ENVELOPE)} and header SEARCHes take on one mailbox of 10,000
(and 100,000) small messages.

Over the network, mailplat beside Dovecot (the default; needs root and
Debian's dovecot-imapd):

    /work/venv/bin/python bench/imap_big.py [--messages 10000] [--repeat 3]
    /work/venv/bin/python bench/imap_big.py --messages 100000 --repeat 1     # about 5 minutes

Before and after a change, in the same runs: C{--baseline CMD} times a
second mailplat run by C{CMD} instead of the venv's twistd, for instance
an older checkout put first on C{sys.path}:

    git archive e9395e0 mailplat | tar -x -C /tmp/before
    printf 'import sys\nsys.path.insert(0, "/tmp/before")\nfrom twisted.scripts.twistd import run\nrun()\n' \
        > /tmp/twistd_before.py
    /work/venv/bin/python bench/imap_big.py --baseline "/work/venv/bin/python /tmp/twistd_before.py"

One Maildir of C{--messages} messages is written straight into C{cur/}
(L{bench.peers.maildir}), then each server in turn gets its own copy
(C{cp -al}: new directories, the files linked), is started (mailplat
with C{twistd ... --workers 1}, Dovecot from a scratch configuration,
L{bench.peers}), and one client on
127.0.0.1 runs the commands below in a first session (the server has
never seen the mailbox: mailplat builds its uidlist, Dovecot its index)
and again in a second session, then the server is stopped.  Each
command's time is from sending it to its tagged OK, read with a C-level
buffered reader, and beside it the CPU time the server's processes used
meanwhile (L{cpuSeconds}: on a machine shared with other work, CPU time
compares the servers more fairly than elapsed time); the answers are
checked (every message fetched, the same SEARCH results from both
servers).  With C{--repeat N} the whole run is repeated (the servers'
order alternating) and medians are shown.

Over a StringTransport, mailplat's IMAP layer only on a MemoryStore (no
network, no disk; the figures are the server's own Python work):

    /work/venv/bin/python bench/imap_big.py --memory [--messages 10000,100000]

Bounded: the largest size accepted is 200,000 messages, the fill stops
after 10 minutes, every command must answer within 10 minutes.
"""

import argparse
import ctypes
import ctypes.util
import os
import sys
import time
from io import BytesIO
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse  # noqa: E402
from twisted.cred.portal import Portal  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from mailplat.auth.realm import MailRealm  # noqa: E402
from mailplat.imap.cache import MessageCache  # noqa: E402
from mailplat.imap.server import IMAPFactory  # noqa: E402

ADDRESS = "bench@example.test"


def sample(n: int) -> bytes:
    """
    A small (about 300 octets) single-part message, varied by C{n}.
    """
    return (
        f"From: Sender {n % 97} <s{n % 97}@example.test>\r\n"
        f"To: Bench <{ADDRESS}>\r\n"
        f"Subject: {'Re: ' if n % 3 else ''}Topic number {n % 211}\r\n"
        f"Date: Mon, 1 Jan 2024 {n % 24:02d}:{n % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{n}@bench.example.test>\r\n"
        "\r\nA short body.\r\n"
    ).encode()


def resultOf(d: Any) -> Any:
    """
    The result of a Deferred that has fired (the MemoryStore answers at
    once).
    """
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "the store did not answer synchronously"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def fill(store: Any, messages: int) -> Any:
    account = resultOf(store.getAccount(ADDRESS, create=True))
    inbox = resultOf(account.getMailbox("INBOX"))
    for n in range(messages):
        resultOf(inbox.append(BytesIO(sample(n)), ["\\Seen"] if n % 2 else []))
    return store


class Session:
    """
    One logged-in IMAP session on a StringTransport.
    """

    def __init__(self, store: Any, cache: MessageCache) -> None:
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(ADDRESS.encode(), b"pw")
        self.clock = task.Clock()
        factory = IMAPFactory(Portal(MailRealm(store), [checker]), "bench", clock=self.clock, cache=cache)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        self.server = factory.buildProtocol(None)
        self.server.makeConnection(self.transport)
        self.command(b"x LOGIN " + ADDRESS.encode() + b" pw")

    def command(self, line: bytes) -> Tuple[float, int]:
        """
        Run one command to its tagged OK; return seconds and octets sent.
        """
        self.transport.clear()
        start = time.perf_counter()
        self.server.dataReceived(line + b"\r\n")
        # Long work (a header search reading many messages) waits a turn
        # of the clock between batches: give it the turns.
        for _ in range(100000):
            if self.server._busy is False:
                break
            self.clock.advance(0)
        elapsed = time.perf_counter() - start
        out = self.transport.value()
        assert b"\r\nx OK" in out or out.startswith(b"x OK"), out[-300:]
        return elapsed, len(out)

    def close(self) -> None:
        self.server.connectionLost(None)


def run(messages: int) -> List[Tuple[str, float, int]]:
    from mailplat.store.memory import MemoryStore

    store = fill(MemoryStore(), messages)
    rows = []
    session = Session(store, MessageCache(max(messages, 1000)))
    for label, line in [
        ("SELECT INBOX", b"x SELECT INBOX"),
        ("UID FETCH 1:* (FLAGS)", b"x UID FETCH 1:* (FLAGS)"),
        ("UID FETCH 1:* (FLAGS) again", b"x UID FETCH 1:* (FLAGS)"),
        ("FETCH 1:* (ENVELOPE) cold", b"x FETCH 1:* (ENVELOPE)"),
        ("FETCH 1:* (ENVELOPE) warm", b"x FETCH 1:* (ENVELOPE)"),
        ("SEARCH FROM s13 (warm)", b"x SEARCH FROM s13"),
        ("SEARCH UNSEEN", b"x SEARCH UNSEEN"),
    ]:
        elapsed, size = session.command(line)
        rows.append((label, elapsed, size))
    session.close()
    # A new cache: the header search reads and parses every message.
    session = Session(store, MessageCache(max(messages, 1000)))
    session.command(b"x SELECT INBOX")
    for label, line in [
        ("SEARCH FROM s13 (cold)", b"x SEARCH FROM s13"),
        ("SEARCH SUBJECT topic (warm)", b"x SEARCH SUBJECT \"topic number 7\""),
    ]:
        elapsed, size = session.command(line)
        rows.append((label, elapsed, size))
    session.close()
    resultOf(store.close())
    return rows


#: Commands of each network session: (label, command, check) where check
#: names what the answer must hold.
FIRST_SESSION = [
    ("SELECT INBOX (first: no uidlist/index yet)", b"SELECT INBOX", "exists"),
    ("UID FETCH 1:* (FLAGS)", b"UID FETCH 1:* (FLAGS)", "all"),
    ("SEARCH FROM s13 (nothing cached)", b"SEARCH FROM s13", "search"),
    ("FETCH 1:* (ENVELOPE) first", b"FETCH 1:* (ENVELOPE)", "all"),
    ("FETCH 1:* (ENVELOPE) again", b"FETCH 1:* (ENVELOPE)", "all"),
    ('SEARCH SUBJECT "topic number 7"', b'SEARCH SUBJECT "topic number 7"', "search"),
    ("SEARCH HEADER Message-ID 4242", b"SEARCH HEADER Message-ID 4242", "search"),
]
SECOND_SESSION = [
    ("new session: SELECT INBOX", b"SELECT INBOX", "exists"),
    ("new session: UID FETCH 1:* (FLAGS)", b"UID FETCH 1:* (FLAGS)", "all"),
    ("new session: FETCH 1:* (ENVELOPE)", b"FETCH 1:* (ENVELOPE)", "all"),
    ("new session: SEARCH FROM s13", b"SEARCH FROM s13", "search"),
]
USER, PASSWORD = "big@example.test", "big password"


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def cpuSeconds(pids: List[int]) -> float:
    """
    The CPU time (user and system, every thread) the processes C{pids}
    have used so far, to the nanosecond (C{clock_getcpuclockid(3)}; the
    tick counts of C{/proc/<pid>/stat} are too coarse for a command of a
    few milliseconds).  A process gone meanwhile counts 0.
    """
    total = 0.0
    for pid in pids:
        clock = ctypes.c_int()
        spec = _Timespec()
        if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0 and \
                _libc.clock_gettime(clock.value, ctypes.byref(spec)) == 0:
            total += spec.tv_sec + spec.tv_nsec / 1e9
    return total


def networkRun(server: Any, tree: str, messages: int, answers: dict) -> dict:
    """
    Give C{server} its own copy of the filled C{tree}, start it, run both
    sessions, stop it.

    @param answers: SEARCH results by command, shared between the
        servers of a run: a server answering differently stops the run.
    @return: seconds by label, and C{"memory"}: the server's summed PSS
        (KiB) after the sessions.
    """
    from bench.peers import system
    from bench.peers.imapclient import BlockingIMAP
    from bench.peers.maildir import copyTree

    copyTree(os.path.join(tree, "example.test"), os.path.join(server.mailRoot, "example.test"))
    times: dict = {}
    with server:
        for commands in (FIRST_SESSION, SECOND_SESSION):
            client = BlockingIMAP(server.ports["imap"])
            client.login(USER, PASSWORD)
            for label, line, check in commands:
                pids = server.pids()
                cpu = cpuSeconds(pids)
                start = time.perf_counter()
                lines, octets = client.command(line)
                times[label] = time.perf_counter() - start
                times[label + " cpu"] = cpuSeconds(pids) - cpu
                if check == "exists":
                    if not any(x == b"* %d EXISTS\r\n" % messages for x in lines):
                        raise SystemExit(f"{server.name}: {line!r} did not show {messages} messages: {lines[:5]!r}")
                elif check == "all":
                    fetched = sum(1 for x in lines if b" FETCH (" in x[:30])
                    if fetched != messages:
                        raise SystemExit(f"{server.name}: {line!r} fetched {fetched} of {messages} messages")
                else:
                    found = sorted(int(n) for x in lines if x.startswith(b"* SEARCH") for n in x.split()[2:])
                    if answers.setdefault(line, found) != found:
                        raise SystemExit(f"{server.name}: {line!r} found {len(found)} messages, "
                                         f"the other server {len(answers[line])}")
            client.close()
        times["memory"] = system.memoryKiB(server.pids())[1]
    return times


def network(messages: int, repeat: int, twistd: str = "", names: str = "mailplat,dovecot", baseline: str = "") -> None:
    """
    Fill one mailbox, then time both servers on their copies of it,
    C{repeat} times; print one table with medians and ratios.

    @param baseline: a command running another twistd (an older mailplat,
        see C{--baseline}): that mailplat is timed too, as C{baseline}, in
        the same rotation, for before/after figures from one run.
    """
    import shlex
    import shutil
    import tempfile

    from bench.peers import system
    from bench.peers.dovecot import Dovecot
    from bench.peers.maildir import Fill
    from bench.peers.mailplat import Mailplat

    print(f"machine: {system.machine()}")
    tree = tempfile.mkdtemp(prefix="mpbbig")
    try:
        written, took = Fill(tree).add([USER], messages, small=True, seconds=600)
        if written != messages:
            raise SystemExit(f"the fill stopped after {written} messages (10 minutes): use a smaller --messages")
        print(f"filled {messages} messages in {took:.1f} s")
        results: dict = {"mailplat": [], "baseline": [], "dovecot": []}
        answers: dict = {}

        def baselineServer() -> Any:
            server = Mailplat({USER: PASSWORD}, workers=1, twistd=shlex.split(baseline))
            server.name = "baseline"
            return server

        for n in range(repeat):
            makers = {"mailplat": lambda: Mailplat({USER: PASSWORD}, workers=1, twistd=shlex.split(twistd) or None),
                      "baseline": baselineServer,
                      "dovecot": lambda: Dovecot({USER: PASSWORD})}
            chosen = [name for name in makers if name in names.split(",") and (name != "baseline" or baseline)]
            # Each server in turn, the order rotating from run to run.
            for name in chosen[n % len(chosen):] + chosen[: n % len(chosen)]:
                server = makers[name]()
                began = time.monotonic()
                results[name].append(networkRun(server, tree, messages, answers))
                print(f"  run {n + 1}: {name} done in {time.monotonic() - began:.1f} s "
                      f"(load {system.machine().rsplit('average ', 1)[1]})", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    labels = [label for label, _, _ in FIRST_SESSION + SECOND_SESSION]
    print(f"\n{messages} messages over 127.0.0.1, median of {repeat} run(s); ratio = Dovecot time / mailplat time "
          "(above 1: mailplat faster); CPU = the server processes' CPU time during the command")

    def median(name: str, key: str) -> float:
        return system.median([r[key] for r in results[name]]) * 1000 if results[name] else float("nan")

    def memory(name: str) -> float:
        return system.median([r["memory"] for r in results[name]]) / 1024 if results[name] else float("nan")

    def table(left: str, right: str) -> None:
        """
        One row per command, C{left}'s columns then C{right}'s; the ratios
        are always the other server's figure over mailplat's.
        """
        other = right if left == "mailplat" else left

        def ratio(values: Dict[str, float]) -> str:
            return system.ratio(values["mailplat"], values[other], False)

        heads = {"mailplat": "mailplat", "dovecot": "Dovecot", "baseline": "baseline"}
        print(f"| command | {heads[left]} ms | {heads[right]} ms | ratio | {heads[left]} CPU ms "
              f"| {heads[right]} CPU ms | CPU ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label in labels:
            wall = {name: median(name, label) for name in (left, right)}
            cpu = {name: median(name, label + " cpu") for name in (left, right)}
            print(f"| {label} | {wall[left]:.1f} | {wall[right]:.1f} | {ratio(wall)} "
                  f"| {cpu[left]:.1f} | {cpu[right]:.1f} | {ratio(cpu)} |")
        mem = {name: memory(name) for name in (left, right)}
        print(f"| server memory after (PSS, MiB, all processes) | {mem[left]:.1f} | {mem[right]:.1f} | {ratio(mem)} |")

    table("mailplat", "dovecot")
    if results["baseline"]:
        print("\nbaseline (--baseline) against mailplat, same runs; ratio = baseline / mailplat (above 1: mailplat faster)")
        table("baseline", "mailplat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", default=None,
                        help="comma-separated mailbox sizes (default: 10000 over the network, 10000,100000 with --memory)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server (network), medians shown")
    parser.add_argument("--memory", action="store_true", help="mailplat only, MemoryStore over a StringTransport")
    parser.add_argument("--twistd", default="", help="command running twistd for mailplat (default: the venv's)")
    parser.add_argument("--servers", default="mailplat,dovecot", help="which servers to run (network)")
    parser.add_argument("--baseline", default="",
                        help="command running the twistd of another mailplat to time beside this one (network)")
    args = parser.parse_args()
    sizes = args.messages or ("10000,100000" if args.memory else "10000")
    counts = [min(max(1, int(n)), 200000) for n in sizes.split(",")]
    if not args.memory:
        for count in counts:
            network(count, max(1, min(args.repeat, 9)), args.twistd, args.servers + ",baseline", args.baseline)
        return
    for count in counts:
        start = time.perf_counter()
        rows = run(count)
        print(f"{count} messages, memory store (run took {time.perf_counter() - start:.1f} s)")
        print(f"  {'command':<30} {'ms':>9} {'octets':>11}")
        for label, elapsed, size in rows:
            print(f"  {label:<30} {elapsed * 1000:>9.1f} {size:>11}")


if __name__ == "__main__":
    main()
