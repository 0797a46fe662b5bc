"""
Tests for L{mailplat.limits} (connection limits) and
L{mailplat.auth.throttle} (failed-login throttling), on in-memory
transports and a L{task.Clock}.
"""

import os
from typing import Any, List, Tuple

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import Interface, implementer

from mailplat.auth.throttle import LoginThrottle, LoginThrottled, ThrottledPortal
from tests.test_store_sql import POSTGRES, PostgresDatabaseMixin
from mailplat.limits import (
    ConnectionLimitFactory, SharedCounts, addressKey, clearSlot, limitConnections, prepareSharedCounts, refusalLine,
)

GREETING = b"421 4.7.0 mail.example.test Too many connections, try again later\r\n"


class Echo(Protocol):
    """
    A protocol that says hello, to tell an accepted connection from a
    refused one.
    """

    def connectionMade(self) -> None:
        self.transport.write(b"hello\r\n")


def connect(factory: Factory, host: str = "192.0.2.1", port: int = 40000) -> Tuple[Any, StringTransport]:
    """
    Make a connection from C{host} the way a listening port does:
    C{buildProtocol}, then C{makeConnection} on a transport.
    """
    kind = IPv6Address if ":" in host else IPv4Address
    addr = kind("TCP", host, port)
    protocol = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    protocol.makeConnection(transport)
    return protocol, transport


def drop(protocol: Any) -> None:
    """
    The connection ends (the client left).
    """
    protocol.connectionLost(Failure(ConnectionError("gone")))


class AddressKeyTests(SynchronousTestCase):
    """
    L{addressKey} counts an address, an IPv6 /64 as one.
    """

    def test_ipv4(self) -> None:
        self.assertEqual(addressKey("192.0.2.7"), "192.0.2.7")

    def test_ipv6Network(self) -> None:
        self.assertEqual(addressKey("2001:db8:1:2:3:4:5:6"), addressKey("2001:db8:1:2:ffff::1"))
        self.assertNotEqual(addressKey("2001:db8:1:2::1"), addressKey("2001:db8:1:3::1"))

    def test_mapped(self) -> None:
        self.assertEqual(addressKey("::ffff:192.0.2.7"), "192.0.2.7")

    def test_scope(self) -> None:
        self.assertEqual(addressKey("fe80::1%eth0"), addressKey("fe80::2"))

    def test_notAnAddress(self) -> None:
        self.assertEqual(addressKey("/run/mail.sock"), "/run/mail.sock")


class RefusalLineTests(SynchronousTestCase):
    """
    L{refusalLine} gives each protocol's own refusal.
    """

    def test_lines(self) -> None:
        self.assertEqual(refusalLine("smtp", "mail.example.test"), GREETING)
        self.assertEqual(refusalLine("submission", "h"), b"421 4.7.0 h Too many connections, try again later\r\n")
        self.assertEqual(refusalLine("pop3s", "h"), b"-ERR [SYS/TEMP] Too many connections\r\n")
        self.assertEqual(refusalLine("imap", "h"), b"* BYE Too many connections\r\n")

    def test_unknown(self) -> None:
        self.assertRaises(ValueError, refusalLine, "gopher", "h")


