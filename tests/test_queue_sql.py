"""
Tests for L{mailplat.queue.sql}: the outbound queue in PostgreSQL.

They run when C{MAILPLAT_TEST_POSTGRES} holds a DSN (for example
C{postgresql://postgres@127.0.0.1:5432/test}); each test works in a schema
of its own, dropped afterwards.  Queue times and leases run on
L{task.Clock}s; the database threads on the real reactor.

The behaviours are those L{tests.test_queue} checks for the file queue,
plus what only a shared queue has: two queue objects (two nodes) claiming
from one schema, leases that run out when a node dies, and wake-ups
between nodes through C{LISTEN}/C{NOTIFY}.
"""

import io
import os
import uuid
from typing import Any, Dict, List, Optional

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from mailplat.queue import DEFERRED, DELIVERED, FAILED, PENDING, NoSuchEntry, Queue
from mailplat.relay import DELIVERED as RDELIVERED
from mailplat.relay import Job, Result
from mailplat.relay.runner import QueueRunner

POSTGRES = os.environ.get("MAILPLAT_TEST_POSTGRES", "")
NO_POSTGRES = "MAILPLAT_TEST_POSTGRES is not set (e.g. postgresql://postgres@127.0.0.1:5432/test); PostgreSQL tests skipped"

BODY = b"Subject: hi\r\n\r\nHello\r\n"


class SchemaMixin:
    """
    A fresh schema per test, and queues on it (closed at the end).
    """

    timeout = 60

    if not POSTGRES:
        skip = NO_POSTGRES

    def setUp(self) -> None:
        import psycopg
        from psycopg import sql

        self.schema = "mp_qtest_" + uuid.uuid4().hex[:16]
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))

        def drop() -> None:
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema)))

        self.addCleanup(drop)
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.queue = self.makeQueue()

    def makeQueue(self, clock: Optional[task.Clock] = None, **kw: Any) -> Any:
        from mailplat.queue.sql import SQLQueue

        queue = SQLQueue(POSTGRES, self.schema, clock if clock is not None else self.clock, poolSize=2, **kw)
        self.addCleanup(queue.close)
        return queue

    def rawQuery(self, query: str, params: tuple = ()) -> List[tuple]:
        import psycopg

        with psycopg.connect(POSTGRES, options=f"-c search_path={self.schema}") as conn:
            return conn.execute(query, params).fetchall()

    def enqueue(self, recipients=("bob@far.test",), sender: Optional[str] = "alice@example.test", queue: Any = None) -> defer.Deferred:
        return (queue or self.queue).enqueue(sender, list(recipients), io.BytesIO(BODY))


