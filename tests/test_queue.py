"""
Tests for L{mailplat.queue}: the durable outbound queue, and the
C{mailplat queue} admin command.
"""

import io
import json
import os
import time
from types import SimpleNamespace
from typing import Any, Callable, List

from twisted.internet import defer, task
from twisted.python.threadable import isInIOThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailplat.admin import queue_cmd
from mailplat.errors import ConfigError
from mailplat.queue import DEFERRED, DELIVERED, FAILED, PENDING, NoSuchEntry, Queue

BODY = b"Subject: hi\r\n\r\nHello\r\n"


class QueueTests(SynchronousTestCase):
    """
    L{Queue} on a temporary directory with a fake clock.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.path = self.mktemp()
        self.queue = Queue(self.path, self.clock)

    def enqueue(self, recipients=("bob@far.test",), sender="alice@example.test") -> str:
        return self.successResultOf(self.queue.enqueue(sender, list(recipients), io.BytesIO(BODY)))

    def test_enqueueWritesFiles(self) -> None:
        """
        The message and its metadata are on disk when the Deferred fires.
        """
        queueId = self.enqueue(["bob@far.test", "carol@far.test", "bob@far.test"])
        with open(os.path.join(self.path, queueId + ".msg"), "rb") as f:
            self.assertEqual(f.read(), BODY)
        with open(os.path.join(self.path, queueId + ".json")) as f:
            meta = json.load(f)
        self.assertEqual(meta["sender"], "alice@example.test")
        self.assertEqual([r["address"] for r in meta["recipients"]], ["bob@far.test", "carol@far.test"])
        self.assertEqual({r["state"] for r in meta["recipients"]}, {PENDING})
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        with self.queue.openMessage(queueId) as f:
            self.assertEqual(f.read(), BODY)

    def test_noRecipients(self) -> None:
        self.failureResultOf(self.queue.enqueue(None, [], io.BytesIO(BODY)), ValueError)

    def test_restart(self) -> None:
        """
        A new queue on the same directory knows every entry and its state.
        """
        first = self.enqueue(["a@far.test", "b@far.test"])
        self.clock.advance(1)
        second = self.enqueue(sender=None)
        self.successResultOf(self.queue.markDeferred(first, ["a@far.test"], "451 4.3.0 later", 2000, "mx.far.test"))
        queue = Queue(self.path, self.clock)
        self.assertEqual([e.id for e in queue.list()], [first, second])
        entry = queue.get(first)
        a, b = entry.recipients
        self.assertEqual((a.state, a.reply, a.attempts, a.nextAttempt, a.remoteMTA), (DEFERRED, "451 4.3.0 later", 1, 2000, "mx.far.test"))
        self.assertEqual(b.state, PENDING)
        self.assertIsNone(queue.get(second).sender)

    def test_due(self) -> None:
        queueId = self.enqueue(["a@far.test", "b@far.test"])
        self.assertEqual([e.id for e in self.queue.due()], [queueId])
        self.successResultOf(self.queue.markDeferred(queueId, ["a@far.test", "b@far.test"], "451 later", 1300))
        self.assertEqual(self.queue.due(), [])
        self.assertEqual(self.queue.nextWakeup(), 1300)
        self.assertEqual([e.id for e in self.queue.due(1300)], [queueId])

    def test_finalStatesStay(self) -> None:
        """
        A delivered recipient never goes back to waiting.
        """
        queueId = self.enqueue()
        self.successResultOf(self.queue.markDelivered(queueId, ["bob@far.test"], "250 ok"))
        self.successResultOf(self.queue.markDeferred(queueId, ["bob@far.test"], "451 later", 0))
        self.successResultOf(self.queue.markFailed(queueId, ["bob@far.test"], "550 no"))
        r = self.queue.get(queueId).recipients[0]
        self.assertEqual((r.state, r.reply, r.attempts), (DELIVERED, "250 ok", 1))
        self.assertEqual(self.queue.due(), [])

    def test_markAfterDelete(self) -> None:
        queueId = self.enqueue()
        self.successResultOf(self.queue.delete(queueId))
        self.assertIsNone(self.successResultOf(self.queue.markDelivered(queueId, ["bob@far.test"], "250 ok")))
        self.assertEqual(sorted(os.listdir(self.path)), ["lock", "tmp"])
        self.assertRaises(NoSuchEntry, self.queue.get, queueId)
        self.failureResultOf(self.queue.delete(queueId), NoSuchEntry)

    def test_badIds(self) -> None:
        for bad in ["../x", "", "ABC", "x" * 10]:
            self.assertRaises(NoSuchEntry, self.queue.get, bad)
            self.failureResultOf(self.queue.delete(bad), NoSuchEntry)

    def test_holdReleaseFlush(self) -> None:
        woken = []
        self.queue.addObserver(lambda: woken.append(1))
        queueId = self.enqueue()
        self.assertEqual(len(woken), 1)
        self.successResultOf(self.queue.hold(queueId))
        self.assertEqual(self.queue.due(), [])
        self.assertIsNone(self.queue.nextWakeup())
        self.assertEqual(self.successResultOf(self.queue.flush()), [])
        self.successResultOf(self.queue.release(queueId))
        self.assertEqual(len(woken), 3)
        self.successResultOf(self.queue.markDeferred(queueId, ["bob@far.test"], "451 later", 5000))
        self.assertEqual(self.queue.due(), [])
        self.assertEqual(self.successResultOf(self.queue.flush(queueId)), [queueId])
        self.assertEqual([e.id for e in self.queue.due()], [queueId])

    def test_otherProcessChanges(self) -> None:
        """
        Changes made through another L{Queue} on the same directory (the
        admin command) are seen.
        """
        queueId = self.enqueue()
        other = Queue(self.path, self.clock)
        self.successResultOf(other.hold(queueId))
        self.assertTrue(self.queue.get(queueId).held)
        self.assertEqual(self.queue.due(), [])
        self.successResultOf(other.delete(queueId))
        self.assertEqual(self.queue.list(), [])

    def test_passReadsOnlyNewEntries(self) -> None:
        """
        A runner's pass (L{Queue.due}) reads no entry it has read before,
        however many there are; an entry another process added is read
        once.
        """
        ids = [self.enqueue([f"r{i}@far.test"]) for i in range(5)]
        reads: List[str] = []
        readMeta = self.queue._readMeta

        def counting(entryId: str) -> Any:
            reads.append(entryId)
            return readMeta(entryId)

        self.patch(self.queue, "_readMeta", counting)
        for _ in range(3):
            self.assertEqual(sorted(e.id for e in self.queue.due()), sorted(ids))
        self.assertEqual(reads, [])
        added = self.successResultOf(Queue(self.path, self.clock).enqueue(None, ["x@far.test"], io.BytesIO(BODY)))
        self.assertIn(added, [e.id for e in self.queue.due()])
        self.assertEqual(reads, [added])

    def test_depthAndOldest(self) -> None:
        """
        The metrics page's figures: how many entries, the oldest one's
        queueing time, an entry another process added counted (and read
        once), a removed one not.
        """
        self.assertEqual((self.queue.depth, self.queue.oldest), (0, None))
        first = self.enqueue()
        self.clock.advance(10)
        self.enqueue()
        reads: List[str] = []
        readMeta = self.queue._readMeta
        self.patch(self.queue, "_readMeta", lambda entryId: reads.append(entryId) or readMeta(entryId))
        self.assertEqual((self.queue.depth, self.queue.oldest), (2, 1000.0))
        added = self.successResultOf(Queue(self.path, self.clock).enqueue(None, ["x@far.test"], io.BytesIO(BODY)))
        self.assertEqual(self.queue.depth, 3)
        self.assertEqual(self.queue.depth, 3)
        self.assertEqual(reads, [added])
        self.successResultOf(self.queue.delete(first))
        self.assertEqual((self.queue.depth, self.queue.oldest), (2, 1010.0))

    def test_otherProcessRewritesSeenByAPass(self) -> None:
        """
        A pass sees what another process did to an entry it already knew
        (hold, release, delete), with no other read in between; so it does
        when the generation counter is garbled.
        """
        queueId = self.enqueue()
        self.assertEqual([e.id for e in self.queue.due()], [queueId])
        other = Queue(self.path, self.clock)
        self.successResultOf(other.hold(queueId))
        self.assertEqual(self.queue.due(), [])
        self.successResultOf(other.release(queueId))
        self.assertEqual([e.id for e in self.queue.due()], [queueId])
        # The queue's own changes do not make it look at every file again.
        self.successResultOf(self.queue.hold(queueId))
        self.assertEqual(self.queue._generation, self.queue._readGeneration())
        with open(os.path.join(self.path, "generation"), "wb") as f:
            f.write(b"garbage")
        self.successResultOf(other.release(queueId))
        self.assertEqual([e.id for e in self.queue.due()], [queueId])
        self.successResultOf(other.delete(queueId))
        self.assertEqual(self.queue.due(), [])

    def test_crashLeftovers(self) -> None:
        """
        An old message file without metadata (an enqueue that never
        finished, never acknowledged) and old temporary files are removed
        at start; an entry is never lost.
        """
        queueId = self.enqueue()
        orphan = os.path.join(self.path, "00000003e8aaaaaaaaaaaa.msg")
        tmp = os.path.join(self.path, "tmp", "00000003e8bbbbbbbbbbbb.json")
        for name in (orphan, tmp):
            with open(name, "wb") as f:
                f.write(b"x")
            old = time.time() - 3600
            os.utime(name, (old, old))
        queue = Queue(self.path, self.clock)
        self.assertFalse(os.path.exists(orphan))
        self.assertFalse(os.path.exists(tmp))
        self.assertEqual([e.id for e in queue.list()], [queueId])

    def test_failedUntilNotified(self) -> None:
        queueId = self.enqueue()
        entry = self.successResultOf(self.queue.markFailed(queueId, ["bob@far.test"], "550 5.1.1 no"))
        self.assertEqual(entry.recipients[0].state, FAILED)
        self.assertFalse(entry.isFinished())
        entry = self.successResultOf(self.queue.markNotified(queueId, ["bob@far.test"], "failed"))
        self.assertTrue(entry.isFinished())


class QueueCommandTests(SynchronousTestCase):
    """
    C{mailplat queue ...} through L{queue_cmd.run}.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.config = SimpleNamespace(dataDir=self.mktemp())
        self.queue = Queue(queue_cmd.queuePath(self.config), self.clock)
        self.queueId = self.successResultOf(self.queue.enqueue("a@example.test", ["b@far.test"], io.BytesIO(BODY)))

    def command(self, *argv: str) -> str:
        options = queue_cmd.QueueOptions()
        options.parseOptions(list(argv))
        out = io.StringIO()
        self.successResultOf(queue_cmd.run(options, self.config, out, self.clock))
        return out.getvalue()

    def test_listShow(self) -> None:
        self.assertIn(self.queueId + " ", self.command("list"))
        shown = self.command("show", self.queueId)
        self.assertIn("sender: <a@example.test>", shown)
        self.assertIn("recipient: b@far.test pending", shown)

    def test_holdReleaseFlushDelete(self) -> None:
        self.command("hold", self.queueId)
        self.assertTrue(self.queue.get(self.queueId).held)
        self.assertIn("HELD", self.command("list"))
        self.command("release", self.queueId)
        self.assertFalse(self.queue.get(self.queueId).held)
        self.assertEqual(self.command("flush"), "flushed 1 message(s)\n")
        self.command("delete", self.queueId)
        self.assertEqual(self.queue.list(), [])

    def test_unknown(self) -> None:
        options = queue_cmd.QueueOptions()
        options.parseOptions(["show", "0123456789abcdef"])
        self.failureResultOf(queue_cmd.run(options, self.config, io.StringIO(), self.clock), ConfigError)