class ConnectionLimitTests(SynchronousTestCase):
    """
    L{limitConnections} refuses connections over the per-address and the
    total limits with the given line, and counts them back when they end.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.inner = Factory.forProtocol(Echo)

    def limited(self, perAddress: int = 2, total: int = 5, exemptLoopback: bool = False) -> ConnectionLimitFactory:
        return limitConnections(self.inner, perAddress, total, GREETING, exemptLoopback=exemptLoopback,
                                clock=self.clock)

    def test_perAddress(self) -> None:
        """
        The connection past the per-address limit gets the refusal line and
        is closed; the wrapped factory never sees it.
        """
        factory = self.limited()
        built: List[Any] = []
        original = self.inner.buildProtocol
        self.inner.buildProtocol = lambda addr: built.append(addr) or original(addr)  # type: ignore[method-assign]
        for _ in range(2):
            _, transport = connect(factory)
            self.assertEqual(transport.value(), b"hello\r\n")
            self.assertFalse(transport.disconnecting)
        _, transport = connect(factory)
        self.assertEqual(transport.value(), GREETING)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(built), 2)
        self.assertEqual(factory.refused, 1)
        # Another address is not affected.
        _, transport = connect(factory, "192.0.2.2")
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_released(self) -> None:
        """
        A connection that ends gives its place back.
        """
        factory = self.limited()
        first, _ = connect(factory)
        connect(factory)
        drop(first)
        self.assertEqual(factory.perKey, {"192.0.2.1": 1})
        _, transport = connect(factory)
        self.assertEqual(transport.value(), b"hello\r\n")
        self.assertEqual(factory.current, 2)

    def test_outOfTheDataPath(self) -> None:
        """
        A connection within the limits has nothing to do while it lasts:
        the wrapped protocol is connected to the transport itself (its
        writes go straight there) and the bytes read reach its
        C{dataReceived} with no call in between; the end is still counted,
        and the wrapped protocol told.
        """
        received: List[bytes] = []
        lost: List[Any] = []

        class Recorder(Echo):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

            def connectionLost(self, reason: Any = None) -> None:
                lost.append(reason)

        self.inner = Factory.forProtocol(Recorder)
        factory = self.limited()
        wrapper, transport = connect(factory)
        inner = wrapper.wrappedProtocol
        self.assertIs(inner.transport, transport)
        self.assertEqual(wrapper.dataReceived, inner.dataReceived)
        wrapper.dataReceived(b"NOOP\r\n")
        self.assertEqual(received, [b"NOOP\r\n"])
        self.assertEqual(transport.value(), b"hello\r\n")
        self.assertEqual(factory.current, 1)
        drop(wrapper)
        self.assertEqual(len(lost), 1)
        self.assertEqual((factory.current, factory.perKey), (0, {}))
        self.assertNotIn("dataReceived", vars(wrapper))

    def test_allReleased(self) -> None:
        """
        When every connection has ended nothing is left counted, so the
        per-address table cannot grow without bound.
        """
        factory = self.limited(perAddress=3, total=100)
        protocols = [connect(factory, f"192.0.2.{i % 7}")[0] for i in range(20)]
        for protocol in protocols:
            drop(protocol)
        self.assertEqual((factory.current, factory.perKey), (0, {}))

    def test_refusedNotCounted(self) -> None:
        """
        Refused connections take no place: when they end nothing is given
        back twice.
        """
        factory = self.limited(perAddress=1)
        kept, _ = connect(factory)
        refused, _ = connect(factory)
        drop(refused)
        self.assertEqual(factory.perKey, {"192.0.2.1": 1})
        self.assertEqual(factory.current, 1)
        drop(kept)
        self.assertEqual(factory.current, 0)

    def test_total(self) -> None:
        """
        Past the total, every address is refused.
        """
        factory = self.limited(perAddress=10, total=3)
        for i in range(3):
            _, transport = connect(factory, f"198.51.100.{i}")
            self.assertEqual(transport.value(), b"hello\r\n")
        _, transport = connect(factory, "203.0.113.9")
        self.assertEqual(transport.value(), GREETING)
        self.assertTrue(transport.disconnecting)

    def test_ipv6Prefix(self) -> None:
        """
        Addresses of one IPv6 /64 share the per-address allowance.
        """
        factory = self.limited(perAddress=2)
        connect(factory, "2001:db8::1")
        connect(factory, "2001:db8::2")
        _, transport = connect(factory, "2001:db8::3")
        self.assertEqual(transport.value(), GREETING)
        _, transport = connect(factory, "2001:db8:0:1::3")
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_loopbackExempt(self) -> None:
        """
        With C{exemptLoopback}, loopback clients skip the per-address limit
        but still count towards the total.
        """
        factory = self.limited(perAddress=1, total=3, exemptLoopback=True)
        for _ in range(3):
            _, transport = connect(factory, "127.0.0.1")
            self.assertEqual(transport.value(), b"hello\r\n")
        _, transport = connect(factory, "127.0.0.1")
        self.assertEqual(transport.value(), GREETING)

    def test_loopbackNotExempt(self) -> None:
        """
        Without the flag loopback is limited like any address.
        """
        factory = self.limited(perAddress=1)
        connect(factory, "127.0.0.1")
        _, transport = connect(factory, "127.0.0.1")
        self.assertEqual(transport.value(), GREETING)

    def test_noLimits(self) -> None:
        """
        0 or None turns a limit off.
        """
        factory = limitConnections(self.inner, 0, None, GREETING, clock=self.clock)
        for _ in range(50):
            _, transport = connect(factory)
            self.assertEqual(transport.value(), b"hello\r\n")

    def test_refusalAborted(self) -> None:
        """
        A refused connection that does not go away (the client does not
        read) is aborted after the refusal timeout; one that does cancels
        its timer.
        """
        factory = self.limited(perAddress=1)
        connect(factory)
        refusal, transport = connect(factory)
        aborted: List[bool] = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.clock.advance(factory.refusalTimeout)
        self.assertEqual(aborted, [True])
        other, _ = connect(factory)
        drop(other)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusalIgnoresInput(self) -> None:
        """
        What a refused client sends is dropped, never parsed.
        """
        factory = self.limited(perAddress=1)
        connect(factory)
        refusal, transport = connect(factory)
        refusal.dataReceived(b"EHLO x\r\n" * 100)
        self.assertEqual(transport.value(), GREETING)

    def test_wrappedRefuses(self) -> None:
        """
        When the wrapped factory refuses (returns None) nothing is counted.
        """
        self.inner.buildProtocol = lambda addr: None  # type: ignore[method-assign]
        factory = self.limited()
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertEqual((factory.current, factory.perKey), (0, {}))


class SharedCountsTests(SynchronousTestCase):
    """
    With several worker processes, each process's L{ConnectionLimitFactory}
    adds the connections the others published in their L{SharedCounts}
    files.  Two factories in one test process, in two slots of one
    directory, stand for two processes: the files mapped into memory are
    the only thing they share, as between processes.
    """

    def setUp(self) -> None:
        self.directory = prepareSharedCounts(self.mktemp(), ["smtp", "imap"], 2)
        self.clock = task.Clock()

    def process(self, slot: int, perAddress: int = 2, total: int = 5, listener: str = "smtp") -> ConnectionLimitFactory:
        """
        The limited factory of the process in C{slot}.
        """
        factory = limitConnections(Factory.forProtocol(Echo), perAddress, total, GREETING, clock=self.clock)
        counts = SharedCounts(self.directory, listener, slot, 2)
        self.addCleanup(counts.close)
        factory.shareThrough(counts)
        return factory

    def test_perAddressAcrossProcesses(self) -> None:
        """
        An address holding one connection in each of two processes has
        reached a limit of two in both; one ending frees a place in either.
        """
        parent, worker = self.process(0), self.process(1)
        first, transport = connect(parent)
        self.assertEqual(transport.value(), b"hello\r\n")
        _, transport = connect(worker)
        self.assertEqual(transport.value(), b"hello\r\n")
        for factory in (parent, worker):
            _, transport = connect(factory)
            self.assertEqual(transport.value(), GREETING)
            self.assertTrue(transport.disconnecting)
        # Another address is not held back.
        _, transport = connect(worker, "192.0.2.2")
        self.assertEqual(transport.value(), b"hello\r\n")
        drop(first)
        _, transport = connect(worker)
        self.assertEqual(transport.value(), b"hello\r\n")
        self.assertEqual((worker.perKey, parent.perKey), ({"192.0.2.1": 2, "192.0.2.2": 1}, {}))

    def test_totalAcrossProcesses(self) -> None:
        """
        The total counts every process's connections.
        """
        parent, worker = self.process(0, perAddress=10, total=3), self.process(1, perAddress=10, total=3)
        connect(parent, "198.51.100.1")
        connect(worker, "198.51.100.2")
        connect(worker, "198.51.100.3")
        _, transport = connect(parent, "203.0.113.9")
        self.assertEqual(transport.value(), GREETING)

    def test_listenersApart(self) -> None:
        """
        Each listener has its own counts.
        """
        smtp, imap = self.process(0, perAddress=1), self.process(1, perAddress=1, listener="imap")
        connect(smtp)
        _, transport = connect(imap)
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_deadProcessCleared(self) -> None:
        """
        When a worker dies, the parent zeroes its slot: the connections it
        held (closed by its death) no longer count.
        """
        parent, worker = self.process(0, perAddress=1), self.process(1, perAddress=1)
        connect(worker)
        _, transport = connect(parent)
        self.assertEqual(transport.value(), GREETING)
        clearSlot(self.directory, 1)
        _, transport = connect(parent)
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_restartedProcessStartsAtZero(self) -> None:
        """
        A process that maps its slot again (a worker started again) starts
        from zero, whatever the file held.
        """
        parent, worker = self.process(0, perAddress=1), self.process(1, perAddress=1)
        connect(worker)
        self.process(1, perAddress=1)
        _, transport = connect(parent)
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_loopbackExemptCountsInTotal(self) -> None:
        """
        An exempt loopback client is published in the total only.
        """
        parent = limitConnections(Factory.forProtocol(Echo), 1, 2, GREETING, exemptLoopback=True, clock=self.clock)
        counts = SharedCounts(self.directory, "smtp", 0, 2)
        self.addCleanup(counts.close)
        parent.shareThrough(counts)
        worker = self.process(1, perAddress=1, total=2)
        connect(parent, "127.0.0.1")
        connect(parent, "127.0.0.1")
        _, transport = connect(worker, "192.0.2.1")
        self.assertEqual(transport.value(), GREETING)

    def test_freshKeyPerStart(self) -> None:
        """
        Each preparation draws a new hash key, so the bucket an address
        falls in changes from one start to the next.
        """
        counts = SharedCounts(self.directory, "smtp", 0, 2)
        self.addCleanup(counts.close)
        again = SharedCounts(prepareSharedCounts(self.mktemp(), ["smtp"], 2), "smtp", 0, 2)
        self.addCleanup(again.close)
        keys = [f"192.0.2.{i}" for i in range(20)]
        self.assertNotEqual([counts.bucket(k) for k in keys], [again.bucket(k) for k in keys])
        self.assertTrue(all(1 <= counts.bucket(k) <= 1 << 16 for k in keys))


class IFake(Interface):
    """
    The avatar interface of the test realm.
    """


@implementer(IRealm)
class FakeRealm:
    """
    Gives the avatar id back as the avatar; remembers each C{mind}.
    """

    def __init__(self) -> None:
        self.minds: List[Any] = []

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        self.minds.append(mind)
        return (IFake, avatarId, lambda: None)


class BrokenChecker:
    """
    A checker that fails with an unexpected error.
    """

    credentialInterfaces = InMemoryUsernamePasswordDatabaseDontUse.credentialInterfaces

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        return defer.fail(RuntimeError("database down"))


class ThrottleTestsMixin:
    """
    A L{ThrottledPortal} on a L{task.Clock} with two users.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.realm = FakeRealm()
        checker = InMemoryUsernamePasswordDatabaseDontUse(**{"alice@example.test": b"right", "bob@example.test": b"b"})
        self.throttle = LoginThrottle(self.clock, delayAfter=3, refuseAfter=6, window=600.0,
                                      baseDelay=1.0, maxDelay=4.0)
        self.portal = ThrottledPortal(self.realm, [checker], throttle=self.throttle)

    def login(self, password: bytes, user: bytes = b"alice@example.test", mind: Any = "192.0.2.1") -> List[Any]:
        """
        Start a login; a list that gets the outcome (C{"ok"}, the failure
        type) once it is decided.
        """
        outcome: List[Any] = []
        d = self.portal.login(UsernamePassword(user, password), mind, IFake)
        d.addCallbacks(lambda _: outcome.append("ok"), lambda f: outcome.append(f.type))
        return outcome

    def failLogins(self, times: int, **kw: Any) -> None:
        """
        C{times} wrong passwords, each waited out.
        """
        for _ in range(times):
            outcome = self.login(b"wrong", **kw)
            self.clock.advance(self.throttle.maxDelay)
            self.assertEqual(outcome, [UnauthorizedLogin])


