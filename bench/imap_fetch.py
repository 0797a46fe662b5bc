"""
How long C{FETCH 1:* (ENVELOPE)} (and SORT) take on a big MemoryStore
mailbox, with and without the parsed-message cache
(L{mailplat.imap.cache}).  Bounded: one mailbox of C{--messages} messages,
a few commands, over a StringTransport (no network), printing a table.

    /work/venv/bin/python bench/imap_fetch.py [--messages 10000]

With C{--server-module PATH} the session class is loaded from that file
instead (for example an older C{mailplat/imap/server.py} taken with
C{git show}), to measure before/after on the same machine.
"""

import argparse
import importlib.util
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
from mailplat.store.memory import MemoryStore  # noqa: E402

ADDRESS = "bench@example.test"


def sample(n: int) -> bytes:
    return (
        f"From: Sender {n % 97} <s{n % 97}@example.test>\r\n"
        f"To: Bench <{ADDRESS}>\r\n"
        f"Cc: c{n % 13}@example.test\r\n"
        f"Subject: {'Re: ' if n % 3 else ''}Topic number {n % 211}\r\n"
        f"Date: Mon, 1 Jan 2024 {n % 24:02d}:{n % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{n}@bench.example.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/alternative; boundary=\"b\"\r\n"
        "\r\n--b\r\nContent-Type: text/plain\r\n\r\n" + "Some text. " * 40 +
        "\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>" + "Some text. " * 40 + "</p>\r\n--b--\r\n"
    ).encode()


def loadFactory(path: str) -> Any:
    if not path:
        from mailplat.imap.server import IMAPFactory

        return IMAPFactory
    spec = importlib.util.spec_from_file_location("bench_imap_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.IMAPFactory


def run(messages: int, serverModule: str, cacheSize: int) -> List[Tuple[str, float, int]]:
    store = MemoryStore()
    account = store.getAccount(ADDRESS, create=True).result
    inbox = account.getMailbox("INBOX").result
    for n in range(messages):
        inbox.append(BytesIO(sample(n)))
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(ADDRESS.encode(), b"pw")
    factoryClass = loadFactory(serverModule)
    clock = task.Clock()
    kwargs: dict = {"clock": clock}
    if not serverModule:
        from mailplat.imap.cache import MessageCache

        kwargs["cache"] = MessageCache(cacheSize)
    factory = factoryClass(Portal(MailRealm(store), [checker]), "bench", **kwargs)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    server = factory.buildProtocol(None)
    server.makeConnection(transport)

    def command(line: bytes) -> Tuple[float, int]:
        transport.clear()
        start = time.perf_counter()
        server.dataReceived(line + b"\r\n")
        # Long work (headers read for ENVELOPE or SEARCH) waits a turn of
        # the clock between batches: give it the turns.
        for _ in range(100000):
            if not getattr(server, "_busy", False):
                break
            clock.advance(0)
        elapsed = time.perf_counter() - start
        out = transport.value()
        assert b"\r\nx OK" in out or out.startswith(b"x OK"), out[-200:]
        return elapsed, len(out)

    command(b"x LOGIN " + ADDRESS.encode() + b" pw")
    command(b"x SELECT INBOX")
    rows = []
    for label, line in [
        ("FETCH 1:* (ENVELOPE) first", b"x FETCH 1:* (ENVELOPE)"),
        ("FETCH 1:* (ENVELOPE) again", b"x FETCH 1:* (ENVELOPE)"),
        ("FETCH 1:* (FLAGS)", b"x FETCH 1:* (FLAGS)"),
        ("SORT (SUBJECT) UTF-8 ALL", b"x SORT (SUBJECT) UTF-8 ALL"),
        ("SEARCH SUBJECT topic", b"x SEARCH SUBJECT topic"),
    ]:
        if b"SORT" in line and serverModule:
            continue
        elapsed, size = command(line)
        rows.append((label, elapsed, size))
    server.connectionLost(None)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--server-module", default="", help="load IMAPFactory from this file")
    parser.add_argument("--cache-size", type=int, default=100000, help="0 disables the cache")
    args = parser.parse_args()
    messages = max(1, min(args.messages, 200000))
    rows = run(messages, args.server_module, args.cache_size)
    which = args.server_module or f"current (cache {args.cache_size})"
    print(f"{messages} messages, server: {which}")
    print(f"{'command':<32} {'seconds':>9} {'msg/s':>10} {'octets':>11}")
    for label, elapsed, size in rows:
        print(f"{label:<32} {elapsed:>9.3f} {messages / elapsed:>10.0f} {size:>11}")


if __name__ == "__main__":
    main()
