"""
POP3 on a big maildrop: login, STAT, UIDL and RETR of every message of a
10,000-message INBOX, against a running server.

    python bench/pop3_retr.py --data-dir D --fill 10000      # put the messages in (Maildir store)
    python bench/pop3_retr.py [--port 1110] [--user alice@example.test] [--password pw]
                              [--window 50] [--seconds 120]

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

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=1110)
    parser.add_argument("--user", default="alice@example.test")
    parser.add_argument("--password", default="pw")
    parser.add_argument("--window", type=int, default=50, help="RETRs in flight")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop RETRs after this long")
    parser.add_argument("--data-dir", help="with --fill: the server's data directory")
    parser.add_argument("--fill", type=int, default=0, help="append this many messages first, then exit")
    parser.add_argument("--size", type=int, default=2048, help="size of the --fill messages")
    args = parser.parse_args()
    if args.fill:
        if not args.data_dir:
            parser.error("--fill needs --data-dir")
        fill(args.data_dir, args.user, args.fill, args.size)
        return 0

    timings = {}
    s = Session(args.port)
    s.ok()
    start = time.monotonic()
    s.send(b"USER " + args.user.encode() + b"\r\n")
    s.ok()
    s.send(b"PASS " + args.password.encode() + b"\r\n")
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
    deadline = start + args.seconds
    octets = sent = received = 0
    while received < count and time.monotonic() < deadline:
        while sent < count and sent - received < args.window:
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
    s.send(b"QUIT\r\n")
    s.ok()

    print("| messages | login s | STAT s | UIDL s | RETR all s | RETR messages/s | MB/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    retr = timings["RETR"] or 1e-9
    print(f"| {received} | {timings['login']:.3f} | {timings['STAT']:.3f} | {timings['UIDL']:.3f} "
          f"| {retr:.2f} | {received / retr:.0f} | {octets / retr / 1e6:.1f} |")
    return 0 if received == count else 1


if __name__ == "__main__":
    sys.exit(main())