class EnvelopeParameterQueueTests(SynchronousTestCase):
    """
    DSN parameters and the SMTPUTF8 flag are kept with an entry.
    """

    def test_roundTrip(self) -> None:
        from mailplat.smtp.envelope import RecipientParameters

        clock = task.Clock()
        path = self.mktemp()
        queue = Queue(path, clock)
        entryId = self.successResultOf(
            queue.enqueue(
                "a@example.test",
                ["b@far.test", "c@far.test"],
                io.BytesIO(b"\r\nx\r\n"),
                envid="E",
                ret="FULL",
                parameters={"b@far.test": RecipientParameters(["SUCCESS", "FAILURE"], "rfc822;B@far.test")},
                smtputf8=True,
            )
        )
        entry = Queue(path, clock).get(entryId)
        self.assertEqual((entry.envid, entry.ret, entry.smtputf8), ("E", "FULL", True))
        b, c = entry.recipients
        self.assertEqual((b.notify, b.orcpt), (["SUCCESS", "FAILURE"], "rfc822;B@far.test"))
        self.assertTrue(b.wants("SUCCESS"))
        self.assertEqual((c.notify, c.orcpt), (None, None))
        self.assertFalse(c.wants("SUCCESS"))

    def test_oldRecordWithoutFlag(self) -> None:
        from mailplat.queue import QueueEntry

        entry = QueueEntry.fromJSON({"id": "0123456789ab", "sender": None, "created": 1.0, "recipients": [{"address": "x@y"}]})
        self.assertFalse(entry.smtputf8)