class SQLQueueTests(SchemaMixin, TestCase):
    """
    One L{SQLQueue}: the behaviours of the file queue.
    """

    @defer.inlineCallbacks
    def test_enqueueWritesRows(self):
        """
        The message and its recipients are committed when the Deferred
        fires; duplicates are dropped, order kept.
        """
        queueId = yield self.enqueue(["bob@far.test", "carol@far.test", "bob@far.test"])
        [(sender, body)] = self.rawQuery("SELECT sender, body FROM queue_messages WHERE id = %s", (queueId,))
        self.assertEqual((sender, bytes(body)), ("alice@example.test", BODY))
        rows = self.rawQuery("SELECT address, state FROM queue_recipients WHERE entry_id = %s ORDER BY position", (queueId,))
        self.assertEqual(rows, [("bob@far.test", PENDING), ("carol@far.test", PENDING)])
        with self.queue.openMessage(queueId) as f:
            self.assertEqual(f.read(), BODY)
        self.assertEqual(self.rawQuery("SELECT version FROM queue_schema_version"), [(1,)])

    def test_noRecipients(self) -> None:
        self.failureResultOf(self.queue.enqueue(None, [], io.BytesIO(BODY)), ValueError)

    @defer.inlineCallbacks
    def test_restart(self):
        """
        A new queue on the same schema knows every entry and its state.
        """
        first = yield self.enqueue(["a@far.test", "b@far.test"])
        self.clock.advance(1)
        second = yield self.enqueue(sender=None)
        yield self.queue.markDeferred(first, ["a@far.test"], "451 4.3.0 later", 2000, "mx.far.test")
        yield self.queue.close()
        queue = self.makeQueue()
        entries = yield queue.listAsync()
        self.assertEqual([e.id for e in entries], [first, second])
        a, b = entries[0].recipients
        self.assertEqual((a.state, a.reply, a.attempts, a.nextAttempt, a.remoteMTA), (DEFERRED, "451 4.3.0 later", 1, 2000, "mx.far.test"))
        self.assertEqual(b.state, PENDING)
        self.assertIsNone(entries[1].sender)

    @defer.inlineCallbacks
    def test_due(self):
        """
        L{SQLQueue.due} answers from the entries this node claimed; a pass
        claims what is due.
        """
        queueId = yield self.enqueue(["a@far.test", "b@far.test"])
        # The first call finds nothing held yet and starts a pass.
        self.assertEqual(self.queue.due(), [])
        yield self.queue.claim()
        self.assertEqual(self.queue.claimedIds(), [queueId])
        # The pass also read the whole queue's depth and oldest entry (the
        # metrics page's queue gauges).
        self.assertEqual(self.queue.depth, 1)
        entry = self.queue.get(queueId)
        self.assertEqual(self.queue.oldest, entry.created)
        self.assertEqual([e.id for e in self.queue.due()], [queueId])
        yield self.queue.markDeferred(queueId, ["a@far.test", "b@far.test"], "451 later", 1300)
        self.assertEqual(self.queue.due(), [])
        self.assertEqual(self.queue.nextWakeup(), 1300)
        self.assertEqual([e.id for e in self.queue.due(1300)], [queueId])

    @defer.inlineCallbacks
    def test_olderReadingNeverWins(self):
        """
        A pass that read an entry before a change to it committed, but
        whose result comes back after the change's, does not put the old
        state back in memory (the recipient, delivered, would be sent
        again).
        """
        queueId = yield self.enqueue()
        yield self.queue.claim()
        original = self.queue._run
        held: Dict[str, Any] = {}

        def run(fn: Any, *args: Any) -> defer.Deferred:
            if fn.__name__ == "work" and "update" not in held:
                # The change's transaction starts only when let go.
                held["update"] = defer.Deferred()
                return held["update"].addCallback(lambda _: original(fn, *args))
            if fn.__name__ == "_passWork" and "pass" not in held:
                # The pass's transaction runs now; its result is handed
                # over only when let go.
                held["pass"] = (original(fn, *args), defer.Deferred())
                return held["pass"][1]
            return original(fn, *args)

        self.queue._run = run
        marked = self.queue.markDelivered(queueId, ["bob@far.test"], "250 ok")
        passed = self.queue.claim()
        committed, handOver = held["pass"]
        reading = yield committed
        held["update"].callback(None)
        yield marked
        self.assertEqual(self.queue.get(queueId).recipients[0].state, DELIVERED)
        handOver.callback(reading)
        yield passed
        self.assertEqual(self.queue.get(queueId).recipients[0].state, DELIVERED)
        self.assertEqual(self.queue.due(), [])

    @defer.inlineCallbacks
    def test_finalStatesStay(self):
        """
        A delivered recipient never goes back to waiting.
        """
        queueId = yield self.enqueue()
        yield self.queue.claim()
        yield self.queue.markDelivered(queueId, ["bob@far.test"], "250 ok")
        yield self.queue.markDeferred(queueId, ["bob@far.test"], "451 later", 0)
        yield self.queue.markFailed(queueId, ["bob@far.test"], "550 no")
        r = self.queue.get(queueId).recipients[0]
        self.assertEqual((r.state, r.reply, r.attempts), (DELIVERED, "250 ok", 1))
        self.assertEqual(self.queue.due(), [])
        self.assertEqual(self.rawQuery("SELECT next_attempt FROM queue_messages"), [(None,)])

    @defer.inlineCallbacks
    def test_markAfterDelete(self):
        queueId = yield self.enqueue()
        yield self.queue.claim()
        yield self.queue.delete(queueId)
        self.assertIsNone((yield self.queue.markDelivered(queueId, ["bob@far.test"], "250 ok")))
        self.assertEqual(self.rawQuery("SELECT COUNT(*) FROM queue_recipients"), [(0,)])
        self.assertRaises(NoSuchEntry, self.queue.get, queueId)
        self.assertRaises(NoSuchEntry, self.queue.openMessage, queueId)
        self.assertEqual(self.queue.claimedIds(), [])
        yield self.assertFailure(self.queue.delete(queueId), NoSuchEntry)

    def test_badIds(self) -> None:
        for bad in ["../x", "", "ABC", "x" * 10]:
            self.assertRaises(NoSuchEntry, self.queue.get, bad)
            self.failureResultOf(self.queue.delete(bad), NoSuchEntry)
            self.failureResultOf(self.queue.hold(bad), NoSuchEntry)

    @defer.inlineCallbacks
    def test_holdReleaseFlush(self):
        woken: List[int] = []
        self.queue.addObserver(lambda: woken.append(1))
        queueId = yield self.enqueue()
        self.assertEqual(len(woken), 1)
        yield self.queue.hold(queueId)
        self.assertEqual((yield self.queue.claim()), [])
        self.assertEqual(self.queue.due(), [])
        self.assertIsNone(self.queue.nextWakeup())
        # Let the pass due() started end before the release, or it could
        # claim the entry instead of the claim() below.
        self.assertEqual((yield self.queue.claim()), [])
        self.assertEqual((yield self.queue.flush()), [])
        yield self.queue.release(queueId)
        self.assertEqual(len(woken), 3)
        self.assertEqual((yield self.queue.claim()), [queueId])
        self.assertEqual(len(woken), 4)
        yield self.queue.markDeferred(queueId, ["bob@far.test"], "451 later", 5000)
        self.assertEqual(self.queue.due(), [])
        self.assertEqual((yield self.queue.flush(queueId)), [queueId])
        self.assertEqual([e.id for e in self.queue.due()], [queueId])
        yield self.queue.markDeferred(queueId, ["bob@far.test"], "451 later", 5000)
        self.assertEqual((yield self.queue.flush()), [queueId])
        self.assertEqual([e.id for e in self.queue.due()], [queueId])

    @defer.inlineCallbacks
    def test_otherNodeChanges(self):
        """
        A hold or delete made through another queue object (the admin
        command, another node) reaches the node holding the entry at its
        next pass.
        """
        queueId = yield self.enqueue()
        yield self.queue.claim()
        other = self.makeQueue()
        yield other.hold(queueId)
        self.assertTrue(other.get(queueId).held)
        yield self.queue.claim()
        self.assertTrue(self.queue.get(queueId).held)
        self.assertEqual(self.queue.due(), [])
        yield other.delete(queueId)
        yield self.queue.claim()
        self.assertEqual(self.queue.claimedIds(), [])
        self.assertEqual(self.queue.list(), [])

    @defer.inlineCallbacks
    def test_failedUntilNotified(self):
        queueId = yield self.enqueue()
        entry = yield self.queue.markFailed(queueId, ["bob@far.test"], "550 5.1.1 no")
        self.assertEqual(entry.recipients[0].state, FAILED)
        self.assertFalse(entry.isFinished())
        entry = yield self.queue.markNotified(queueId, ["bob@far.test"], "failed")
        self.assertTrue(entry.isFinished())
        self.assertTrue(entry.recipients[0].notified)
        entry = yield self.queue.markNotified(queueId, ["bob@far.test"], "delayed")
        self.assertTrue(entry.recipients[0].delayWarned)

    @defer.inlineCallbacks
    def test_envelopeParameters(self):
        """
        DSN parameters and the SMTPUTF8 flag are kept with an entry.
        """
        from mailplat.smtp.envelope import RecipientParameters

        entryId = yield self.queue.enqueue(
            "a@example.test",
            ["b@far.test", "c@far.test"],
            io.BytesIO(b"\r\nx\r\n"),
            envid="E",
            ret="FULL",
            parameters={"b@far.test": RecipientParameters(["SUCCESS", "FAILURE"], "rfc822;B@far.test")},
            smtputf8=True,
        )
        entry = self.makeQueue().get(entryId)
        self.assertEqual((entry.envid, entry.ret, entry.smtputf8), ("E", "FULL", True))
        b, c = entry.recipients
        self.assertEqual((b.notify, b.orcpt), (["SUCCESS", "FAILURE"], "rfc822;B@far.test"))
        self.assertTrue(b.wants("SUCCESS"))
        self.assertEqual((c.notify, c.orcpt), (None, None))

    @defer.inlineCallbacks
    def test_releaseAfterDelay(self):
        """
        An entry with nothing due is given back once untouched for
        C{releaseDelay}; another node claims it when it is due.
        """
        queueId = yield self.enqueue()
        yield self.queue.claim()
        yield self.queue.markDeferred(queueId, ["bob@far.test"], "451 later", 1100)
        yield self.queue.claim()
        self.assertEqual(self.queue.claimedIds(), [queueId])
        self.clock.advance(self.queue.releaseDelay)
        yield self.queue.claim()
        self.assertEqual(self.queue.claimedIds(), [])
        self.assertEqual(self.rawQuery("SELECT claimed_by FROM queue_messages"), [(None,)])
        self.assertEqual(self.queue.nextWakeup(), 1100)
        otherClock = task.Clock()
        otherClock.advance(1050)
        other = self.makeQueue(otherClock)
        self.assertEqual((yield other.claim()), [])
        otherClock.advance(50)
        self.assertEqual((yield other.claim()), [queueId])
        with other.openMessage(queueId) as f:
            self.assertEqual(f.read(), BODY)

    @defer.inlineCallbacks
    def test_closeGivesBack(self):
        """
        A queue closed cleanly gives its claims back at once.
        """
        queueId = yield self.enqueue()
        yield self.queue.claim()
        yield self.queue.close()
        self.assertEqual(self.rawQuery("SELECT claimed_by FROM queue_messages WHERE id = %s", (queueId,)), [(None,)])
        self.assertEqual((yield self.makeQueue().claim()), [queueId])

    @defer.inlineCallbacks
    def test_queueFor(self):
        """
        L{queueFor} gives the SQL queue for a PostgreSQL store, the file
        queue otherwise.
        """
        from mailplat.queue.sql import SQLQueue, queueFor

        dataDir = self.mktemp()
        self.assertIsInstance(queueFor("maildir", dataDir, self.clock), Queue)
        self.assertIsInstance(queueFor("sql", dataDir, self.clock), Queue)
        self.assertIsInstance(queueFor("sql:sqlite:" + os.path.join(dataDir, "x.db"), dataDir, self.clock), Queue)
        separator = "&" if "?" in POSTGRES else "?"
        queue = queueFor(f"sql:{POSTGRES}{separator}schema={self.schema}", dataDir, self.clock)
        try:
            self.assertIsInstance(queue, SQLQueue)
            self.assertEqual(queue.schema, self.schema)
        finally:
            yield queue.close()


