"""
How fast R runners move N entries through the PostgreSQL outbound queue
(L{mailplat.queue.sql.SQLQueue}): each runner is a node (its own
C{SQLQueue}, connection pool and C{LISTEN} connection, and a
L{mailplat.relay.runner.QueueRunner}), all in this one process, sharing a
fresh schema that is dropped afterwards.  Every entry has one recipient
in one of C{--domains} domains.  Reported: seconds from the first enqueue
(or from the runners' start, for C{--mode backlog}) until the last entry
is removed from the queue, messages per second, and how many entries were
delivered more than once (must be 0).

The sink, the remote side:

  - C{--sink smtp} (the default): our L{mailplat.smtp.server.SMTPFactory}
    on a loopback port, in this process, taking everything; the runners'
    L{mailplat.relay.Relay} reach it through a resolver that gives every
    domain the address 127.0.0.1 (no MX).  Measures queue, runner, relay
    client and SMTP on one core.
  - C{--sink fake}: a relay object that records each job delivered at
    once, with no network: the queue and the runner alone.

Modes: C{--mode stream} enqueues while the runners run, C{--parallel}
at a time (the way mail comes in; each enqueue wakes the other nodes
through C{NOTIFY});
C{--mode backlog} enqueues everything first, then starts the runners
(draining a queue after an outage).

    MAILPLAT_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test \\
        /work/venv/bin/python bench/queue_sql.py --entries 300 --runners 2

To measure other versions of the runner and the SQL queue (for example
before a change), give their files:

    git show REV:mailplat/relay/runner.py > /tmp/runner.py
    git show REV:mailplat/queue/sql.py > /tmp/sql.py
    /work/venv/bin/python bench/queue_sql.py --runner-module /tmp/runner.py --queue-module /tmp/sql.py

Bounded: at most 5,000 entries and 8 runners, and the run gives up after
C{--timeout} seconds (120 by default).
"""

import argparse
import importlib.util
import io
import os
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BODY = b"From: alice@example.test\r\nTo: someone@far.test\r\nSubject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 13


