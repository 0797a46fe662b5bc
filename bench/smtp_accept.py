"""
SMTP durable acceptance: how many messages a running server takes per
second, and the latency from the end of DATA to the 250.

    python bench/smtp_accept.py [--port 2525] [--sessions 10] [--messages 2000] [--size 2048]
                                [--to alice@example.test] [--seconds 60]

Loopback only.  Each session pipelines MAIL/RCPT/DATA for one message at a
time and waits for the 250 before the next, as an MTA does (so the server
must offer PIPELINING, as mailplat, Postfix's C{smtpd} and C{smtp-sink}
do).  Bounded by the message count and a time limit; prints one table row.

All the sessions run on one asyncio event loop in one process (L{run}), so
the client costs a few tens of microseconds of one core per message, not
one thread per session fighting for the GIL.  L{run} is what
C{bench/compare_smtp.py} calls to drive every server with the same client.
"""

import argparse
import asyncio
import socket
import statistics
import sys
import time
from typing import Dict, List, Optional


def makeMessage(size: int) -> bytes:
    """
    A message of about C{size} octets on the wire: one header, lines of 76
    C{x}, and the terminating C{.} line.
    """
    line = b"x" * 76 + b"\r\n"
    return b"Subject: bench\r\n\r\n" + line * max(1, size // len(line)) + b".\r\n"


class _Session(asyncio.Protocol):
    """
    One SMTP session sending C{count} messages to one recipient.

    The replies are counted line by line: after the greeting and EHLO, each
    message expects 250 (MAIL), 250 (RCPT) and 354 (DATA) for the pipelined
    commands, then 250 for the body.
    """

    def __init__(self, recipient: bytes, body: bytes, count: int, deadline: float,
                 latencies: List[float], errors: List[bytes], done: "asyncio.Future[None]") -> None:
        self.envelope = b"MAIL FROM:<bench@far.test>\r\nRCPT TO:<" + recipient + b">\r\nDATA\r\n"
        self.body = body
        self.left = count
        self.deadline = deadline
        self.latencies = latencies
        self.errors = errors
        self.done = done
        self.buffer = b""
        # The reply codes still expected, in order.
        self.expect: List[bytes] = [b"220"]
        self.sentAt = 0.0
        self.state = "greeting"
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end + 1], self.buffer[end + 1:]
            if line[3:4] == b"-":
                continue
            self._reply(line)
            if self.state == "failed":
                return

    def _reply(self, line: bytes) -> None:
        if not self.expect:
            self._fail(b"unexpected reply " + line)
            return
        code = self.expect.pop(0)
        if not line.startswith(code):
            self._fail(line)
            return
        if code == b"220":
            self.transport.write(b"EHLO bench.test\r\n")
            self.expect = [b"250"]
            self.state = "ehlo"
        elif code == b"354":
            self.sentAt = time.monotonic()
            self.transport.write(self.body)
            self.expect = [b"250"]
            self.state = "body"
        elif code == b"221":
            self.transport.close()
        elif not self.expect:
            # The 250 of EHLO or of a message's body.
            if self.state == "body":
                self.latencies.append(time.monotonic() - self.sentAt)
                self.left -= 1
            self._next()

    def _next(self) -> None:
        if self.left <= 0 or time.monotonic() > self.deadline:
            self.transport.write(b"QUIT\r\n")
            self.expect = [b"221"]
            self.state = "quit"
            return
        self.transport.write(self.envelope)
        self.expect = [b"250", b"250", b"354"]
        self.state = "envelope"

    def _fail(self, line: bytes) -> None:
        self.errors.append(line)
        self.state = "failed"
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.state not in ("quit", "failed") and not self.done.done():
            self.errors.append(b"connection closed: " + str(exc).encode())
        if not self.done.done():
            self.done.set_result(None)


async def _run(port: int, sessions: int, messages: int, size: int, recipient: str,
               seconds: float) -> Dict[str, object]:
    loop = asyncio.get_running_loop()
    body = makeMessage(size)
    latencies: List[float] = []
    errors: List[bytes] = []
    per = max(1, messages // sessions)
    start = time.monotonic()
    deadline = start + seconds
    waits = []
    for _ in range(sessions):
        done = loop.create_future()
        waits.append(done)
        try:
            await loop.create_connection(
                lambda d=done: _Session(recipient.encode(), body, per, deadline, latencies, errors, d),
                "127.0.0.1", port)
        except OSError as e:
            errors.append(str(e).encode())
            done.set_result(None)
    await asyncio.wait_for(asyncio.gather(*waits), max(1.0, deadline - time.monotonic() + 30))
    elapsed = time.monotonic() - start
    return {"sessions": sessions, "size": len(body), "messages": len(latencies), "seconds": elapsed,
            "latencies": latencies, "errors": errors}


def run(port: int, sessions: int = 10, messages: int = 2000, size: int = 2048,
        recipient: str = "alice@example.test", seconds: float = 60.0) -> Dict[str, object]:
    """
    Send C{messages} (split evenly over C{sessions} parallel sessions) of
    about C{size} octets to C{recipient} through the server on
    127.0.0.1:C{port}; stop early after C{seconds}.

    @return: C{sessions}; C{size} (octets of a message on the wire);
        C{messages} accepted; C{seconds} from the first connection to the
        last reply; C{latencies} (seconds from the end of each message's
        data to its 250, in the order they came); C{errors} (the first
        unexpected reply of each failed session).
    """
    return asyncio.run(_run(port, sessions, messages, size, recipient, seconds))


def percentile(values: List[float], fraction: float) -> float:
    """
    The C{fraction} (0-1) percentile of C{values}, by nearest rank; NaN for
    none.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2000, help="total messages")
    parser.add_argument("--size", type=int, default=2048, help="message size in octets")
    parser.add_argument("--to", default="alice@example.test")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long whatever the count")
    args = parser.parse_args()
    result = run(args.port, args.sessions, args.messages, args.size, args.to, args.seconds)
    latencies = result["latencies"]
    errors = result["errors"]
    if errors:
        print("errors:", errors[:3], file=sys.stderr)
    if not latencies:
        print("no message accepted", file=sys.stderr)
        return 1
    elapsed = result["seconds"]
    print("| sessions | size | messages | seconds | messages/s | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.sessions} | {result['size']} | {len(latencies)} | {elapsed:.1f} | {len(latencies) / elapsed:.0f} "
        f"| {statistics.median(latencies) * 1000:.1f} | {percentile(latencies, 0.99) * 1000:.1f} |"
    )
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