class TwoNodeTests(SchemaMixin, TestCase):
    """
    Two L{SQLQueue}s on one schema: two nodes.
    """

    @defer.inlineCallbacks
    def test_claimsAreDisjoint(self):
        """
        Two nodes claiming at the same time never get the same entry, and
        between them get every one.
        """
        other = self.makeQueue(claimBatch=7)
        self.queue.claimBatch = 7
        ids = []
        for i in range(40):
            ids.append((yield self.enqueue([f"r{i}@far.test"])))
        mine: List[str] = []
        theirs: List[str] = []
        while True:
            results = yield defer.gatherResults([self.queue.claim(), other.claim()])
            mine.extend(results[0])
            theirs.extend(results[1])
            if not results[0] and not results[1]:
                break
        self.assertEqual(set(mine) & set(theirs), set())
        self.assertEqual(sorted(mine + theirs), sorted(ids))
        self.assertTrue(mine and theirs)
        self.assertEqual(sorted(self.queue.claimedIds()), sorted(mine))
        owners = dict(self.rawQuery("SELECT id, claimed_by FROM queue_messages"))
        self.assertEqual({owners[i] for i in mine}, {self.queue.node})
        self.assertEqual({owners[i] for i in theirs}, {other.node})

    @defer.inlineCallbacks
    def test_leaseExpires(self):
        """
        A node that stops (its clock, and so its renewals, stand still)
        loses its claims C{lease} seconds later; the other node takes them,
        and the first learns at its next pass that it no longer holds them.
        """
        otherClock = task.Clock()
        otherClock.advance(1000)
        other = self.makeQueue(otherClock)
        queueId = yield self.enqueue()
        self.assertEqual((yield self.queue.claim()), [queueId])
        self.assertEqual((yield other.claim()), [])
        otherClock.advance(self.queue.lease - 1)
        self.assertEqual((yield other.claim()), [])
        otherClock.advance(2)
        self.assertEqual((yield other.claim()), [queueId])
        yield self.queue.claim()
        self.assertEqual(self.queue.claimedIds(), [])
        self.assertEqual(self.queue.due(), [])

    @defer.inlineCallbacks
    def test_renewal(self):
        """
        A live node renews its leases every C{lease / 3} seconds, so a long
        delivery keeps its claim.
        """
        otherClock = task.Clock()
        otherClock.advance(1000)
        other = self.makeQueue(otherClock)
        queueId = yield self.enqueue()
        yield self.queue.claim()
        renewed: defer.Deferred = defer.Deferred()
        original = self.queue._passWork

        def watch(*args: Any) -> Any:
            result = original(*args)
            if not renewed.called:
                from twisted.internet import reactor

                reactor.callFromThread(renewed.callback, None)
            return result

        self.queue._passWork = watch
        self.clock.advance(self.queue.lease / 3.0)
        yield renewed
        otherClock.advance(self.queue.lease + 1)
        self.assertEqual((yield other.claim()), [])
        self.assertEqual(self.queue.claimedIds(), [queueId])

    @defer.inlineCallbacks
    def test_notifyWakesOtherNode(self):
        """
        An enqueue on one node tells the other node's observers (through
        C{NOTIFY}), not its own a second time.
        """
        other = self.makeQueue()
        heard: defer.Deferred = defer.Deferred()
        other.addObserver(lambda: heard.called or heard.callback(None))
        mine: List[int] = []
        self.queue.addObserver(lambda: mine.append(1))
        yield self.enqueue()
        yield heard
        self.assertEqual(mine, [1])

    @defer.inlineCallbacks
    def test_twoRunnersDeliverOnce(self):
        """
        Two queue runners, one per node, sharing the queue: every entry is
        delivered exactly once and then removed.
        """
        from twisted.internet import reactor

        total = 30
        deliveries: Dict[str, List[str]] = {}
        allDone: defer.Deferred = defer.Deferred()

        class CountingRelay:
            def __init__(self, name: str) -> None:
                self.name = name

            def destinationOf(self, address: str) -> str:
                return address.partition("@")[2]

            def deliver(self, destination: str, jobs: List[Job], report: Any) -> defer.Deferred:
                @defer.inlineCallbacks
                def go():
                    for job in jobs:
                        with job.openMessage() as f:
                            assert f.read() == BODY
                        deliveries.setdefault(job.entryId, []).append(self.name)
                        yield report(job, {r: Result(RDELIVERED, "250 ok", "mx.far.test") for r in job.recipients})
                    if sum(len(v) for v in deliveries.values()) >= total and not allDone.called:
                        allDone.callback(None)

                return go()

        queues = [self.makeQueue(reactor), self.makeQueue(reactor)]
        runners = [
            QueueRunner(q, CountingRelay(f"node{i}"), reactor, "mail.example.test", pollInterval=5.0)
            for i, q in enumerate(queues)
        ]
        for runner in runners:
            runner.startService()
        try:
            for i in range(total):
                yield self.enqueue([f"r{i}@d{i % 3}.test"], queue=queues[i % 2])
            yield allDone
        finally:
            for runner in runners:
                yield runner.stopService()
        self.assertEqual(len(deliveries), total)
        self.assertEqual({k: len(v) for k, v in deliveries.items() if len(v) != 1}, {})
        self.assertEqual(self.rawQuery("SELECT COUNT(*) FROM queue_messages"), [(0,)])
        self.assertEqual(len({v[0] for v in deliveries.values()}), 2, "both nodes took a share")

    @defer.inlineCallbacks
    def test_runnerTakesOverAfterCrash(self):
        """
        A node whose runner claimed entries and then stopped in the middle
        of their deliveries (crashed: no outcome recorded, no renewal)
        loses them once the lease runs out, and another node's runner
        delivers each of them once.
        """
        from twisted.internet import reactor

        total = 4
        hung: List[defer.Deferred] = []
        taken: defer.Deferred = defer.Deferred()
        deliveries: Dict[str, int] = {}
        delivered: defer.Deferred = defer.Deferred()

        class HungRelay:
            def destinationOf(self, address: str) -> str:
                return address.partition("@")[2]

            def deliver(self, destination: str, jobs: List[Job], report: Any) -> defer.Deferred:
                hung.append(defer.Deferred())
                if len(hung) == total:
                    taken.callback(None)
                return hung[-1]

        class Relay(HungRelay):
            def deliver(self, destination: str, jobs: List[Job], report: Any) -> defer.Deferred:
                @defer.inlineCallbacks
                def go():
                    for job in jobs:
                        deliveries[job.entryId] = deliveries.get(job.entryId, 0) + 1
                        yield report(job, {r: Result(RDELIVERED, "250 ok", "mx.far.test") for r in job.recipients})
                    if len(deliveries) == total and not delivered.called:
                        delivered.callback(None)

                return go()

        crashed = self.makeQueue(reactor)
        first = QueueRunner(crashed, HungRelay(), reactor, "mail.example.test", pollInterval=5.0)
        first.startService()
        ids = []
        for i in range(total):
            ids.append((yield self.enqueue([f"r{i}@d{i}.test"], queue=crashed)))
        yield taken
        self.assertEqual(sorted(crashed.claimedIds()), sorted(ids))
        # The second node's queue clock is a lease (and a second) ahead:
        # as if that long went by without the first node renewing.
        survivor = self.makeQueue(_ShiftedClock(reactor, crashed.lease + 1))
        second = QueueRunner(survivor, Relay(), reactor, "mail.example.test", pollInterval=5.0)
        second.startService()
        try:
            yield delivered
        finally:
            yield second.stopService()
            for d in hung:
                d.callback(None)
            yield first.stopService()
        self.assertEqual(deliveries, {i: 1 for i in ids})
        self.assertEqual(self.rawQuery("SELECT COUNT(*) FROM queue_messages"), [(0,)])

    @defer.inlineCallbacks
    def test_backlogClaimedAtOnce(self):
        """
        When a pass stops because it has no more room (C{claimBatch}) with
        due entries left, the next wake-up time is now: the runner claims
        the rest right after its batch instead of waiting.  While a pass is
        under way it is not sooner than a second away (that pass tells the
        observers when it claims), so nobody asks in a loop.
        """
        self.queue.claimBatch = 2
        ids = []
        for i in range(5):
            ids.append((yield self.enqueue([f"r{i}@far.test"])))
        now = self.clock.seconds()
        first = yield self.queue.claim()
        self.assertEqual(len(first), 2)
        self.assertEqual(self.queue.nextWakeup(exclude=first), now)
        self.queue.due()
        self.assertEqual(self.queue.nextWakeup(exclude=first), now + 1.0)
        yield self.queue.claim()
        yield self.queue.claim()
        self.assertEqual(sorted(self.queue.claimedIds()), sorted(ids))
        self.assertIsNone(self.queue.nextWakeup(exclude=ids))
        self.assertEqual(self.queue.nextWakeup(), now)


class _ShiftedClock:
    """
    The reactor's timers with a clock C{offset} seconds ahead of it.
    """

    def __init__(self, reactor: Any, offset: float) -> None:
        self._reactor = reactor
        self.offset = offset

    def seconds(self) -> float:
        return self._reactor.seconds() + self.offset

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        return self._reactor.callLater(delay, f, *args, **kw)
