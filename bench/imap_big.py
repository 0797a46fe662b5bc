"""
IMAP on big mailboxes: how long SELECT, C{UID FETCH 1:* (FLAGS)},
C{FETCH 1:* (ENVELOPE)} (cold cache, then warm) and a header SEARCH take
on one mailbox of 10,000 and 100,000 small messages, over a
StringTransport (no network: the figures are the server's own work).

    /work/venv/bin/python bench/imap_big.py [--messages 10000,100000]

The mailbox is a MemoryStore filled through the store (not timed), so
the figures leave out disk reads: they are the IMAP layer's cost.  (The
Maildir store answers from its thread pool, which a StringTransport
session without a running reactor cannot wait on.)  Bounded: the largest
size accepted is 200,000 messages.
"""

import argparse
import os
import sys
import time
from io import BytesIO
from typing import Any, List, Tuple

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
        factory = IMAPFactory(Portal(MailRealm(store), [checker]), "bench", clock=task.Clock(), cache=cache)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", default="10000,100000", help="comma-separated mailbox sizes")
    args = parser.parse_args()
    for count in [min(max(1, int(n)), 200000) for n in args.messages.split(",")]:
        start = time.perf_counter()
        rows = run(count)
        print(f"{count} messages, memory store (run took {time.perf_counter() - start:.1f} s)")
        print(f"  {'command':<30} {'ms':>9} {'octets':>11}")
        for label, elapsed, size in rows:
            print(f"  {label:<30} {elapsed * 1000:>9.1f} {size:>11}")


if __name__ == "__main__":
    main()