class ThrottledPortalTests(ThrottleTestsMixin, SynchronousTestCase):
    """
    L{ThrottledPortal} delays and then refuses logins after failures.
    """

    def test_fineAtFirst(self) -> None:
        """
        The first failures and a success are answered at once, and the
        realm gets the client address as C{mind}.
        """
        for _ in range(2):
            self.assertEqual(self.login(b"wrong"), [UnauthorizedLogin])
        self.assertEqual(self.login(b"right", mind="192.0.2.9"), ["ok"])
        self.assertEqual(self.throttle.failures("alice@example.test"), 0)
        self.assertEqual(self.realm.minds, ["192.0.2.9"])

    def test_delayGrows(self) -> None:
        """
        After C{delayAfter} failures each attempt waits: 1 s, 2 s, 4 s, and
        never more than C{maxDelay}.
        """
        self.failLogins(3)
        for delay in (1.0, 2.0, 4.0):
            outcome = self.login(b"wrong")
            self.clock.advance(delay - 0.01)
            self.assertEqual(outcome, [])
            self.clock.advance(0.01)
            self.assertEqual(outcome, [UnauthorizedLogin])

    def test_delayedSuccess(self) -> None:
        """
        A right password after failures waits too (else waiting would tell
        the answer), then logs in and clears the account's failures.
        """
        self.failLogins(4)
        outcome = self.login(b"right")
        self.assertEqual(outcome, [])
        self.clock.advance(2.0)
        self.assertEqual(outcome, ["ok"])
        self.assertEqual(self.throttle.failures("alice@example.test"), 0)
        self.assertEqual(self.login(b"right", mind="192.0.2.77"), ["ok"])

    def test_refused(self) -> None:
        """
        From C{refuseAfter} failures on, an attempt is refused at once with
        L{LoginThrottled}, even with the right password, without asking
        the checker.
        """
        self.failLogins(6)
        outcome = self.login(b"right", mind="192.0.2.50")
        self.assertEqual(outcome, [LoginThrottled])
        self.assertTrue(issubclass(LoginThrottled, UnauthorizedLogin))
        self.assertEqual(self.realm.minds, [])

    def test_retryAfter(self) -> None:
        """
        L{LoginThrottled} says when the oldest failure leaves the window.
        """
        self.failLogins(6)
        failures: List[Failure] = []
        self.portal.login(UsernamePassword(b"alice@example.test", b"x"), None, IFake).addErrback(failures.append)
        # Six waits of maxDelay (4 s) passed since the first failure.
        self.assertAlmostEqual(failures[0].value.retryAfter, 600.0 - 6 * 4.0)

    def test_windowPasses(self) -> None:
        """
        Once the failures are older than the window, attempts are checked
        again, without delay.
        """
        self.failLogins(6)
        self.clock.advance(600.0)
        self.assertEqual(self.login(b"right"), ["ok"])

    def test_perAddress(self) -> None:
        """
        Failures from one address against many accounts throttle that
        address, not other addresses.
        """
        for i in range(6):
            outcome = self.login(b"wrong", user=f"user{i}@example.test".encode())
            self.clock.advance(4.0)
            self.assertEqual(outcome, [UnauthorizedLogin])
        self.assertEqual(self.login(b"right"), [LoginThrottled])
        self.assertEqual(self.login(b"right", mind="192.0.2.2"), ["ok"])

    def test_successKeepsAddressCount(self) -> None:
        """
        A success clears the account's failures but not the address's: a
        guesser holding one good account gains no further guesses.
        """
        for i in range(5):
            outcome = self.login(b"wrong", user=f"user{i}@example.test".encode())
            self.clock.advance(4.0)
        self.assertEqual(outcome, [UnauthorizedLogin])
        outcome = self.login(b"b", user=b"bob@example.test")
        self.clock.advance(4.0)
        self.assertEqual(outcome, ["ok"])
        self.assertEqual(self.throttle.failures(host="192.0.2.1"), 5)
        outcome = self.login(b"wrong", user=b"carol@example.test")
        self.clock.advance(4.0)
        self.assertEqual(self.login(b"wrong", user=b"dave@example.test"), [LoginThrottled])

    def test_perAccountAcrossAddresses(self) -> None:
        """
        Failures against one account from many addresses throttle the
        account.
        """
        for i in range(6):
            self.failLogins(1, mind=f"198.51.100.{i}")
        self.assertEqual(self.login(b"right", mind="203.0.113.1"), [LoginThrottled])

    def test_accountNormalised(self) -> None:
        """
        Case and a trailing dot do not make a fresh account counter.
        """
        for i, user in enumerate([b"Alice@Example.Test", b"ALICE@example.test.", b"alice@example.test"] * 2):
            self.failLogins(1, user=user, mind=f"198.51.100.{i}")
        self.assertEqual(self.login(b"right", mind="203.0.113.1"), [LoginThrottled])

    def test_parallelAttempts(self) -> None:
        """
        Attempts started together count as they start: the ones beyond
        C{delayAfter} wait and those beyond C{refuseAfter} are refused,
        before any has been checked.
        """
        outcomes = [self.login(b"wrong") for _ in range(8)]
        self.assertEqual(outcomes[:3], [[UnauthorizedLogin]] * 3)
        self.assertEqual(outcomes[3:6], [[], [], []])
        self.assertEqual(outcomes[6:], [[LoginThrottled]] * 2)
        self.clock.advance(4.0)
        self.assertEqual(outcomes[3:6], [[UnauthorizedLogin]] * 3)

    def test_brokenCheckerNotCounted(self) -> None:
        """
        A checker error is passed on and not counted as a failure.
        """
        portal = ThrottledPortal(self.realm, [BrokenChecker()], throttle=self.throttle)
        errors: List[Failure] = []
        for _ in range(10):
            portal.login(UsernamePassword(b"alice@example.test", b"x"), "192.0.2.1", IFake).addErrback(errors.append)
        self.assertEqual([f.type for f in errors], [RuntimeError] * 10)
        self.assertEqual(self.throttle.failures("alice@example.test", "192.0.2.1"), 0)
        self.flushLoggedErrors(RuntimeError)

    def test_noMind(self) -> None:
        """
        Without an address only the account is counted.
        """
        self.failLogins(6, mind=None)
        self.assertEqual(self.throttle.failures(host="192.0.2.1"), 0)
        self.assertEqual(self.login(b"b", user=b"bob@example.test", mind=None), ["ok"])

    def test_mindKinds(self) -> None:
        """
        The address may come as text, bytes or an address object.
        """
        self.failLogins(2, mind=b"192.0.2.5", user=b"a@example.test")
        self.failLogins(2, mind=IPv4Address("TCP", "192.0.2.5", 1), user=b"b@example.test")
        self.assertEqual(self.throttle.failures(host="192.0.2.5"), 4)

    def test_loopbackExempt(self) -> None:
        """
        With C{exemptLoopback} the loopback address is not counted (its
        accounts are).
        """
        self.throttle.exemptLoopback = True
        for i in range(8):
            self.failLogins(1, user=f"u{i}@example.test".encode(), mind="127.0.0.1")
        self.assertEqual(self.login(b"right", mind="::1"), ["ok"])
        self.assertEqual(self.throttle.failures(host="127.0.0.1"), 0)

    def test_defaultClock(self) -> None:
        """
        Without a throttle the portal makes one with the default rules.
        """
        from twisted.internet import reactor

        portal = ThrottledPortal(self.realm, [], clock=self.clock)
        self.assertEqual((portal.throttle.delayAfter, portal.throttle.refuseAfter), (5, 30))
        self.assertIs(ThrottledPortal(self.realm).throttle.clock, reactor)


