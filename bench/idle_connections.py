"""
What idle IMAP clients cost the server: open C{--connections} sessions
that log in, select INBOX and enter IDLE, then report the server's memory
with every session idling: the resident set size (RSS) and the
proportional set size (PSS: shared pages divided among the processes
sharing them) summed over all the server's processes, from
C{/proc/<pid>/smaps_rollup}, and the growth per connection.  Bounded: at
most C{--parallel} logins in flight, one pass, then every connection
closes.

mailplat beside Dovecot (needs root and Debian's dovecot-imapd; the
default): both get their own copy of one account whose INBOX holds
C{--messages} messages (written straight into C{cur/},
L{bench.peers.maildir}); mailplat runs under C{twistd ... --workers 1}
with its limits and login throttle raised for the run
(L{bench.peers.mailplat}), Dovecot from a scratch configuration
(L{bench.peers.dovecot}) that gives each session its own C{imap}
process, so it is measured on fewer connections (C{--dovecot-connections},
1,000 by default) and compared per connection:

    ulimit -n 25000
    /work/venv/bin/python bench/idle_connections.py [--connections 10000] [--dovecot-connections 1000]
    /work/venv/bin/python bench/idle_connections.py --server mailplat --connections 10000

Against a running server (give its pid, whose process tree is measured,
and an account that exists; the server's C{limits.max_connections},
C{limits.exempt_loopback} and login throttle, which counts logins under
way against the account, must allow the count and C{--parallel}):

    /work/venv/bin/python bench/idle_connections.py --port 1143 --pid PID \\
        --user alice@example.test --password-file FILE

Ten thousand connections need about that many descriptors on each side
(server and this client).  The growth is (memory with every session
idling - memory after one warm-up session) / connections; the first
session pays for imports and caches, so it is left out.
"""

import argparse
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Callable, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, protocol  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from bench.peers import system  # noqa: E402
from bench.peers.dovecot import Dovecot  # noqa: E402
from bench.peers.maildir import Fill, copyTree  # noqa: E402
from bench.peers.mailplat import Mailplat  # noqa: E402

USER = "bench@example.test"
PASSWORD = "bench password 1"


class IdleClient(LineReceiver):
    """
    Log in, SELECT INBOX, IDLE; L{ready} fires at the IDLE continuation.
    """

    delimiter = b"\r\n"

    def __init__(self, user: str, password: str, select: bool) -> None:
        self.user = user
        self.password = password
        self.select = select
        self.ready: defer.Deferred = defer.Deferred()
        self.step = "greeting"

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)

    def lineReceived(self, line: bytes) -> None:
        if self.ready.called:
            return
        if self.step == "greeting" and line.startswith(b"* OK"):
            self.step = "login"
            self.sendLine(b'a LOGIN "%s" "%s"' % (self.user.encode(), self.password.encode()))
        elif line.startswith(b"a "):
            if not line.startswith(b"a OK"):
                self.ready.errback(RuntimeError(f"LOGIN: {line!r}"))
            elif self.select:
                self.sendLine(b"b SELECT INBOX")
            else:
                self.ready.callback(self)
        elif line.startswith(b"b "):
            if not line.startswith(b"b OK"):
                self.ready.errback(RuntimeError(f"SELECT: {line!r}"))
            else:
                self.sendLine(b"c IDLE")
        elif line.startswith(b"+ "):
            self.ready.callback(self)
        elif line.startswith(b"* BYE"):
            self.ready.errback(RuntimeError(f"refused: {line!r}"))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("connection closed before the session was ready"))


@defer.inlineCallbacks
def openSessions(reactor: Any, host: str, port: int, count: int, parallel: int, user: str, password: str, select: bool):
    """
    Open C{count} ready sessions, at most C{parallel} being set up at once.

    @return: a Deferred firing with the clients.
    """
    clients: List[IdleClient] = []
    semaphore = defer.DeferredSemaphore(parallel)

    def one() -> defer.Deferred:
        client = IdleClient(user, password, select)
        factory = protocol.Factory.forProtocol(lambda: client)
        creator = protocol.ClientCreator(reactor, lambda: client)
        del factory
        d = creator.connectTCP(host, port, timeout=30)
        d.addCallback(lambda _: client.ready)
        return d

    work = [semaphore.run(one) for _ in range(count)]
    results = yield defer.DeferredList(work, consumeErrors=True)
    failures = [r for ok, r in results if not ok]
    clients = [r for ok, r in results if ok]
    if failures:
        print(f"{len(failures)} session(s) failed; first: {failures[0].getErrorMessage()}")
    return clients