def loadModule(name: str, path: str) -> None:
    """
    Put the module in C{path} in place of C{name} before anyone imports it.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("MAILPLAT_TEST_POSTGRES", ""), help="PostgreSQL DSN (default: $MAILPLAT_TEST_POSTGRES)")
    parser.add_argument("--entries", type=int, default=300, help="entries to move (at most 5000)")
    parser.add_argument("--runners", type=int, default=2, help="nodes, each with its queue and runner (at most 8)")
    parser.add_argument("--domains", type=int, default=10, help="recipient domains (destinations)")
    parser.add_argument("--sink", choices=["smtp", "fake"], default="smtp")
    parser.add_argument("--mode", choices=["stream", "backlog"], default="stream")
    parser.add_argument("--parallel", type=int, default=10, help="enqueues in flight at once (stream mode), as from that many SMTP sessions")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--runner-module", help="a runner.py to use instead of mailplat.relay.runner")
    parser.add_argument("--queue-module", help="a sql.py to use instead of mailplat.queue.sql")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn or set MAILPLAT_TEST_POSTGRES")
    if not (1 <= args.entries <= 5000 and 1 <= args.runners <= 8 and args.domains >= 1):
        parser.error("--entries 1..5000, --runners 1..8, --domains >= 1")
    if args.queue_module:
        loadModule("mailplat.queue.sql", args.queue_module)
    if args.runner_module:
        loadModule("mailplat.relay.runner", args.runner_module)

    import psycopg
    from psycopg import sql
    from twisted.internet import defer, reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver, LogLevel, FilteringLogObserver, LogLevelFilterPredicate
    from twisted.names import dns
    from zope.interface import implementer

    from mailplat.interfaces import IDelivery
    from mailplat.queue.sql import SQLQueue
    from mailplat.relay import DELIVERED, Relay, Result
    from mailplat.relay.runner import QueueRunner
    from mailplat.smtp.server import SMTPFactory

    # Warnings and errors only (the runner logs a line per delivery).
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )

    received: Dict[str, int] = {}
    state: Dict[str, Any] = {"start": None, "end": None, "deleted": 0, "bounced": 0}
    finished: defer.Deferred = defer.Deferred()

    @implementer(IDelivery)
    class Sink:
        def validateSender(self, session: object, sender: Optional[str]) -> defer.Deferred:
            return defer.succeed(None)

        def validateRecipient(self, session: object, recipient: str) -> defer.Deferred:
            return defer.succeed(None)

        def deliver(self, session: object, sender: Optional[str], recipients: List[str], message: Any) -> defer.Deferred:
            for r in recipients:
                received[r] = received.get(r, 0) + 1
            return defer.succeed(None)

    class LoopbackResolver:
        """Every domain: no MX, address 127.0.0.1."""

        def lookupMailExchange(self, name: str, timeout: object = None) -> defer.Deferred:
            return defer.succeed(([], [], []))

        def lookupAddress(self, name: str, timeout: object = None) -> defer.Deferred:
            return defer.succeed(([dns.RRHeader(name, dns.A, payload=dns.Record_A("127.0.0.1"))], [], []))

        def lookupIPV6Address(self, name: str, timeout: object = None) -> defer.Deferred:
            return defer.succeed(([], [], []))

    class FakeRelay:
        def destinationOf(self, address: str) -> str:
            return address.partition("@")[2]

        @defer.inlineCallbacks
        def deliver(self, destination: str, jobs: List[Any], report: Any):
            for job in jobs:
                with job.openMessage() as f:
                    f.read()
                for r in job.recipients:
                    received[r] = received.get(r, 0) + 1
                yield report(job, {r: Result(DELIVERED, "250 2.0.0 ok", "sink.test") for r in job.recipients})

    schema = "mp_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))

    class CountingQueue(SQLQueue):
        """Notes when the last entry is removed."""

        def delete(self, entryId: str) -> defer.Deferred:
            def gone(result: object) -> object:
                state["deleted"] += 1
                if state["deleted"] >= args.entries and not finished.called:
                    state["end"] = time.monotonic()
                    finished.callback(None)
                return result

            return super().delete(entryId).addCallback(gone)

    def bounce(sender: Optional[str], recipients: List[str], message: Any) -> defer.Deferred:
        # A DSN means a delivery failed: counted, not sent.
        state["bounced"] += 1
        return defer.succeed(None)

    @defer.inlineCallbacks
    def run():
        port = None
        if args.sink == "smtp":
            port = reactor.listenTCP(0, SMTPFactory(Sink(), "sink.test"), interface="127.0.0.1")
        queues = [CountingQueue(args.dsn, schema, reactor) for _ in range(args.runners)]
        producer = SQLQueue(args.dsn, schema, reactor)
        runners = []
        for q in queues:
            if args.sink == "smtp":
                relay = Relay("bench.example.test", LoopbackResolver(), reactor, port=port.getHost().port, useTLS=False)
            else:
                relay = FakeRelay()
            runners.append(QueueRunner(q, relay, reactor, "bench.example.test", bounce=bounce, pollInterval=60.0))
        timeout = reactor.callLater(args.timeout, lambda: finished.called or finished.errback(TimeoutError()))
        try:
            if args.mode == "backlog":
                for i in range(args.entries):
                    yield producer.enqueue("alice@example.test", [f"r{i}@d{i % args.domains}.test"], io.BytesIO(BODY))
                state["start"] = time.monotonic()
                for runner in runners:
                    runner.startService()
            else:
                for runner in runners:
                    runner.startService()
                state["start"] = time.monotonic()
                limit = defer.DeferredSemaphore(max(1, args.parallel))
                # Round robin: each node takes in its share of the mail.
                yield defer.gatherResults(
                    [
                        limit.run(
                            queues[i % len(queues)].enqueue,
                            "alice@example.test", [f"r{i}@d{i % args.domains}.test"], io.BytesIO(BODY),
                        )
                        for i in range(args.entries)
                    ],
                    consumeErrors=True,
                )
            yield finished
        finally:
            if timeout.active():
                timeout.cancel()
            for runner in runners:
                yield runner.stopService()
            for q in queues + [producer]:
                yield q.close()
            if port is not None:
                yield port.stopListening()

    outcome: Dict[str, Any] = {}

    def go() -> None:
        d = run()

        def failed(f: Any) -> None:
            outcome["error"] = f

        d.addErrback(failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    if "error" in outcome:
        print(f"failed: {outcome['error'].getErrorMessage() or outcome['error'].type.__name__}"
              f" ({state['deleted']} of {args.entries} done)", file=sys.stderr)
        return 1
    seconds = state["end"] - state["start"]
    twice = sum(1 for n in received.values() if n > 1)
    print(
        f"entries={args.entries} runners={args.runners} domains={args.domains} sink={args.sink} mode={args.mode}"
        f" seconds={seconds:.2f} messages/s={args.entries / seconds:.0f} delivered={len(received)} twice={twice}"
        f" bounced={state['bounced']}"
    )
    return 0 if len(received) == args.entries and not twice and not state["bounced"] else 1


if __name__ == "__main__":
    sys.exit(main())
