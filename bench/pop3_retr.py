"""
POP3 on a big maildrop: login, STAT, UIDL and RETR of every message of a
10,000-message INBOX, against a running server, or mailplat beside
Dovecot in the same run on the same mail.

    python bench/pop3_retr.py --data-dir D --fill 10000      # put the messages in (Maildir store)
    python bench/pop3_retr.py [--host 127.0.0.1] [--port 1110] [--user alice@example.test] [--password pw]
                              [--window 50] [--seconds 120]

    /work/venv/bin/python bench/pop3_retr.py --vs-dovecot [--messages 10000] [--repeat 3] [--workers 1]

With C{--vs-dovecot} (root, Debian's dovecot-pop3d) one maildrop of
C{--messages} messages (1-25 KB, L{bench.peers.maildir}) is written
straight into C{cur/}, each server gets its own copy (C{cp -al}: new
directories, the files linked) and is started (L{bench.peers}), and two sessions run one after the other: the
first finds a maildrop the server has never indexed and RETR marks each
message seen, the second finds it indexed and already seen.  The
servers' order alternates between repeats; medians are shown.

Loopback only.  RETRs are pipelined C{--window} at a time (RFC 2449
PIPELINING), the way a fetching client such as fetchmail does; the
session ends with QUIT and deletes nothing, so runs can be repeated.
Bounded by the maildrop and a time limit; prints one table row.
"""

import argparse
import io
import socket
import sys
import time