def measure(host: str, port: int, pids: Callable[[], List[int]], count: int, parallel: int, user: str,
            password: str, select: bool) -> dict:
    """
    Open one warm-up session, read the memory, open C{count} more, wait a
    second, read it again, close them all.

    @param pids: gives the server's processes at the time of asking.
    @return: C{before} and C{after} (RSS, PSS) in KiB, C{opened},
        C{elapsed} and C{processes} (how many there were at the end).
    """
    from twisted.internet import reactor, task

    outcome: dict = {}

    @defer.inlineCallbacks
    def run():  # type: ignore[no-untyped-def]
        warm = yield openSessions(reactor, host, port, 1, 1, user, password, select)
        if not warm:
            raise RuntimeError("the warm-up session failed")
        yield task.deferLater(reactor, 1.0, lambda: None)
        before = system.memoryKiB(pids())
        started = time.monotonic()
        clients = yield openSessions(reactor, host, port, count, parallel, user, password, select)
        elapsed = time.monotonic() - started
        # Let the server settle (buffers released, deferred work done).
        yield task.deferLater(reactor, 2.0, lambda: None)
        processes = pids()
        after = system.memoryKiB(processes)
        outcome.update(before=before, after=after, opened=len(clients), elapsed=elapsed,
                       processes=len(processes), commands=Counter(system.commandName(p) for p in processes))
        for client in clients + warm:
            client.transport.loseConnection()
        yield task.deferLater(reactor, 1.0, lambda: None)

    def done(result: object) -> None:
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: run().addErrback(lambda f: print(f.getTraceback())).addBoth(done))
    reactor.run()
    if not outcome:
        raise SystemExit(1)
    return outcome


def show(name: str, outcome: dict, select: bool) -> None:
    """
    Print one server's figures.
    """
    opened = outcome["opened"]
    (rss0, pss0), (rss1, pss1) = outcome["before"], outcome["after"]
    kinds = ", ".join(f"{n} {c}" for c, n in outcome["commands"].most_common(4))
    print(f"{name}: {opened} sessions idling ({'SELECT INBOX + IDLE' if select else 'login only'}), "
          f"opened in {outcome['elapsed']:.1f} s; {outcome['processes']} processes ({kinds})")
    print(f"  RSS summed: {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB after; "
          f"PSS summed: {pss0 / 1024:.1f} MiB before, {pss1 / 1024:.1f} MiB after")
    if opened:
        print(f"  per connection: RSS {(rss1 - rss0) / opened:.1f} KiB, PSS {(pss1 - pss0) / opened:.1f} KiB")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000, help="sessions on mailplat (or the running server)")
    parser.add_argument("--dovecot-connections", type=int, default=1000, help="sessions on Dovecot")
    parser.add_argument("--server", choices=["both", "mailplat", "dovecot"], default="both")
    parser.add_argument("--messages", type=int, default=1000, help="messages in the account's INBOX")
    parser.add_argument("--parallel", type=int, default=100, help="logins in flight at once")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="a running server's IMAP port (default: start them here)")
    parser.add_argument("--pid", type=int, help="the running server's process id")
    parser.add_argument("--user", default=USER)
    parser.add_argument("--password-file", help="file holding the running server's password")
    parser.add_argument("--no-select", action="store_true", help="log in only: no SELECT, no IDLE")
    parser.add_argument("--twistd", default="", help="command running twistd for mailplat (default: the venv's)")
    args = parser.parse_args(argv)
    select = not args.no_select

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.connections, args.dovecot_connections) + 200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"{args.connections} connections need about {need} descriptors; `ulimit -n` allows {hard}")
        # Raised here, and inherited by the servers started below.
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    if args.port is not None:
        if args.pid is None:
            raise SystemExit("--port needs --pid (the server whose memory is measured)")
        password = PASSWORD
        if args.password_file:
            with open(args.password_file) as f:
                password = f.read().strip()
        outcome = measure(args.host, args.port, lambda: system.processTree(args.pid), args.connections,
                          args.parallel, args.user, password, select)
        show(f"server {args.pid}", outcome, select)
        return

    # The Twisted reactor runs once per process: each server is measured
    # by a child process of this script.
    print(f"machine: {system.machine()}")
    names = ["mailplat", "dovecot"] if args.server == "both" else [args.server]
    tree = tempfile.mkdtemp(prefix="mpbidle")
    try:
        written, took = Fill(tree).add([USER], max(1, args.messages))
        print(f"filled one INBOX of {written} messages in {took:.1f} s", flush=True)
        for name in names:
            count = args.connections if name == "mailplat" else args.dovecot_connections
            subprocess.run([sys.executable, os.path.abspath(__file__), "--_one", name, tree, str(count),
                            str(args.parallel), "1" if select else "0", args.twistd], check=False)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def one(name: str, tree: str, count: int, parallel: int, select: bool, twistd: str = "") -> None:
    """
    In a child process: start one server on a copy of C{tree}, measure it,
    stop it.
    """
    users = {USER: PASSWORD}
    if name == "mailplat":
        server: Any = Mailplat(users, connections=count, workers=1, twistd=shlex.split(twistd) or None)
    else:
        server = Dovecot(users, connections=count)
    copyTree(os.path.join(tree, "example.test"), os.path.join(server.mailRoot, "example.test"))
    with server:
        outcome = measure("127.0.0.1", server.ports["imap"], server.pids, count, parallel, USER, PASSWORD, select)
        show(f"{name} ({'twistd --workers 1' if name == 'mailplat' else 'one imap process per session'})",
             outcome, select)
        if name == "dovecot":
            sessions = server.sessionPids()
            rss, pss = system.memoryKiB(sessions)
            print(f"  (after closing: {len(sessions)} imap processes left, PSS {pss / 1024:.1f} MiB)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_one":
        one(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1", sys.argv[7])
    else:
        main()
