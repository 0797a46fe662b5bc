"""
Tests for L{mailplat.relay}: MX lookup, the SMTP client, and the queue
runner delivering to our own L{SMTPServer} on a loopback port as the
remote MX, with a fake resolver and a scriptable fake delivery.
"""

import base64
import io
import os
from typing import Dict, List, Optional, Tuple

from twisted.internet import defer, reactor, task
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mailplat.delivery.directory import StoreDirectory
from mailplat.delivery.local import LocalDelivery
from mailplat.errors import SMTPReply
from mailplat.interfaces import IDelivery
from mailplat.queue import DEFERRED, DELIVERED, FAILED, Queue
from mailplat.relay import DestinationError, Relay, parseHostPort
from mailplat.relay.runner import QueueRunner
from mailplat.smtp.server import SMTPFactory, SMTPServer
from mailplat.store.memory import MemoryStore

MESSAGE = b"From: alice@example.test\r\nSubject: test\r\n\r\nHello\r\n.leading dot\r\n..two dots\r\n"


class FakeResolver:
    """
    A C{twisted.names} resolver answering from dictionaries.

    @ivar mx: domain to C{[(preference, host)]}.
    @ivar a: host to IPv4 addresses.
    @ivar nxdomain: names that do not exist.
    @ivar broken: names whose lookups fail with a server error.
    """

    def __init__(self, mx: Dict[str, List[Tuple[int, str]]], a: Dict[str, List[str]]) -> None:
        self.mx = mx
        self.a = a
        self.nxdomain: set = set()
        self.broken: set = set()
        self.queries: List[Tuple[str, str]] = []

    def _check(self, name: str) -> Optional[defer.Deferred]:
        if name in self.nxdomain:
            return defer.fail(dnserror.DNSNameError(name))
        if name in self.broken:
            return defer.fail(dnserror.DNSServerError(name))
        return None

    def lookupMailExchange(self, name: str, timeout: object = None) -> defer.Deferred:
        self.queries.append(("MX", name))
        failed = self._check(name)
        if failed is not None:
            return failed
        records = [dns.RRHeader(name, dns.MX, payload=dns.Record_MX(pref, host.encode())) for pref, host in self.mx.get(name, [])]
        return defer.succeed((records, [], []))

    def lookupAddress(self, name: str, timeout: object = None) -> defer.Deferred:
        self.queries.append(("A", name))
        failed = self._check(name)
        if failed is not None:
            return failed
        records = [dns.RRHeader(name, dns.A, payload=dns.Record_A(ip)) for ip in self.a.get(name, [])]
        return defer.succeed((records, [], []))

    def lookupIPV6Address(self, name: str, timeout: object = None) -> defer.Deferred:
        self.queries.append(("AAAA", name))
        return defer.succeed(([], [], []))


@implementer(IDelivery)
class ScriptedDelivery:
    """
    The remote MX's delivery: accepts everything unless told otherwise.

    @ivar rcptReplies: address to a list of L{SMTPReply} raised by the
        next RCPT calls for it (one per call, popped; nothing left means
        accepted).
    @ivar dataReplies: L{SMTPReply}s raised by the next deliver calls.
    @ivar messages: C{(session, sender, recipients, bytes)} received.
    """

    def __init__(self) -> None:
        self.rcptReplies: Dict[str, List[SMTPReply]] = {}
        self.dataReplies: List[SMTPReply] = []
        self.messages: List[tuple] = []
        self.envelopes: List[object] = []

    def validateSender(self, session: object, sender: Optional[str]) -> defer.Deferred:
        return defer.succeed(None)

    def validateRecipient(self, session: object, recipient: str) -> defer.Deferred:
        script = self.rcptReplies.get(recipient)
        if script:
            return defer.fail(script.pop(0))
        return defer.succeed(None)

    def deliver(self, session: object, sender: Optional[str], recipients: List[str], message: io.BufferedIOBase) -> defer.Deferred:
        if self.dataReplies:
            return defer.fail(self.dataReplies.pop(0))
        self.messages.append((session, sender, list(recipients), message.read()))
        self.envelopes.append(session.transaction)
        return defer.succeed(None)


