"""
End-to-end tests of two mailplat nodes sharing one PostgreSQL schema
(DESIGN.md, "Scale"): mail taken by one node is pushed to an IMAP IDLE
session on the other, and the outbound queue they share delivers each
entry exactly once with both nodes' runners running.

They run when C{MAILPLAT_TEST_POSTGRES} names a database; each test works
in a schema of its own, dropped afterwards.
"""

import io
import os
import re
import smtplib
import uuid
from typing import Any, List, Optional

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from mailplat.relay import Relay
from mailplat.relay.runner import QueueRunner
from mailplat.smtp.server import SMTPFactory
from tests.e2e.server import IdleClient, LoopbackServer
from tests.test_relay import FakeResolver, ScriptedDelivery

POSTGRES = os.environ.get("MAILPLAT_TEST_POSTGRES", "")
PASSWORD = "correct horse battery"
ALICE = "alice@example.test"


class CountingDelivery(ScriptedDelivery):
    """
    The remote MX's delivery; L{arrived} fires once C{expected} messages
    came in.
    """

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.arrived: defer.Deferred = defer.Deferred()

    def deliver(self, session: object, sender: Optional[str], recipients: List[str], message: Any) -> defer.Deferred:
        d = super().deliver(session, sender, recipients, message)
        if len(self.messages) >= self.expected and not self.arrived.called:
            self.arrived.callback(None)
        return d


class TwoNodeTests(TestCase):
    """
    Two L{LoopbackServer}s on one PostgreSQL schema.
    """

    timeout = 120

    if not POSTGRES:
        skip = "MAILPLAT_TEST_POSTGRES is not set (a DSN such as postgresql://postgres@127.0.0.1:5432/test)"

    @defer.inlineCallbacks
    def setUp(self):
        import psycopg
        from psycopg import sql

        self.schema = "mp_2n_" + uuid.uuid4().hex[:12]
        separator = "&" if "?" in POSTGRES else "?"
        self.storeSpec = f"sql:{POSTGRES}{separator}schema={self.schema}"

        def drop() -> None:
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

        self.addCleanup(drop)
        self.nodes = []
        for name in ("one", "two"):
            node = LoopbackServer(os.path.abspath(self.mktemp()) + name, store=self.storeSpec).start()
            self.addCleanup(node.stop)
            yield node.addUser(ALICE, PASSWORD)
            self.nodes.append(node)

    def sharedQueue(self, node: LoopbackServer) -> Any:
        """
        The node's queue: on a PostgreSQL store the server builds the SQL
        queue in the shared schema (closed by the harness at stop).
        """
        from mailplat.queue.sql import SQLQueue

        self.assertIsInstance(node.server.queue, SQLQueue)
        return node.server.queue

    @defer.inlineCallbacks
    def test_deliveryOnOneNodeWakesIdleOnTheOther(self):
        """
        A message taken by SMTP on node one is pushed (C{* 1 EXISTS}) to a
        session idling on node two, through C{LISTEN}/C{NOTIFY}: the client
        only reads, it never polls.
        """
        one, two = self.nodes
        client = IdleClient(two.ports["imap"], ALICE, PASSWORD)
        self.addCleanup(client.close)
        selected = yield threads.deferToThread(client.startIdle)
        self.assertIn(b"* 0 EXISTS\r\n", selected)

        def send():
            with smtplib.SMTP("127.0.0.1", one.ports["smtp"], timeout=30) as s:
                return s.sendmail("sender@far.test", [ALICE], b"Subject: across nodes\r\n\r\nhello\r\n")

        yield threads.deferToThread(send)

        woken, done = yield threads.deferToThread(client.finishIdle, b"* 1 EXISTS")
        self.assertEqual(woken[-1], b"* 1 EXISTS\r\n")
        self.assertTrue(done[-1].startswith(b"c OK"), done)

    @defer.inlineCallbacks
    def test_queueDeliversOnceWithTwoRunners(self):
        """
        Entries queued on both nodes reach the remote MX (our own SMTP
        server on loopback) exactly once each while both nodes' runners
        run, and leave the queue.
        """
        total = 12
        remote = CountingDelivery(total)
        mx = reactor.listenTCP(0, SMTPFactory(remote, "mx.remote.test"), interface="127.0.0.1")
        self.addCleanup(mx.stopListening)
        resolver = FakeResolver({"remote.test": [(10, "mx.remote.test")]}, {"mx.remote.test": ["127.0.0.1"]})
        queues = [self.sharedQueue(node) for node in self.nodes]
        runners = [
            QueueRunner(
                queue,
                Relay(node.config.hostname, resolver, reactor, port=mx.getHost().port, useTLS=False, commandTimeout=20),
                reactor,
                node.config.hostname,
                pollInterval=5.0,
            )
            for node, queue in zip(self.nodes, queues)
        ]
        for runner in runners:
            runner.startService()
        try:
            for i in range(total):
                body = b"Subject: entry %d\r\n\r\nbody %d\r\n" % (i, i)
                yield queues[i % 2].enqueue(f"sender{i}@example.test", [f"user{i}@remote.test"], io.BytesIO(body))
            yield remote.arrived
        finally:
            for runner in runners:
                yield runner.stopService()
        subjects = sorted(re.search(rb"^Subject: .*$", message[3], re.M).group(0).rstrip(b"\r") for message in remote.messages)
        self.assertEqual(subjects, sorted(b"Subject: entry %d" % i for i in range(total)))
        self.assertEqual((yield queues[0].listAsync()), [])