class LoginThrottleTests(SynchronousTestCase):
    """
    L{LoginThrottle}'s own bookkeeping.
    """

    def test_memoryBounded(self) -> None:
        """
        A spray of made-up names keeps at most C{maxEntries} counters.
        """
        clock = task.Clock()
        throttle = LoginThrottle(clock, maxEntries=100)
        for i in range(2000):
            throttle.failed(throttle.begin(f"u{i}@example.test", f"10.0.{i // 250}.{i % 250}"))
        self.assertLessEqual(len(throttle._counters), 100)

    def test_expiredSwept(self) -> None:
        """
        Counters whose failures have all aged out are dropped.
        """
        clock = task.Clock()
        throttle = LoginThrottle(clock, window=10.0)
        for i in range(50):
            throttle.failed(throttle.begin(f"u{i}@example.test", None))
        clock.advance(11.0)
        for i in range(1100):
            throttle.succeeded(throttle.begin("alice@example.test", None))
        self.assertEqual(len(throttle._counters), 0)

    def test_thresholdsLogged(self) -> None:
        """
        The failure that brings a counter to C{delayAfter}, and the one
        that brings it to C{refuseAfter}, are logged once each.
        """
        from twisted.logger import globalLogPublisher

        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        throttle = LoginThrottle(task.Clock(), delayAfter=2, refuseAfter=4)
        for _ in range(4):
            throttle.failed(throttle.begin("a@example.test", "192.0.2.1"))
        logged = [(e["kind"], e["count"], e["what"]) for e in events if "what" in e]
        self.assertEqual(logged, [("account", 2, "slowing down"), ("address", 2, "slowing down"),
                                  ("account", 4, "refusing"), ("address", 4, "refusing")])

    def test_sharedBetweenProcesses(self) -> None:
        """
        Throttles on one counter file (the worker processes of a server)
        count each failure once between them: the refusal comes after
        C{refuseAfter} failures in all, whichever process saw them, and a
        success in one clears the account for both.
        """
        clock = task.Clock()
        clock.advance(1_000_000)
        path = os.path.join(self.mktemp(), "login-failures.sqlite")
        one, two = (LoginThrottle(clock, delayAfter=2, refuseAfter=4, window=60.0, path=path) for _ in range(2))
        for throttle in (one, two, one):
            throttle.failed(throttle.begin("a@example.test", "192.0.2.1"))
        self.assertEqual(two.failures("a@example.test"), 3)
        self.assertEqual(one.begin("a@example.test", "192.0.2.9").delay, 2.0)
        self.assertRaises(LoginThrottled, two.begin, "a@example.test", "192.0.2.8")
        self.assertEqual(two.failures(host="192.0.2.1"), 3)
        clock.advance(61.0)
        attempt = two.begin("a@example.test", "192.0.2.7")
        two.succeeded(attempt)
        self.assertEqual((one.failures("a@example.test"), one.failures(host="192.0.2.7")), (0, 0))

    def test_sharedFileUnusable(self) -> None:
        """
        A counter file that cannot be used is logged, and the process
        counts in its own memory from then on.
        """
        clock = task.Clock()
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file where a directory should be")
        throttle = LoginThrottle(clock, refuseAfter=2, path=os.path.join(blocker, "login-failures.sqlite"))
        for _ in range(2):
            throttle.failed(throttle.begin("a@example.test", None))
        self.assertRaises(LoginThrottled, throttle.begin, "a@example.test", None)
        self.assertEqual(throttle.failures("a@example.test"), 2)

    def test_sharedFileBusy(self) -> None:
        """
        A counter file another process holds locked past the timeout is
        counted around once, in this process's memory, and used again
        afterwards (the file is not given up for good).
        """
        import sqlite3

        clock = task.Clock()
        path = os.path.join(self.mktemp(), "login-failures.sqlite")
        throttle = LoginThrottle(clock, refuseAfter=5, path=path)
        throttle.failed(throttle.begin("a@example.test", None))
        other = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        throttle.failed(throttle.begin("b@example.test", None))
        other.execute("ROLLBACK")
        throttle.failed(throttle.begin("a@example.test", None))
        self.assertEqual(throttle.failures("a@example.test"), 2)
        self.assertIsNone(throttle._counters._memory)
        self.flushLoggedErrors()

    def test_settledOnce(self) -> None:
        """
        Settling an attempt twice changes nothing.
        """
        clock = task.Clock()
        throttle = LoginThrottle(clock)
        attempt = throttle.begin("a@example.test", "192.0.2.1")
        throttle.failed(attempt)
        throttle.aborted(attempt)
        throttle.succeeded(attempt)
        self.assertEqual(throttle.failures("a@example.test"), 1)

    def test_badRules(self) -> None:
        """
        Nonsense limits are refused.
        """
        self.assertRaises(ValueError, LoginThrottle, task.Clock(), refuseAfter=0)
        self.assertRaises(ValueError, LoginThrottle, task.Clock(), window=0)