class AuthServer(SMTPServer):
    """
    Our SMTP server with a toy C{AUTH PLAIN} (user C{relay}, password
    C{secret}), standing in for a smarthost.
    """

    def extensions(self) -> List[str]:
        return super().extensions() + ["AUTH PLAIN"]

    def do_AUTH(self, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() != "PLAIN":
            self.sendReply(504, "5.5.4", "Unrecognized authentication type")
            return
        if base64.b64decode(initial) == b"\0relay\0secret":
            self.session.authenticated = "relay"
            self.sendReply(235, "2.7.0", "Authentication successful")
        else:
            self.sendReply(535, "5.7.8", "Authentication credentials invalid")


class CountingFactory(SMTPFactory):
    """
    Counts the connections made to it.
    """

    connections = 0

    def buildProtocol(self, addr: object) -> SMTPServer:
        self.connections += 1
        return super().buildProtocol(addr)


class RelayTestMixin:
    """
    A remote MX on a loopback port, a queue, a runner on a fake clock, and
    a local store where DSNs are delivered.
    """

    protocolClass = SMTPServer
    timeout = 30

    def setUp(self) -> None:
        self.remote = ScriptedDelivery()
        self.factory = CountingFactory(self.remote, "mx.remote.test")
        self.factory.protocol = self.protocolClass
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.resolver = FakeResolver(
            {"remote.test": [(10, "mx.remote.test")]},
            {"mx.remote.test": ["127.0.0.1"], "dead.remote.test": ["127.0.0.2"]},
        )
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.path = self.mktemp()
        self.queue = Queue(self.path, self.clock)
        self.store = MemoryStore()
        self.successResultOf(self.store.getAccount("alice@example.test", create=True))
        self.pipeline = LocalDelivery(StoreDirectory(self.store), self.store, self.queue)
        self.relay = self.makeRelay()
        self.runner = self.makeRunner()

    def makeRelay(self, **kw: object) -> Relay:
        return Relay("relay.example.test", self.resolver, reactor, port=self.port.getHost().port, commandTimeout=10, **kw)

    def makeRunner(self, **kw: object) -> QueueRunner:
        kw.setdefault("bounce", self.pipeline.inject)
        return QueueRunner(self.queue, self.relay, self.clock, "relay.example.test", **kw)

    def enqueue(self, recipients: List[str], sender: Optional[str] = "alice@example.test", message: bytes = MESSAGE) -> str:
        return self.successResultOf(self.queue.enqueue(sender, recipients, io.BytesIO(message)))

    def inbox(self, address: str = "alice@example.test") -> List[bytes]:
        account = self.successResultOf(self.store.getAccount(address))
        box = self.successResultOf(account.getMailbox("INBOX"))
        return [self.successResultOf(box.openMessage(i.uid)).read() for i in self.successResultOf(box.listMessages())]


class MXLookupTests(TestCase):
    """
    L{Relay.lookup}: MX order, implicit MX, null MX, DNS errors, smarthost.
    """

    def relay(self, resolver: FakeResolver, **kw: object) -> Relay:
        return Relay("me.test", resolver, reactor, **kw)

    def test_preferenceOrder(self) -> None:
        resolver = FakeResolver(
            {"d.test": [(20, "b.d.test"), (10, "a.d.test"), (30, "c.d.test")]},
            {"a.d.test": ["192.0.2.1"], "b.d.test": ["192.0.2.2", "192.0.2.3"], "c.d.test": []},
        )
        hosts = self.successResultOf(self.relay(resolver).lookup("d.test"))
        self.assertEqual(hosts, [("a.d.test", "192.0.2.1", 25), ("b.d.test", "192.0.2.2", 25), ("b.d.test", "192.0.2.3", 25)])

    def test_implicitMX(self) -> None:
        resolver = FakeResolver({}, {"d.test": ["192.0.2.9"]})
        self.assertEqual(self.successResultOf(self.relay(resolver).lookup("d.test")), [("d.test", "192.0.2.9", 25)])

    def test_nullMX(self) -> None:
        resolver = FakeResolver({"d.test": [(0, "")]}, {"d.test": ["192.0.2.9"]})
        e = self.failureResultOf(self.relay(resolver).lookup("d.test"), DestinationError).value
        self.assertTrue(e.permanent)
        self.assertTrue(e.reply.startswith("556 5.1.10"))

    def test_noSuchDomain(self) -> None:
        resolver = FakeResolver({}, {})
        resolver.nxdomain.add("d.test")
        e = self.failureResultOf(self.relay(resolver).lookup("d.test"), DestinationError).value
        self.assertTrue(e.permanent)
        self.assertTrue(e.reply.startswith("550 5.1.2"))

    def test_dnsTrouble(self) -> None:
        resolver = FakeResolver({}, {})
        resolver.broken.add("d.test")
        e = self.failureResultOf(self.relay(resolver).lookup("d.test"), DestinationError).value
        self.assertFalse(e.permanent)

    def test_noAddress(self) -> None:
        resolver = FakeResolver({"d.test": [(10, "mx.d.test")]}, {})
        e = self.failureResultOf(self.relay(resolver).lookup("d.test"), DestinationError).value
        self.assertFalse(e.permanent)

    def test_smarthost(self) -> None:
        resolver = FakeResolver({}, {"smart.test": ["192.0.2.5"]})
        relay = self.relay(resolver, smarthost=("smart.test", 587))
        self.assertEqual(self.successResultOf(relay.lookup("anything.test")), [("smart.test", "192.0.2.5", 587)])
        self.assertEqual(relay.destinationOf("x@a.test"), relay.destinationOf("y@b.test"))
        self.assertNotIn(("MX", "anything.test"), resolver.queries)

    def test_parseHostPort(self) -> None:
        self.assertEqual(parseHostPort("smart.test:2525"), ("smart.test", 2525))
        self.assertEqual(parseHostPort("smart.test"), ("smart.test", 25))
        self.assertEqual(parseHostPort("[2001:db8::1]:587"), ("2001:db8::1", 587))
        self.assertRaises(ValueError, parseHostPort, "smart.test:x")


class RunnerTests(RelayTestMixin, TestCase):
    """
    L{QueueRunner} delivering to a loopback MX.
    """

    @defer.inlineCallbacks
    def test_delivery(self):
        """
        The message arrives whole, dot-stuffing undone by the server; the
        entry is removed.
        """
        queueId = self.enqueue(["bob@remote.test", "carol@remote.test"])
        yield self.runner.runOnce()
        self.assertEqual(len(self.remote.messages), 1)
        session, sender, recipients, data = self.remote.messages[0]
        self.assertEqual(sender, "alice@example.test")
        self.assertEqual(recipients, ["bob@remote.test", "carol@remote.test"])
        self.assertTrue(data.endswith(MESSAGE), data)
        self.assertEqual(session.helo, "relay.example.test")
        self.assertEqual(self.queue.list(), [])
        self.assertFalse(os.path.exists(os.path.join(self.path, queueId + ".msg")))

    @defer.inlineCallbacks
    def test_largeMessageDotStuffing(self):
        """
        A large message is streamed; lines starting with a dot survive
        whatever chunk boundary they fall on, and a missing final CRLF is
        added.
        """
        body = b"Subject: big\r\n\r\n" + b".abcd\r\n" * 50000 + b"..end"
        self.enqueue(["bob@remote.test"], message=body)
        yield self.runner.runOnce()
        [(_, _, _, data)] = self.remote.messages
        self.assertTrue(data.endswith(body + b"\r\n"))

    @defer.inlineCallbacks
    def test_connectionReused(self):
        """
        Several messages for one destination go over one connection.
        """
        self.enqueue(["bob@remote.test"])
        self.enqueue(["carol@remote.test"], message=b"Subject: 2\r\n\r\nsecond\r\n")
        yield self.runner.runOnce()
        self.assertEqual(len(self.remote.messages), 2)
        self.assertEqual(self.factory.connections, 1)

    @defer.inlineCallbacks
    def test_mxFallback(self):
        """
        The best MX refuses the connection: the next one gets the mail.
        """
        self.resolver.mx["remote.test"] = [(20, "mx.remote.test"), (10, "dead.remote.test")]
        self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        self.assertEqual(len(self.remote.messages), 1)
        self.assertEqual([q for q in self.resolver.queries if q[0] == "A"], [("A", "dead.remote.test"), ("A", "mx.remote.test")])

    @defer.inlineCallbacks
    def test_deferThenSucceed(self):
        """
        A 4xx defers the recipient with backoff; after the delay it is
        tried again and delivered; only the failing recipient is retried.
        """
        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(451, "4.3.0", "Try later"), SMTPReply(452, "4.2.2", "Full")]
        queueId = self.enqueue(["bob@remote.test", "carol@remote.test"])
        yield self.runner.runOnce()
        entry = self.queue.get(queueId)
        bob, carol = entry.recipients
        self.assertEqual((bob.state, bob.attempts, bob.reply), (DEFERRED, 1, "451 4.3.0 Try later"))
        self.assertEqual(bob.nextAttempt, self.clock.seconds() + 300)
        self.assertEqual(carol.state, DELIVERED)
        self.assertEqual(self.queue.due(), [])

        self.clock.advance(300)
        yield self.runner.runOnce()
        bob = self.queue.get(queueId).recipients[0]
        self.assertEqual((bob.state, bob.attempts), (DEFERRED, 2))
        self.assertEqual(bob.nextAttempt, self.clock.seconds() + 600)

        self.clock.advance(600)
        yield self.runner.runOnce()
        self.assertEqual(self.queue.list(), [])
        self.assertEqual([m[2] for m in self.remote.messages], [["carol@remote.test"], ["bob@remote.test"]])

    @defer.inlineCallbacks
    def test_backoffCapped(self):
        """
        The delay doubles up to C{retryMax}.
        """
        self.runner = self.makeRunner(retryBase=100, retryMax=350, delayWarning=None)
        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(451, "4.3.0", "later")] * 4
        queueId = self.enqueue(["bob@remote.test"])
        delays = []
        for _ in range(4):
            yield self.runner.runOnce()
            r = self.queue.get(queueId).recipients[0]
            delays.append(r.nextAttempt - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [100, 200, 350, 350])

    @defer.inlineCallbacks
    def test_permanentFailureBounces(self):
        """
        A 5xx fails the recipient; the bounce is delivered to the local
        sender with the null reverse path; the entry is removed.
        """
        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(550, "5.1.1", "No such user here")]
        self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        self.assertEqual(self.remote.messages, [])
        self.assertEqual(self.queue.list(), [])
        [dsn] = self.inbox()
        self.assertTrue(dsn.startswith(b"Return-Path: <>\r\n"))
        self.assertIn(b"report-type=delivery-status", dsn)
        self.assertIn(b"Final-Recipient: rfc822; bob@remote.test\r\n", dsn)
        self.assertIn(b"Action: failed\r\n", dsn)
        self.assertIn(b"Status: 5.1.1\r\n", dsn)
        self.assertIn(b"Remote-MTA: dns; mx.remote.test\r\n", dsn)
        self.assertIn(b"Diagnostic-Code: smtp; 550 5.1.1 No such user here\r\n", dsn)
        self.assertIn(b"Subject: test\r\n", dsn)

    @defer.inlineCallbacks
    def test_dataRefused(self):
        """
        A 5xx after the data fails every accepted recipient.
        """
        self.remote.dataReplies.append(SMTPReply(554, "5.7.1", "Spam"))
        self.enqueue(["bob@remote.test", "carol@remote.test"])
        yield self.runner.runOnce()
        [dsn] = self.inbox()
        self.assertEqual(dsn.count(b"Action: failed"), 2)
        self.assertIn(b"Status: 5.7.1", dsn)

    @defer.inlineCallbacks
    def test_bounceNeverBounced(self):
        """
        A message from the null sender that fails is dropped, not bounced.
        """
        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(550, "5.1.1", "No such user")]
        self.enqueue(["bob@remote.test"], sender=None)
        yield self.runner.runOnce()
        self.assertEqual(self.queue.list(), [])
        self.assertEqual(self.inbox(), [])

    @defer.inlineCallbacks
    def test_remoteSenderBounceQueued(self):
        """
        The bounce for a remote sender goes into the queue with C{<>}.
        """
        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(550, "5.1.1", "No such user")]
        self.enqueue(["bob@remote.test"], sender="someone@far.test")
        yield self.runner.runOnce()
        [entry] = self.queue.list()
        self.assertIsNone(entry.sender)
        self.assertEqual([r.address for r in entry.recipients], ["someone@far.test"])

    @defer.inlineCallbacks
    def test_nullMX(self):
        """
        A domain with a null MX fails at once, without connecting.
        """
        self.resolver.mx["remote.test"] = [(0, "")]
        self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        self.assertEqual(self.factory.connections, 0)
        [dsn] = self.inbox()
        self.assertIn(b"Status: 5.1.10\r\n", dsn)

    @defer.inlineCallbacks
    def test_expiry(self):
        """
        A recipient deferred past the lifetime fails with 4.4.7 and is
        bounced; the last attempt happens at the end of the lifetime.
        """
        self.runner = self.makeRunner(retryBase=600, retryMax=3600, lifetime=3000, delayWarning=None)
        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(451, "4.3.0", "Try later")] * 10
        queueId = self.enqueue(["bob@remote.test"])
        start = self.clock.seconds()
        attempts = []
        for _ in range(10):
            yield self.runner.runOnce()
            attempts.append(self.clock.seconds() - start)
            if not self.queue.list():
                break
            self.clock.advance(self.queue.get(queueId).recipients[0].nextAttempt - self.clock.seconds())
        self.assertEqual(attempts, [0, 600, 1800, 3000])
        [dsn] = self.inbox()
        self.assertIn(b"Action: failed\r\n", dsn)
        self.assertIn(b"Status: 4.4.7\r\n", dsn)
        self.assertIn(b"Diagnostic-Code: smtp; 451 4.3.0 Try later\r\n", dsn)

    @defer.inlineCallbacks
    def test_delayWarningOnce(self):
        """
        One delay warning after C{delayWarning}, however many attempts.
        """
        self.runner = self.makeRunner(retryBase=300, delayWarning=600)
        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(451, "4.3.0", "Try later")] * 4
        queueId = self.enqueue(["bob@remote.test"])
        for _ in range(4):
            yield self.runner.runOnce()
            self.clock.advance(self.queue.get(queueId).recipients[0].nextAttempt - self.clock.seconds())
        [warning] = self.inbox()
        self.assertIn(b"Action: delayed\r\n", warning)
        self.assertIn(b"Status: 4.3.0\r\n", warning)
        self.assertIn(b"Will-Retry-Until: ", warning)
        self.assertIn(b"Subject: Delayed Mail", warning)
        self.assertTrue(self.queue.get(queueId).recipients[0].delayWarned)
        yield self.runner.runOnce()
        self.assertEqual(len(self.inbox()), 1)
        self.assertEqual(self.queue.list(), [])

    @defer.inlineCallbacks
    def test_restart(self):
        """
        Entries survive a restart (a new queue on the same directory), and
        a recipient already marked delivered is never sent again.
        """
        queueId = self.enqueue(["bob@remote.test", "carol@remote.test"])
        yield self.queue.markDelivered(queueId, ["bob@remote.test"], "250 2.0.0 Ok", "mx.remote.test")
        self.queue = Queue(self.path, self.clock)
        self.runner = self.makeRunner()
        yield self.runner.runOnce()
        self.assertEqual([m[2] for m in self.remote.messages], [["carol@remote.test"]])
        self.assertEqual(self.queue.list(), [])

    @defer.inlineCallbacks
    def test_connectionFailureDefers(self):
        """
        When no MX can be reached the recipients are deferred.
        """
        self.resolver.mx["remote.test"] = [(10, "dead.remote.test")]
        queueId = self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        r = self.queue.get(queueId).recipients[0]
        self.assertEqual(r.state, DEFERRED)
        self.assertTrue(r.reply.startswith("451 4.4.1"), r.reply)

    @defer.inlineCallbacks
    def test_held(self):
        """
        A held entry is not delivered until released.
        """
        queueId = self.enqueue(["bob@remote.test"])
        yield self.queue.hold(queueId)
        yield self.runner.runOnce()
        self.assertEqual(self.remote.messages, [])
        yield self.queue.release(queueId)
        yield self.runner.runOnce()
        self.assertEqual(len(self.remote.messages), 1)

    @defer.inlineCallbacks
    def test_service(self):
        """
        The started service runs when the queue gets work and after the
        retry delay, on its clock; stopping waits for the pass under way.
        """
        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(451, "4.3.0", "Try later")]
        self.runner.startService()
        self.enqueue(["bob@remote.test"])
        self.clock.advance(0)
        # The pass the clock started is under way; stopping waits for it.
        self.assertEqual(len(self.runner._inFlight), 1)
        yield defer.DeferredList(list(self.runner._inFlight))
        self.assertEqual(self.queue.list()[0].recipients[0].state, DEFERRED)
        self.assertEqual(self.remote.messages, [])
        self.clock.advance(299)
        self.assertEqual(self.runner._inFlight, [])
        self.clock.advance(1)
        yield defer.DeferredList(list(self.runner._inFlight))
        self.assertEqual(self.queue.list(), [])
        self.assertEqual(len(self.remote.messages), 1)
        yield self.runner.stopService()