def fill(dataDir: str, user: str, count: int, size: int) -> None:
    """
    Append C{count} messages of about C{size} octets to C{user}'s INBOX in
    the Maildir store under C{dataDir}, in batches that share commits.
    """
    from twisted.internet import defer, task

    from mailplat.store.maildir import MaildirStoreFactory

    line = b"y" * 76 + b"\r\n"
    body = line * max(1, size // len(line))

    @defer.inlineCallbacks
    def run(reactor):  # type: ignore[no-untyped-def]
        began = time.monotonic()
        store = MaildirStoreFactory().makeStore("", dataDir)
        account = yield store.getAccount(user, create=True)
        inbox = yield account.getMailbox("INBOX")
        for start in range(0, count, 200):
            yield defer.gatherResults([
                inbox.append(io.BytesIO(b"Subject: pop3 bench %d\r\n\r\n" % i + body))
                for i in range(start, min(count, start + 200))
            ])
        yield store.close()
        print(f"filled {count} messages in {time.monotonic() - began:.1f}s")

    task.react(run)


class Session:
    """
    A POP3 client reading replies off a buffered socket.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb", buffering=1 << 16)

    def line(self) -> bytes:
        data = self.file.readline()
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def ok(self) -> bytes:
        data = self.line()
        if not data.startswith(b"+OK"):
            raise RuntimeError(data.decode("utf-8", "replace").strip())
        return data

    def multiline(self) -> int:
        """
        Read a multi-line body to its C{.}; its size in octets.
        """
        total = 0
        while True:
            data = self.line()
            if data == b".\r\n":
                return total
            total += len(data)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def measure(host: str, port: int, user: str, password: str, window: int, seconds: float) -> dict:
    """
    One session: login, STAT, UIDL, RETR of every message (C{window} in
    flight), QUIT.

    @return: seconds by step, C{count}, C{received} and C{octets}.
    """
    timings: dict = {}
    s = Session(port, host)
    s.ok()
    start = time.monotonic()
    s.send(b"USER " + user.encode() + b"\r\n")
    s.ok()
    s.send(b"PASS " + password.encode() + b"\r\n")
    s.ok()
    timings["login"] = time.monotonic() - start

    start = time.monotonic()
    s.send(b"STAT\r\n")
    count = int(s.ok().split()[1])
    timings["STAT"] = time.monotonic() - start

    start = time.monotonic()
    s.send(b"UIDL\r\n")
    s.ok()
    s.multiline()
    timings["UIDL"] = time.monotonic() - start

    start = time.monotonic()
    deadline = start + seconds
    octets = sent = received = 0
    while received < count and time.monotonic() < deadline:
        while sent < count and sent - received < window:
            sent += 1
            s.send(b"RETR %d\r\n" % sent)
        s.ok()
        octets += s.multiline()
        received += 1
    while received < sent:
        s.ok()
        octets += s.multiline()
        received += 1
    timings["RETR"] = time.monotonic() - start
    start = time.monotonic()
    s.send(b"QUIT\r\n")
    s.ok()
    timings["QUIT"] = time.monotonic() - start
    timings.update(count=count, received=received, octets=octets)
    return timings


def versusDovecot(args: argparse.Namespace) -> int:
    """
    The same maildrop on mailplat and on Dovecot; one table with ratios.
    """
    import os
    import shutil
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.peers import system
    from bench.peers.dovecot import Dovecot
    from bench.peers.maildir import Fill, copyTree
    from bench.peers.mailplat import Mailplat

    user, password = "pop@example.test", "pop password"
    print(f"machine: {system.machine()}")
    tree = tempfile.mkdtemp(prefix="mpbpop")
    results: dict = {}
    ok = True
    try:
        written, took = Fill(tree).add([user], args.messages, seconds=600)
        print(f"filled {written} messages in {took:.1f} s")
        for n in range(max(1, min(args.repeat, 9))):
            servers = [Mailplat({user: password}, workers=args.workers), Dovecot({user: password})]
            for server in servers if n % 2 == 0 else reversed(servers):
                copyTree(os.path.join(tree, "example.test"), os.path.join(server.mailRoot, "example.test"))
                with server:
                    for session in ("first", "second"):
                        r = measure("127.0.0.1", server.ports["pop3"], user, password, args.window, args.seconds)
                        ok = ok and r["received"] == r["count"] == written
                        results.setdefault((server.name, session), []).append(r)
                        print(f"  run {n + 1}: {server.name} {session} session: RETR {r['received']} "
                              f"in {r['RETR']:.2f} s (load {system.machine().rsplit('average ', 1)[1]})", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    print(f"\nPOP3, {written} messages, window {args.window}, mailplat --workers {args.workers}, "
          f"median of {len(results[('mailplat', 'first')])} run(s); ratio = Dovecot time / mailplat time")
    print("| session | step | mailplat s | Dovecot s | ratio |")
    print("|---|---|---:|---:|---:|")
    for session in ("first", "second"):
        for step in ("login", "STAT", "UIDL", "RETR", "QUIT"):
            ours = system.median([r[step] for r in results[("mailplat", session)]])
            theirs = system.median([r[step] for r in results[("dovecot", session)]])
            print(f"| {session} | {step} | {ours:.3f} | {theirs:.3f} | {system.ratio(ours, theirs, False)} |")
        ours = system.median([r["received"] / r["RETR"] for r in results[("mailplat", session)]])
        theirs = system.median([r["received"] / r["RETR"] for r in results[("dovecot", session)]])
        print(f"| {session} | RETR messages/s | **{ours:.0f}** | {theirs:.0f} | "
              f"**{system.ratio(ours, theirs, True)}** |")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1110)
    parser.add_argument("--user", default="alice@example.test")
    parser.add_argument("--password", default="pw")
    parser.add_argument("--window", type=int, default=50, help="RETRs in flight")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop RETRs after this long")
    parser.add_argument("--data-dir", help="with --fill: the server's data directory")
    parser.add_argument("--fill", type=int, default=0, help="append this many messages first, then exit")
    parser.add_argument("--size", type=int, default=2048, help="size of the --fill messages")
    parser.add_argument("--vs-dovecot", action="store_true", help="fill, start mailplat and Dovecot, compare")
    parser.add_argument("--messages", type=int, default=10000, help="with --vs-dovecot: maildrop size")
    parser.add_argument("--repeat", type=int, default=3, help="with --vs-dovecot: runs per server")
    parser.add_argument("--workers", type=int, default=1, help="with --vs-dovecot: mailplat's --workers")
    args = parser.parse_args()
    if args.fill:
        if not args.data_dir:
            parser.error("--fill needs --data-dir")
        fill(args.data_dir, args.user, args.fill, args.size)
        return 0

    if args.vs_dovecot:
        return versusDovecot(args)
    timings = measure(args.host, args.port, args.user, args.password, args.window, args.seconds)
    count, received, octets = timings["count"], timings["received"], timings["octets"]
    print("| messages | login s | STAT s | UIDL s | RETR all s | RETR messages/s | MB/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    retr = timings["RETR"] or 1e-9
    print(f"| {received} | {timings['login']:.3f} | {timings['STAT']:.3f} | {timings['UIDL']:.3f} "
          f"| {retr:.2f} | {received / retr:.0f} | {octets / retr / 1e6:.1f} |")
    return 0 if received == count else 1


if __name__ == "__main__":
    sys.exit(main())
