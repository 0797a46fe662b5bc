"""
SMTP durable acceptance: how many messages a running server takes per
second, and the latency from the end of DATA to the 250.

    python bench/smtp_accept.py [--port 2525] [--sessions 10] [--messages 2000] [--size 2048]
                                [--to alice@example.test] [--seconds 60]

Loopback only.  Each session pipelines MAIL/RCPT/DATA for one message at a
time and waits for the 250 before the next, as an MTA does.  Bounded by the
message count and a time limit; prints one table row.
"""

import argparse
import socket
import statistics
import sys
import threading
import time


def session(port: int, recipient: str, body: bytes, count: int, deadline: float, latencies: list, errors: list) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            while True:
                line = f.readline()
                if not line:
                    raise ConnectionError("closed")
                if line[3:4] != b"-":
                    return line

        reply()
        s.sendall(b"EHLO bench.test\r\n")
        reply()
        for _ in range(count):
            if time.monotonic() > deadline:
                return
            s.sendall(b"MAIL FROM:<bench@far.test>\r\nRCPT TO:<" + recipient.encode() + b">\r\nDATA\r\n")
            for expected in (b"250", b"250", b"354"):
                line = reply()
                if not line.startswith(expected):
                    errors.append(line)
                    return
            start = time.monotonic()
            s.sendall(body)
            line = reply()
            latencies.append(time.monotonic() - start)
            if not line.startswith(b"250"):
                errors.append(line)
                return
        s.sendall(b"QUIT\r\n")
        reply()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2000, help="total messages")
    parser.add_argument("--size", type=int, default=2048, help="message size in octets")
    parser.add_argument("--to", default="alice@example.test")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long whatever the count")
    args = parser.parse_args()
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: bench\r\n\r\n" + line * max(1, args.size // len(line)) + b".\r\n"
    latencies: list = []
    errors: list = []
    deadline = time.monotonic() + args.seconds
    per = max(1, args.messages // args.sessions)
    threads = [
        threading.Thread(target=session, args=(args.port, args.to, body, per, deadline, latencies, errors))
        for _ in range(args.sessions)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if errors:
        print("errors:", errors[:3], file=sys.stderr)
    if not latencies:
        print("no message accepted", file=sys.stderr)
        return 1
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print("| sessions | size | messages | seconds | messages/s | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.sessions} | {len(body)} | {len(latencies)} | {elapsed:.1f} | {len(latencies) / elapsed:.0f} "
        f"| {statistics.median(latencies) * 1000:.1f} | {p99 * 1000:.1f} |"
    )
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
