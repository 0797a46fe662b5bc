"""
What an idle IMAP client costs the server: open C{--connections} (2,000
by default) sessions that log in, select INBOX and enter IDLE, then report
how much the server process's resident memory (C{VmRSS} in
C{/proc/<pid>/status}) grew per connection.  Bounded: at most
C{--parallel} logins in flight, one pass, then every connection closes.

Against a server started here (its own process, a Maildir store in a
temporary directory, limits raised for the run):

    /work/venv/bin/python bench/idle_connections.py [--connections 2000]

Against a running server (give its pid, so its memory can be read, and
an account that exists; the server's C{limits.max_connections},
C{limits.exempt_loopback} and login throttle, which counts logins under
way against the account, must allow the count and C{--parallel}):

    /work/venv/bin/python bench/idle_connections.py --port 1143 --pid PID \\
        --user alice@example.test --password-file FILE

Ten thousand connections need about that many descriptors on each side
(server and this client):

    ulimit -n 25000 && /work/venv/bin/python bench/idle_connections.py --connections 10000

The figure printed is (RSS with every session idling - RSS after one
warm-up session) / connections; the first session pays for imports and
caches, so it is left out.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, protocol  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

USER = "bench@example.test"
PASSWORD = "bench password 1"


def rssKiB(pid: int) -> int:
    """
    The resident set size of process C{pid}, in KiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


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


def spawnServer(count: int) -> "tuple[subprocess.Popen, int]":
    """
    Start a server in its own process (see L{serve}); return it and its
    IMAP port.
    """
    dataDir = tempfile.mkdtemp(prefix="mailplat-bench-idle-")
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", dataDir, "--connections", str(count)],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.startswith(b"port "):
        child.kill()
        raise SystemExit(f"the server did not start (said {line!r})")
    return child, int(line.split()[1])


def serve(dataDir: str, count: int) -> None:
    """
    The child process: a mailplat server with only IMAP on an ephemeral
    loopback port and one account; prints C{port N}, serves until its
    standard input closes.
    """
    from twisted.internet import reactor, stdio

    from mailplat.auth.passwd import PasswordFile
    from mailplat.config import DEFAULT_LISTENERS, DISABLED, Config
    from mailplat.service import Server

    config = Config(
        hostname="mail.example.test",
        dataDir=dataDir,
        listeners={name: DISABLED for name in DEFAULT_LISTENERS},
        maxConnections=count + 100,
        exemptLoopback=True,
        # Logins under way count against the account until they succeed:
        # thousands at once would be throttled.
        loginDelayAfter=count + 100,
        loginRefuseAfter=count + 200,
    )
    server = Server(config)
    PasswordFile(os.path.join(dataDir, "passwd")).setPassword(USER, PASSWORD)

    class Stop(protocol.Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()

    def started(_: object) -> None:
        port = reactor.listenTCP(0, server.factories["imap"], interface="127.0.0.1", backlog=1024)
        sys.stdout.write(f"port {port.getHost().port}\n")
        sys.stdout.flush()
        stdio.StandardIO(Stop())

    server.store.getAccount(USER, create=True).addCallback(started)
    reactor.run()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=100, help="logins in flight at once")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="a running server's IMAP port (default: start one)")
    parser.add_argument("--pid", type=int, help="the running server's process id")
    parser.add_argument("--user", default=USER)
    parser.add_argument("--password-file", help="file holding the password (default: the spawned server's)")
    parser.add_argument("--no-select", action="store_true", help="log in only: no SELECT, no IDLE")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.connections)
        return

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"{args.connections} connections need about {need} descriptors; `ulimit -n` allows {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    child = None
    password = PASSWORD
    if args.port is None:
        child, port = spawnServer(args.connections)
        pid = child.pid
    else:
        if args.pid is None:
            raise SystemExit("--port needs --pid (the server whose memory is measured)")
        port, pid = args.port, args.pid
        if args.password_file:
            with open(args.password_file) as f:
                password = f.read().strip()

    from twisted.internet import reactor

    outcome: dict = {}

    @defer.inlineCallbacks
    def run():
        select = not args.no_select
        warm = yield openSessions(reactor, args.host, port, 1, 1, args.user, password, select)
        if not warm:
            raise RuntimeError("the warm-up session failed")
        before = rssKiB(pid)
        started = time.monotonic()
        clients = yield openSessions(reactor, args.host, port, args.connections, args.parallel, args.user, password, select)
        elapsed = time.monotonic() - started
        # Let the server settle (buffers released, deferred work done).
        from twisted.internet import task

        yield task.deferLater(reactor, 1.0, lambda: None)
        after = rssKiB(pid)
        outcome.update(before=before, after=after, opened=len(clients), elapsed=elapsed)
        for client in clients + warm:
            client.transport.loseConnection()

    def done(result: object) -> None:
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: run().addErrback(lambda f: print(f.getTraceback())).addBoth(done))
    reactor.run()
    if child is not None:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
    if not outcome:
        raise SystemExit(1)
    grown = outcome["after"] - outcome["before"]
    opened = outcome["opened"]
    print(f"sessions idling: {opened} of {args.connections} ({'login only' if args.no_select else 'SELECT INBOX + IDLE'})")
    print(f"opened in {outcome['elapsed']:.1f} s")
    print(f"server RSS: {outcome['before'] / 1024:.1f} MiB before, {outcome['after'] / 1024:.1f} MiB after")
    if opened:
        print(f"growth per connection: {grown * 1024 / opened / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