class HeldRelay:
    """
    A relay whose deliveries wait until the test answers them: each call
    of L{deliver} is kept in L{calls} as C{(destination, jobs, report, d)}.
    """

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def destinationOf(self, address: str) -> str:
        return address.partition("@")[2]

    def deliver(self, destination: str, jobs: list, report: object) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((destination, jobs, report, d))
        return d

    def answer(self, index: int, reply: str = "250 2.0.0 ok") -> defer.Deferred:
        """
        Report every job of call C{index} delivered, then end the call.
        """
        from mailplat.relay import DELIVERED as RDELIVERED
        from mailplat.relay import Result

        destination, jobs, report, d = self.calls[index]
        done = defer.gatherResults(
            [report(job, {r: Result(RDELIVERED, reply, "mx." + destination) for r in job.recipients}) for job in jobs]
        )
        return done.addCallback(lambda _: d.callback(None))


class RunnerSchedulingTests(SynchronousTestCase):
    """
    When the L{QueueRunner} looks at the queue, on a L{task.Clock}.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.queue = Queue(self.mktemp(), self.clock)
        self.relay = HeldRelay()
        self.runner = QueueRunner(self.queue, self.relay, self.clock, "relay.example.test", pollInterval=60.0)
        looks: List[int] = []
        due = self.queue.due
        self.queue.due = lambda *a: looks.append(1) or due(*a)  # type: ignore[method-assign]
        self.looks = looks

    def enqueue(self, recipients: List[str]) -> str:
        return self.successResultOf(self.queue.enqueue("alice@example.test", recipients, io.BytesIO(MESSAGE)))

    def test_noLoopWhileDelivering(self) -> None:
        """
        While an entry is being delivered the runner does not look at the
        queue again and again (the entry is still due until its outcome
        is recorded): it sleeps until the poll, or until woken.
        """
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        self.enqueue(["bob@remote.test"])
        self.clock.advance(0)
        self.assertEqual(len(self.relay.calls), 1)
        looks = len(self.looks)
        for _ in range(5):
            self.clock.advance(0)
        self.assertEqual(len(self.looks), looks)
        self.assertEqual(self.runner._timer.getTime(), self.clock.seconds() + 60.0)
        # Nor when it watches for changes made by another process.
        self.clock.advance(self.runner.watchInterval)
        self.assertEqual(len(self.looks), looks)
        self.successResultOf(self.relay.answer(0))
        self.assertEqual(self.queue.list(), [])
        self.assertEqual(len(self.relay.calls), 1)

    def test_adminFlushSeenAtOnce(self) -> None:
        """
        An entry the admin command flushes (another process, another
        L{Queue} on the same directory) is tried again within the watch
        interval, not at the next poll.
        """
        from mailplat.relay import DEFERRED as RDEFERRED
        from mailplat.relay import Result

        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        entryId = self.enqueue(["bob@remote.test"])
        self.clock.advance(0)
        destination, jobs, report, d = self.relay.calls[0]
        self.successResultOf(defer.gatherResults(
            [report(job, {r: Result(RDEFERRED, "451 4.3.0 later", None) for r in job.recipients}) for job in jobs]))
        d.callback(None)
        [entry] = self.queue.list()
        self.assertGreater(entry.recipients[0].nextAttempt, self.clock.seconds() + 60)
        admin = Queue(self.queue.path, self.clock)
        self.assertEqual(self.successResultOf(admin.flush()), [entryId])
        self.clock.advance(1.0)
        self.assertEqual(len(self.relay.calls), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.relay.calls), 2)
        self.successResultOf(self.relay.answer(1))
        self.assertEqual(self.queue.list(), [])

    def test_entryFinishedWithItsBatch(self) -> None:
        """
        An entry is finished (removed) as soon as the batches carrying it
        are done, while a slower destination of the same pass is still
        being delivered; and the runner looks for more work right then.
        """
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        slow = self.enqueue(["bob@slow.test"])
        both = self.enqueue(["carol@fast.test", "dave@slow.test"])
        self.enqueue(["erin@fast.test"])
        self.clock.advance(0)
        self.assertEqual(sorted(c[0] for c in self.relay.calls), ["fast.test", "slow.test"])
        calls = {c[0]: i for i, c in enumerate(self.relay.calls)}
        self.successResultOf(self.relay.answer(calls["fast.test"]))
        # "both" still waits for its slow.test recipient.
        self.assertEqual(sorted(e.id for e in self.queue.list()), sorted([slow, both]))
        self.assertEqual(self.runner._busy, {slow, both})
        looks = len(self.looks)
        later = self.enqueue(["frank@other.test"])
        self.clock.advance(0)
        self.assertEqual(len(self.looks), looks + 1)
        self.assertEqual(self.relay.calls[-1][0], "other.test")
        self.successResultOf(self.relay.answer(calls["slow.test"]))
        self.successResultOf(self.relay.answer(len(self.relay.calls) - 1))
        self.assertEqual(self.queue.list(), [])
        self.assertNotIn(later, self.runner._busy)


class SmarthostTests(RelayTestMixin, TestCase):
    """
    Delivery through a smarthost with AUTH PLAIN.
    """

    protocolClass = AuthServer

    def makeRelay(self, **kw: object) -> Relay:
        kw.setdefault("smarthost", ("127.0.0.1", self.port.getHost().port))
        kw.setdefault("credentials", ("relay", "secret"))
        return Relay("relay.example.test", self.resolver, reactor, commandTimeout=10, **kw)

    @defer.inlineCallbacks
    def test_authenticated(self):
        self.enqueue(["bob@remote.test", "x@elsewhere.test"])
        yield self.runner.runOnce()
        [(session, sender, recipients, data)] = self.remote.messages
        self.assertEqual(session.authenticated, "relay")
        self.assertEqual(recipients, ["bob@remote.test", "x@elsewhere.test"])
        self.assertNotIn(("MX", "remote.test"), self.resolver.queries)

    @defer.inlineCallbacks
    def test_badPasswordDefers(self):
        """
        A refused login keeps the mail (our configuration is wrong).
        """
        self.relay = self.makeRelay(credentials=("relay", "wrong"))
        self.runner = self.makeRunner()
        queueId = self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        r = self.queue.get(queueId).recipients[0]
        self.assertEqual(r.state, DEFERRED)
        self.assertIn("Authentication", r.reply)
        self.assertEqual(self.remote.messages, [])


class FailedStateTests(RelayTestMixin, TestCase):
    """
    States once final stay final.
    """

    def test_finalStatesStay(self) -> None:
        queueId = self.enqueue(["bob@remote.test"])
        self.successResultOf(self.queue.markFailed(queueId, ["bob@remote.test"], "550 5.1.1 no"))
        self.successResultOf(self.queue.markDeferred(queueId, ["bob@remote.test"], "451 later", 0))
        self.assertEqual(self.queue.get(queueId).recipients[0].state, FAILED)


def _tlsContext(dataDir: str):
    """
    A server TLS context with a self-signed certificate for
    C{mx.remote.test}, and the path of that certificate; L{None} when the
    SMTP server does not offer STARTTLS yet.
    """
    import inspect

    try:
        from mailplat import tls
    except ImportError:
        return None
    if "contextFactory" not in inspect.signature(SMTPFactory.__init__).parameters:
        return None
    certPath, _ = tls.selfSignedFiles(dataDir, "mx.remote.test")
    return tls.contextForConfig(dataDir, "mx.remote.test", None, None), certPath


class StartTLSTests(RelayTestMixin, TestCase):
    """
    Opportunistic and verified STARTTLS against our own server.
    """

    def setUp(self) -> None:
        made = _tlsContext(self.mktemp())
        if made is None:
            raise self.skipTest("the SMTP server has no STARTTLS")
        self.context, self.certPath = made
        super().setUp()
        self.factory.contextFactory = self.context

    @defer.inlineCallbacks
    def test_opportunistic(self):
        """
        STARTTLS is used when offered, whatever the certificate.
        """
        self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        [(session, _, _, _)] = self.remote.messages
        self.assertTrue(session.tls)

    @defer.inlineCallbacks
    def test_verified(self):
        """
        With C{verifyTLS} a certificate for the MX name from a trusted
        root is accepted.
        """
        from twisted.internet import ssl

        with open(self.certPath, "rb") as f:
            root = ssl.Certificate.loadPEM(f.read())
        self.relay = self.makeRelay(verifyTLS=True, trustRoot=root)
        self.runner = self.makeRunner()
        self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        [(session, _, _, _)] = self.remote.messages
        self.assertTrue(session.tls)

    @defer.inlineCallbacks
    def test_verifyFails(self):
        """
        With C{verifyTLS} an untrusted certificate keeps the mail queued.
        """
        self.relay = self.makeRelay(verifyTLS=True)
        self.runner = self.makeRunner()
        queueId = self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        self.assertEqual(self.remote.messages, [])
        self.assertEqual(self.queue.get(queueId).recipients[0].state, DEFERRED)

    @defer.inlineCallbacks
    def test_requiredButNotOffered(self):
        self.factory.contextFactory = None
        self.relay = self.makeRelay(verifyTLS=True)
        self.runner = self.makeRunner()
        queueId = self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        r = self.queue.get(queueId).recipients[0]
        self.assertEqual(r.state, DEFERRED)
        self.assertIn("4.7.5", r.reply)


class BrokenTLSServer(SMTPServer):
    """
    Offers STARTTLS, says go ahead, then drops the connection: a server
    whose TLS setup is broken.
    """

    def extensions(self) -> List[str]:
        return super().extensions() + ["STARTTLS"]

    def do_STARTTLS(self, arg: str) -> None:
        self.sendReply(220, "2.0.0", "Ready to start TLS")
        self.transport.loseConnection()


class BrokenTLSTests(RelayTestMixin, TestCase):
    """
    Opportunistic TLS falls back to cleartext when the handshake fails;
    required TLS keeps the mail queued.
    """

    protocolClass = BrokenTLSServer

    @defer.inlineCallbacks
    def test_fallback(self):
        self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        [(session, _, _, _)] = self.remote.messages
        self.assertFalse(session.tls)
        self.assertEqual(self.factory.connections, 2)

    @defer.inlineCallbacks
    def test_requiredNoFallback(self):
        self.relay = self.makeRelay(verifyTLS=True)
        self.runner = self.makeRunner()
        queueId = self.enqueue(["bob@remote.test"])
        yield self.runner.runOnce()
        self.assertEqual(self.remote.messages, [])
        r = self.queue.get(queueId).recipients[0]
        self.assertEqual(r.state, DEFERRED)
        self.assertIn("4.7.5", r.reply)


class WithoutExtensionServer(SMTPServer):
    """
    Our server, not advertising (nor accepting) the extensions named in
    C{withhold}.
    """

    withhold: Tuple[str, ...] = ()

    def extensions(self) -> List[str]:
        return [k for k in super().extensions() if k not in self.withhold]

    def do_MAIL(self, arg: str) -> None:
        for keyword in self.withhold:
            if keyword in arg.upper().split()[1:] or any(p.startswith(keyword + "=") for p in arg.upper().split()[1:]):
                self.sendReply(555, "5.5.4", f"Unsupported parameter {keyword}")
                return
        super().do_MAIL(arg)


class NoDSNServer(WithoutExtensionServer):
    withhold = ("DSN",)


class NoUTF8Server(WithoutExtensionServer):
    withhold = ("SMTPUTF8",)


class EnvelopeRelayTests(RelayTestMixin, TestCase):
    """
    DSN parameters passed to a next hop that offers DSN (RFC 3461), and
    SMTPUTF8 messages (RFC 6531).
    """

    def enqueueWith(self, recipients: List[str], params: Dict[str, object], **kw: object) -> str:
        return self.successResultOf(
            self.queue.enqueue("alice@example.test", recipients, io.BytesIO(MESSAGE), parameters=params, **kw)  # type: ignore[arg-type]
        )

    @defer.inlineCallbacks
    def test_dsnPassedOn(self):
        from mailplat.smtp.envelope import RecipientParameters

        self.enqueueWith(
            ["bob@remote.test", "carol@remote.test"],
            {"bob@remote.test": RecipientParameters(["SUCCESS", "DELAY"], "rfc822;Bob+1@Example.test")},
            envid="env id=1", ret="HDRS",
        )
        yield self.runner.runOnce()
        [envelope] = self.remote.envelopes
        self.assertEqual((envelope.ret, envelope.envid), ("HDRS", "env id=1"))
        self.assertEqual(envelope.recipient("bob@remote.test").notify, ["SUCCESS", "DELAY"])
        self.assertEqual(envelope.recipient("bob@remote.test").orcpt, "rfc822;Bob+1@Example.test")
        self.assertNotIn("carol@remote.test", envelope.recipients)
        # The next hop reports success itself: no DSN from us.
        self.assertEqual(self.inbox(), [])

    @defer.inlineCallbacks
    def test_relayedDSN(self):
        """
        A next hop without DSN gets no parameters, and a NOTIFY=SUCCESS
        recipient earns a "relayed" DSN.
        """
        from mailplat.smtp.envelope import RecipientParameters

        self.factory.protocol = NoDSNServer
        self.enqueueWith(
            ["bob@remote.test", "carol@remote.test"],
            {"bob@remote.test": RecipientParameters(["SUCCESS"])},
            envid="E2",
        )
        yield self.runner.runOnce()
        self.assertEqual(len(self.remote.messages), 1)
        self.assertIsNone(self.remote.envelopes[0].envid)
        [dsn] = self.inbox()
        self.assertIn(b"Action: relayed\r\n", dsn)
        self.assertIn(b"Final-Recipient: rfc822; bob@remote.test\r\n", dsn)
        self.assertNotIn(b"carol@remote.test", dsn)
        self.assertIn(b"Original-Envelope-Id: E2\r\n", dsn)
        self.assertEqual(self.queue.list(), [])

    @defer.inlineCallbacks
    def test_notifyNever(self):
        """
        A failed NOTIFY=NEVER recipient is not bounced; a NOTIFY=FAILURE
        one is, and the bounce follows RET=FULL.
        """
        from mailplat.smtp.envelope import RecipientParameters

        self.remote.rcptReplies["bob@remote.test"] = [SMTPReply(550, "5.1.1", "No such user")]
        self.remote.rcptReplies["carol@remote.test"] = [SMTPReply(550, "5.1.1", "No such user")]
        self.enqueueWith(
            ["bob@remote.test", "carol@remote.test"],
            {"bob@remote.test": RecipientParameters(["NEVER"]), "carol@remote.test": RecipientParameters(["FAILURE"])},
            ret="FULL",
        )
        yield self.runner.runOnce()
        [dsn] = self.inbox()
        self.assertIn(b"carol@remote.test", dsn)
        self.assertNotIn(b"bob@remote.test", dsn)
        self.assertIn(b"message/rfc822", dsn)
        self.assertIn(b"..two dots", dsn)
        self.assertEqual(self.queue.list(), [])

    @defer.inlineCallbacks
    def test_smtputf8Sent(self):
        self.enqueueWith(["bö@remote.test"], {}, smtputf8=True)
        yield self.runner.runOnce()
        [(_, _, recipients, _)] = self.remote.messages
        self.assertEqual(recipients, ["bö@remote.test"])
        self.assertTrue(self.remote.envelopes[0].smtputf8)

    @defer.inlineCallbacks
    def test_smtputf8RefusedNonASCII(self):
        """
        A next hop without SMTPUTF8 never gets the message; it bounces with
        5.6.7 when an address is not ASCII.
        """
        self.factory.protocol = NoUTF8Server
        self.enqueueWith(["bö@remote.test"], {}, smtputf8=True)
        yield self.runner.runOnce()
        self.assertEqual(self.remote.messages, [])
        [dsn] = self.inbox()
        self.assertIn(b"Status: 5.6.7\r\n", dsn)
        self.assertEqual(self.queue.list(), [])

    @defer.inlineCallbacks
    def test_smtputf8RefusedASCII(self):
        self.factory.protocol = NoUTF8Server
        self.enqueueWith(["bob@remote.test"], {}, smtputf8=True)
        yield self.runner.runOnce()
        self.assertEqual(self.remote.messages, [])
        [dsn] = self.inbox()
        self.assertIn(b"Status: 5.6.9\r\n", dsn)