class DatabaseThrottleTests(PostgresDatabaseMixin, TestCase):
    """
    With the store on PostgreSQL, the failed logins are counted in its
    database, once for every node: two throttles on two
    L{PostgresDatabase}s of one schema stand for two nodes.
    """

    def setUp(self) -> Any:
        super().setUp()
        self.clock = task.Clock()
        self.clock.advance(1_000_000)

    def node(self, **rules: Any) -> LoginThrottle:
        from mailplat.store.sql.database import PostgresDatabase

        database = PostgresDatabase(POSTGRES, self.schema, poolSize=2)
        self.addCleanup(database.close)
        return LoginThrottle(self.clock, database=database, **{"delayAfter": 2, "refuseAfter": 4, "window": 60.0, **rules})

    @defer.inlineCallbacks
    def fail(self, throttle: LoginThrottle, account: str, host: str) -> Any:
        attempt = yield throttle.beginLater(account, host)
        yield throttle.failed(attempt)

    @defer.inlineCallbacks
    def test_sharedBetweenNodes(self) -> Any:
        """
        The refusal comes after C{refuseAfter} failures in all, whichever
        node saw them; a success on one clears the account for both.
        """
        one, two = self.node(), self.node()
        for throttle in (one, two, one):
            yield self.fail(throttle, "a@example.test", "192.0.2.1")
        self.assertEqual(self.rawQuery("SELECT count(*) FROM login_failures WHERE kind = 'account'"), [(3,)])
        attempt = yield one.beginLater("a@example.test", "192.0.2.9")
        self.assertEqual(attempt.delay, 2.0)
        yield self.assertFailure(two.beginLater("a@example.test", "192.0.2.8"), LoginThrottled)
        self.clock.advance(61.0)
        attempt = yield two.beginLater("a@example.test", "192.0.2.7")
        yield two.succeeded(attempt)
        self.assertEqual(self.rawQuery("SELECT count(*) FROM login_failures WHERE name = 'a@example.test'"
                                       " OR name = '192.0.2.7'"), [(0,)])

    @defer.inlineCallbacks
    def test_failureOneTransaction(self) -> Any:
        """
        A failed attempt costs one transaction, the one that counted it
        when it began: C{failed} changes nothing in the database.
        """
        throttle = self.node()
        runs: List[Any] = []
        run = throttle._counters.run
        self.patch(throttle._counters, "run", lambda f: runs.append(f) or run(f))
        yield self.fail(throttle, "a@example.test", "192.0.2.1")
        self.assertEqual(len(runs), 1)
        self.assertEqual(self.rawQuery("SELECT count(*) FROM login_failures"), [(2,)])

    @defer.inlineCallbacks
    def test_throughThePortal(self) -> Any:
        """
        Wrong passwords on one node's portal get the account refused on the
        other's, before its password is checked.
        """
        checker = InMemoryUsernamePasswordDatabaseDontUse(**{"alice@example.test": b"right"})
        one = ThrottledPortal(FakeRealm(), [checker], throttle=self.node(delayAfter=10))
        two = ThrottledPortal(FakeRealm(), [checker], throttle=self.node(delayAfter=10))
        for _ in range(4):
            yield self.assertFailure(one.login(UsernamePassword(b"alice@example.test", b"wrong"), "192.0.2.1", IFake),
                                     UnauthorizedLogin)
        # (Each attempt was counted before its password was checked.)
        yield self.assertFailure(two.login(UsernamePassword(b"alice@example.test", b"right"), "198.51.100.1", IFake),
                                 LoginThrottled)

    @defer.inlineCallbacks
    def test_databaseDown(self) -> Any:
        """
        When the database fails, the attempt is counted in this process's
        memory (logged), and still throttled there.
        """
        throttle = self.node(refuseAfter=2)
        yield throttle._counters.database.close()
        for _ in range(2):
            yield self.fail(throttle, "a@example.test", None)
        yield self.assertFailure(throttle.beginLater("a@example.test", None), LoginThrottled)