class ThreadedQueueTests(TestCase):
    """
    L{Queue.inThreads}, as a server runs it: changes are made in the
    reactor's thread pool, and their Deferreds fire on the reactor thread
    once they are durable.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.path = self.mktemp()
        self.queue = Queue.inThreads(self.path, reactor)
        self.threads: List[bool] = []
        for name in ("_writeFile", "_writeMeta", "_removeFiles"):
            self.patch(self.queue, name, self.recording(getattr(self.queue, name)))

    def recording(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def called(*args: Any) -> Any:
            self.threads.append(isInIOThread())
            return method(*args)

        return called

    @defer.inlineCallbacks
    def test_changesOffTheReactorThread(self) -> None:
        """
        Enqueue, the marks, hold, release, flush and delete write their
        files off the reactor thread; the reads see each change once its
        Deferred has fired, and a new queue on the directory too.
        """
        notified: List[bool] = []
        self.queue.addObserver(lambda: notified.append(isInIOThread()))
        d = self.queue.enqueue("alice@example.test", ["bob@far.test", "carol@far.test"], io.BytesIO(BODY))
        self.assertFalse(d.called)
        queueId = yield d
        self.assertEqual(notified, [True])
        with open(os.path.join(self.path, queueId + ".msg"), "rb") as f:
            self.assertEqual(f.read(), BODY)
        yield self.queue.markDelivered(queueId, ["bob@far.test"], "250 ok", "mx.far.test")
        yield self.queue.markDeferred(queueId, ["carol@far.test"], "451 later", time.time() + 600)
        yield self.queue.hold(queueId)
        self.assertTrue(self.queue.get(queueId).held)
        yield self.queue.release(queueId)
        self.assertEqual((yield self.queue.flush()), [queueId])
        states = {r.address: r.state for r in Queue(self.path, self.queue.clock).get(queueId).recipients}
        self.assertEqual(states, {"bob@far.test": DELIVERED, "carol@far.test": DEFERRED})
        yield self.queue.delete(queueId)
        self.assertEqual(self.queue.list(), [])
        self.assertTrue(self.threads)
        self.assertNotIn(True, self.threads)

    @defer.inlineCallbacks
    def test_concurrentChanges(self) -> None:
        """
        Enqueues and marks made all at once, in several pool threads, are
        each on disk once their Deferreds fire.
        """
        ids = yield defer.gatherResults([
            self.queue.enqueue("alice@example.test", [f"r{i}@far.test"], io.BytesIO(BODY)) for i in range(20)
        ])
        self.assertEqual(len(set(ids)), 20)
        yield defer.gatherResults([
            self.queue.markFailed(queueId, [f"r{i}@far.test"], "550 no") for i, queueId in enumerate(ids)
        ])
        fresh = Queue(self.path, self.queue.clock)
        self.assertEqual(sorted(e.id for e in fresh.list()), sorted(ids))
        self.assertEqual({r.state for e in fresh.list() for r in e.recipients}, {FAILED})

    @defer.inlineCallbacks
    def test_failureChangesNothing(self) -> None:
        """
        An enqueue whose message cannot be read fails, and leaves no file.
        """
        class Unreadable(io.BytesIO):
            def read(self, *args: Any) -> bytes:
                raise OSError("unreadable")

        with self.assertRaises(OSError):
            yield self.queue.enqueue("alice@example.test", ["bob@far.test"], Unreadable())
        self.assertEqual(self.queue.list(), [])
        self.assertEqual([n for n in os.listdir(self.path) if n not in ("tmp", "lock")], [])
