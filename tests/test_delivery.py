"""
Tests for L{mailplat.delivery}: which recipients are accepted and where
their mail goes.
"""

import io
import os
import threading
from unittest import SkipTest

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailplat.delivery.directory import StoreDirectory
from mailplat.delivery.local import LocalDelivery
from mailplat.errors import SMTPReply
from mailplat.interfaces import IDelivery, IDirectory
from mailplat.store.memory import MemoryStore


class DeliveryTests(SynchronousTestCase):
    """
    L{LocalDelivery} over a memory store.
    """

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.successResultOf(self.store.getAccount("alice@example.test", create=True))
        self.successResultOf(self.store.getAccount("bob@example.test", create=True))
        self.directory = StoreDirectory(self.store)
        self.delivery = LocalDelivery(self.directory, self.store)

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IDirectory, self.directory))
        self.assertTrue(verifyObject(IDelivery, self.delivery))

    def refusal(self, recipient: str) -> SMTPReply:
        return self.failureResultOf(self.delivery.validateRecipient(None, recipient), SMTPReply).value

    def test_localDomainsFromAccounts(self) -> None:
        self.assertTrue(self.successResultOf(self.directory.isLocalDomain("EXAMPLE.test.")))
        self.assertFalse(self.successResultOf(self.directory.isLocalDomain("other.test")))

    def test_configuredDomains(self) -> None:
        directory = StoreDirectory(self.store, ["other.test"])
        self.assertFalse(self.successResultOf(directory.isLocalDomain("example.test")))
        self.assertTrue(self.successResultOf(directory.isLocalDomain("other.test")))

    def test_known(self) -> None:
        self.assertIsNone(self.successResultOf(self.delivery.validateRecipient(None, "alice@example.test")))

    def test_unknownUser(self) -> None:
        reply = self.refusal("carol@example.test")
        self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"))

    def test_noRelay(self) -> None:
        for recipient in ["someone@elsewhere.test", "alice@example.test@elsewhere.test", "postmaster"]:
            reply = self.refusal(recipient)
            self.assertEqual((reply.code, reply.enhanced), (554, "5.7.1"), recipient)

    def test_deliver(self) -> None:
        """
        Each account gets one copy with a Return-Path, even when named twice.
        """
        body = b"Subject: hi\r\n\r\nHello\r\n"
        self.successResultOf(
            self.delivery.deliver(None, "sender@far.test", ["alice@example.test", "bob@example.test", "alice@example.test"], io.BytesIO(body))
        )
        for address in ["alice@example.test", "bob@example.test"]:
            inbox = self.successResultOf(self.successResultOf(self.store.getAccount(address)).getMailbox("INBOX"))
            infos = self.successResultOf(inbox.listMessages())
            self.assertEqual(len(infos), 1)
            data = self.successResultOf(inbox.openMessage(infos[0].uid)).read()
            self.assertEqual(data, b"Return-Path: <sender@far.test>\r\n" + body)

    def test_nullSender(self) -> None:
        self.successResultOf(self.delivery.deliver(None, None, ["alice@example.test"], io.BytesIO(b"\r\n")))
        inbox = self.successResultOf(self.successResultOf(self.store.getAccount("alice@example.test")).getMailbox("INBOX"))
        data = self.successResultOf(inbox.openMessage(1)).read()
        self.assertTrue(data.startswith(b"Return-Path: <>\r\n"))


class FakeSession:
    """
    The parts of L{mailplat.smtp.server.SMTPSession} delivery reads.
    """

    def __init__(self, authenticated=None) -> None:
        self.authenticated = authenticated


class PipelineTests(SynchronousTestCase):
    """
    L{LocalDelivery} with a directory file, a queue and policies: relaying
    for authenticated clients, forwards, mixed local and remote delivery.
    """

    def setUp(self) -> None:
        from twisted.internet import task

        from mailplat.delivery.directory import DirectoryFile
        from mailplat.queue import Queue

        self.store = MemoryStore()
        self.successResultOf(self.store.getAccount("alice@example.test", create=True))
        self.file = DirectoryFile(os.path.join(self.mktemp(), "directory.json"))
        self.directory = StoreDirectory(self.store, path=self.file.path)
        self.clock = task.Clock()
        self.queue = Queue(self.mktemp(), self.clock)
        self.delivery = LocalDelivery(self.directory, self.store, self.queue)

    def inbox(self) -> list:
        box = self.successResultOf(self.successResultOf(self.store.getAccount("alice@example.test")).getMailbox("INBOX"))
        return [self.successResultOf(box.openMessage(i.uid)).read() for i in self.successResultOf(box.listMessages())]

    def test_relayOnlyWhenAuthenticated(self) -> None:
        reply = self.failureResultOf(self.delivery.validateRecipient(FakeSession(), "bob@far.test"), SMTPReply).value
        self.assertEqual((reply.code, reply.enhanced), (554, "5.7.1"))
        self.assertIsNone(self.successResultOf(self.delivery.validateRecipient(FakeSession("alice@example.test"), "bob@far.test")))

    def test_noQueueNoRelay(self) -> None:
        delivery = LocalDelivery(self.directory, self.store)
        reply = self.failureResultOf(delivery.validateRecipient(FakeSession("alice@example.test"), "bob@far.test"), SMTPReply).value
        self.assertEqual(reply.code, 554)

    def test_forward251(self) -> None:
        """
        An alias that only forwards elsewhere answers 251 (as a result, not
        a refusal); one with a local target answers plain success.
        """
        self.file.addAlias("fwd@example.test", ["bob@far.test"])
        reply = self.successResultOf(self.delivery.validateRecipient(FakeSession(), "fwd@example.test"))
        self.assertEqual((reply.code, reply.enhanced), (251, "2.1.5"))
        self.file.addAlias("both@example.test", ["bob@far.test", "alice@example.test"])
        self.assertIsNone(self.successResultOf(self.delivery.validateRecipient(FakeSession(), "both@example.test")))

    def test_aliasLoopRefused(self) -> None:
        self.file.addAlias("a@example.test", ["b@example.test"])
        self.file.addAlias("b@example.test", ["a@example.test"])
        reply = self.failureResultOf(self.delivery.validateRecipient(FakeSession(), "a@example.test"), SMTPReply).value
        self.assertEqual((reply.code, reply.enhanced), (550, "5.4.6"))

    def test_plusAndCatchAll(self) -> None:
        self.assertIsNone(self.successResultOf(self.delivery.validateRecipient(None, "alice+tag@example.test")))
        self.file.addAlias("@example.test", ["alice@example.test"])
        self.assertIsNone(self.successResultOf(self.delivery.validateRecipient(None, "whoever@example.test")))
        self.successResultOf(self.delivery.deliver(FakeSession(), "s@far.test", ["whoever@example.test", "alice+x@example.test"], io.BytesIO(b"\r\nx\r\n")))
        self.assertEqual(len(self.inbox()), 1)

    def test_mixedLocalAndRemote(self) -> None:
        """
        Local copies are stored and remote recipients (relayed or
        forwarded) queued, once each, before the Deferred fires.
        """
        self.file.addAlias("fwd@example.test", ["carol@far.test", "alice@example.test"])
        body = b"Subject: mixed\r\n\r\nHi\r\n"
        session = FakeSession("alice@example.test")
        self.successResultOf(
            self.delivery.deliver(session, "alice@example.test", ["alice@example.test", "bob@far.test", "fwd@example.test"], io.BytesIO(body))
        )
        self.assertEqual(self.inbox(), [b"Return-Path: <alice@example.test>\r\n" + body])
        [entry] = self.queue.list()
        self.assertEqual(entry.sender, "alice@example.test")
        self.assertEqual([r.address for r in entry.recipients], ["bob@far.test", "carol@far.test"])
        with self.queue.openMessage(entry.id) as f:
            self.assertEqual(f.read(), body)

    def test_unauthenticatedForwardQueued(self) -> None:
        """
        An alias forward is relayed even for an unauthenticated client; a
        remote recipient it gave directly is not.
        """
        self.file.addAlias("fwd@example.test", ["carol@far.test"])
        self.successResultOf(self.delivery.deliver(FakeSession(), "s@far.test", ["fwd@example.test", "bob@far.test"], io.BytesIO(b"\r\n")))
        [entry] = self.queue.list()
        self.assertEqual([r.address for r in entry.recipients], ["carol@far.test"])

    def test_inject(self) -> None:
        """
        Mail the server makes (DSNs) goes to local users or the queue.
        """
        self.successResultOf(self.delivery.inject(None, ["alice@example.test", "x@far.test"], io.BytesIO(b"\r\nbounce\r\n")))
        self.assertEqual(self.inbox(), [b"Return-Path: <>\r\n\r\nbounce\r\n"])
        [entry] = self.queue.list()
        self.assertIsNone(entry.sender)

    def test_policies(self) -> None:
        from mailplat.delivery.policy import IPolicy, MaxRecipientsPolicy, Verdict

        class Tagger:
            def checkMessage(self, session, sender, recipients, message):
                return Verdict.tag(b"X-Checked: yes\r\n")

        self.assertTrue(IPolicy.providedBy(MaxRecipientsPolicy(1)))
        self.delivery.policies = [Tagger(), MaxRecipientsPolicy(2)]
        self.successResultOf(self.delivery.deliver(None, "s@far.test", ["alice@example.test"], io.BytesIO(b"\r\nx\r\n")))
        self.assertEqual(self.inbox(), [b"Return-Path: <s@far.test>\r\nX-Checked: yes\r\n\r\nx\r\n"])
        self.file.addAlias("b@example.test", ["alice@example.test"])
        self.file.addAlias("c@example.test", ["alice@example.test"])
        reply = self.failureResultOf(
            self.delivery.deliver(None, "s@far.test", ["alice@example.test", "b@example.test", "c@example.test"], io.BytesIO(b"\r\n")),
            SMTPReply,
        ).value
        self.assertEqual((reply.code, reply.enhanced), (552, "5.5.3"))
        self.assertEqual(len(self.inbox()), 1)

    def test_forgedAuthenticationResultsStripped(self) -> None:
        """
        Inbound mail loses the C{Authentication-Results} fields that claim
        our host name (RFC 8601 section 5) and gets ours; others' fields,
        and the body, are kept.  The queued copy for a forward is the same.
        """
        from mailplat.policy.authresults import AuthenticationPolicy
        from tests.test_policy_auth import FakeResolver, Session

        self.delivery.policies = [AuthenticationPolicy("mx.example.test", FakeResolver(), dmarc="off", dkimVerify=False)]
        self.file.addAlias("fwd@example.test", ["alice@example.test", "bob@far.test"])
        message = (b"Authentication-Results: MX.Example.Test;\r\n\tdkim=pass header.d=bank.test\r\n"
                   b"Authentication-Results: relay.far.test; spf=pass\r\n"
                   b"Subject: hi\r\n\r\nAuthentication-Results: mx.example.test; in the body\r\n")
        self.successResultOf(self.delivery.deliver(Session(), "s@far.test", ["fwd@example.test"], io.BytesIO(message)))
        [stored] = self.inbox()
        self.assertNotIn(b"dkim=pass", stored)
        self.assertEqual(stored.count(b"Authentication-Results: mx.example.test;"), 2)  # ours, and the body's
        self.assertIn(b"Authentication-Results: relay.far.test; spf=pass\r\nSubject: hi\r\n\r\n"
                      b"Authentication-Results: mx.example.test; in the body\r\n", stored)
        [entry] = self.queue.list()
        with self.queue.openMessage(entry.id) as f:
            self.assertNotIn(b"dkim=pass", f.read())

    def test_smtpServerAcceptsForward(self) -> None:
        """
        Through the SMTP server, a forwarding alias is accepted (the server
        answers 250 until it passes a 251 result on) and the message is
        queued.
        """
        from twisted.internet.testing import StringTransport

        from mailplat.smtp.server import SMTPFactory

        self.file.addAlias("fwd@example.test", ["carol@far.test"])
        factory = SMTPFactory(self.delivery, "mx.example.test", clock=self.clock)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@far.test>\r\nRCPT TO:<fwd@example.test>\r\nRCPT TO:<x@far.test>\r\n"
                           b"DATA\r\nSubject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        replies = transport.value().decode().splitlines()
        self.assertTrue(any(r.startswith("25") and "2.1.5" in r for r in replies), replies)
        self.assertIn("554 5.7.1 <x@far.test>: Relay access denied", replies)
        self.assertTrue(any(r.startswith("250 2.0.0 Ok: queued") for r in replies), replies)
        [entry] = self.queue.list()
        self.assertEqual([r.address for r in entry.recipients], ["carol@far.test"])


class EnvelopeParameterTests(SynchronousTestCase):
    """
    DSN and SMTPUTF8 parameters through the pipeline, and moved
    addresses (with the set-up of L{PipelineTests}).
    """

    setUp = PipelineTests.setUp
    inbox = PipelineTests.inbox

    def envelope(self, **kw: object):
        from mailplat.smtp.envelope import Envelope

        return Envelope(**kw)  # type: ignore[arg-type]

    def test_moved551(self) -> None:
        self.file.addDomain("example.test")
        self.file.setMoved("carol@example.test", "carol@new.example")
        reply = self.failureResultOf(self.delivery.validateRecipient(FakeSession(), "Carol@example.test"), SMTPReply).value
        self.assertEqual((reply.code, reply.enhanced, str(reply.text)), (551, "5.1.6", "User not local; please try <carol@new.example>"))

    def test_movedOverSMTP(self) -> None:
        from twisted.internet.testing import StringTransport

        from mailplat.smtp.server import SMTPFactory

        self.file.addDomain("example.test")
        self.file.setMoved("carol@example.test", "carol@new.example")
        proto = SMTPFactory(self.delivery, "mx.example.test", clock=self.clock).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@far.test>\r\nRCPT TO:<carol@example.test>\r\n")
        self.assertIn("551 5.1.6 User not local; please try <carol@new.example>", transport.value().decode().splitlines())

    def test_queueGetsParameters(self) -> None:
        """
        RET, ENVID, SMTPUTF8 and each recipient's NOTIFY and ORCPT reach the
        queue entry; an alias forward keeps its recipient's NOTIFY and gets
        an ORCPT naming the alias.
        """
        from mailplat.smtp.envelope import RecipientParameters

        self.file.addAlias("fwd@example.test", ["carol@far.test"])
        session = FakeSession("alice@example.test")
        session.transaction = self.envelope(
            ret="HDRS", envid="id 1", smtputf8=True,
            recipients={
                "bob@far.test": RecipientParameters(["SUCCESS"], "rfc822;Bob@Far.test"),
                "fwd@example.test": RecipientParameters(["NEVER"]),
            },
        )
        self.successResultOf(self.delivery.deliver(session, "alice@example.test", ["bob@far.test", "fwd@example.test", "dan@far.test"], io.BytesIO(b"\r\nx\r\n")))
        [entry] = self.queue.list()
        self.assertEqual((entry.ret, entry.envid, entry.smtputf8), ("HDRS", "id 1", True))
        bob, carol, dan = entry.recipients
        self.assertEqual((bob.notify, bob.orcpt), (["SUCCESS"], "rfc822;Bob@Far.test"))
        self.assertEqual((carol.notify, carol.orcpt), (["NEVER"], "rfc822;fwd@example.test"))
        self.assertEqual((dan.notify, dan.orcpt), (None, None))
        self.assertFalse(carol.wants("FAILURE"))

    def test_explicitEnvelopeArgument(self) -> None:
        self.successResultOf(
            self.delivery.deliver(None, "s@example.test", ["x@far.test"], io.BytesIO(b"\r\n"), envelope=self.envelope(ret="FULL"))
        )
        [entry] = self.queue.list()
        self.assertEqual(entry.ret, "FULL")

    def test_successDSN(self) -> None:
        """
        A local recipient with NOTIFY=SUCCESS makes a "delivered" DSN to the
        sender (queued here, the sender being remote), with the envelope
        id, the original recipient, and only the headers under RET=HDRS.
        """
        from mailplat.smtp.envelope import RecipientParameters

        session = FakeSession()
        session.transaction = self.envelope(
            ret="HDRS", envid="E1", recipients={"alice@example.test": RecipientParameters(["SUCCESS", "FAILURE"], "rfc822;Alice@Example.test")}
        )
        self.successResultOf(
            self.delivery.deliver(session, "s@far.test", ["alice@example.test"], io.BytesIO(b"Subject: t\r\n\r\nsecret body\r\n"))
        )
        self.assertEqual(len(self.inbox()), 1)
        [entry] = self.queue.list()
        self.assertIsNone(entry.sender)
        self.assertEqual([r.address for r in entry.recipients], ["s@far.test"])
        with self.queue.openMessage(entry.id) as f:
            dsn = f.read()
        self.assertIn(b"Action: delivered\r\n", dsn)
        self.assertIn(b"Status: 2.0.0\r\n", dsn)
        self.assertIn(b"Original-Envelope-Id: E1\r\n", dsn)
        self.assertIn(b"Original-Recipient: rfc822; Alice@Example.test\r\n", dsn)
        self.assertIn(b"Subject: t\r\n", dsn)
        self.assertNotIn(b"secret body", dsn)

    def test_noSuccessDSNByDefault(self) -> None:
        session = FakeSession()
        session.transaction = self.envelope()
        self.successResultOf(self.delivery.deliver(session, "s@far.test", ["alice@example.test"], io.BytesIO(b"\r\nx\r\n")))
        self.assertEqual(self.queue.list(), [])

    def test_noSuccessDSNToNullSender(self) -> None:
        from mailplat.smtp.envelope import RecipientParameters

        session = FakeSession()
        session.transaction = self.envelope(recipients={"alice@example.test": RecipientParameters(["SUCCESS"])})
        self.successResultOf(self.delivery.deliver(session, None, ["alice@example.test"], io.BytesIO(b"\r\nx\r\n")))
        self.assertEqual(self.queue.list(), [])

    def test_successDSNFull(self) -> None:
        from mailplat.smtp.envelope import RecipientParameters

        session = FakeSession()
        session.transaction = self.envelope(ret="FULL", recipients={"alice@example.test": RecipientParameters(["SUCCESS"])})
        self.successResultOf(
            self.delivery.deliver(session, "s@far.test", ["alice@example.test"], io.BytesIO(b"Subject: t\r\n\r\nwhole body\r\n"))
        )
        [entry] = self.queue.list()
        with self.queue.openMessage(entry.id) as f:
            self.assertIn(b"whole body", f.read())


class RouteTests(SynchronousTestCase):
    """
    The route decided for each recipient at RCPT is the one L{deliver
    <LocalDelivery.deliver>} follows, without looking the address up
    again; an account gone since then gets no copy.
    """

    def setUp(self) -> None:
        from mailplat.smtp.envelope import Envelope

        self.store = MemoryStore()
        for address in ("alice@example.test", "bob@example.test"):
            self.successResultOf(self.store.getAccount(address, create=True))
        self.directory = StoreDirectory(self.store)
        self.delivery = LocalDelivery(self.directory, self.store)
        self.lookups: list = []
        for name in ("isLocalAddress", "isLocalDomain", "expand"):
            original = getattr(self.directory, name)

            def counting(*args, _name=name, _original=original, **kwargs):
                self.lookups.append(_name)
                return _original(*args, **kwargs)

            self.patch(self.directory, name, counting)
        self.session = FakeSession()
        self.session.transaction = Envelope()

    def accept(self, *recipients: str) -> None:
        for recipient in recipients:
            self.assertIsNone(self.successResultOf(self.delivery.validateRecipient(self.session, recipient)))

    def count(self, address: str) -> int:
        inbox = self.successResultOf(self.successResultOf(self.store.getAccount(address)).getMailbox("INBOX"))
        return len(self.successResultOf(inbox.listMessages()))

    def storeAsked(self, name: str) -> list:
        """
        From now on, list the first argument of every call of the store's
        method C{name}.
        """
        asked: list = []
        original = getattr(self.store, name)

        def counting(first: str):  # type: ignore[no-untyped-def]
            asked.append(first)
            return original(first)

        self.patch(self.store, name, counting)
        return asked

    def test_lookedUpOnce(self) -> None:
        """
        RCPT asks whether the address is in a local domain once per
        recipient (the expansion does not ask again; an address with an
        account needs no look at the domain); delivery asks nothing more.
        """
        self.accept("alice@example.test", "bob@example.test")
        self.assertEqual(self.lookups, ["isLocalAddress", "expand"] * 2)
        self.successResultOf(self.delivery.deliver(self.session, "s@far.test", ["alice@example.test", "bob@example.test"],
                                                   io.BytesIO(b"\r\nx\r\n")))
        self.assertEqual(self.lookups, ["isLocalAddress", "expand"] * 2)
        self.assertEqual((self.count("alice@example.test"), self.count("bob@example.test")), (1, 1))

    def test_accountAskedOnce(self) -> None:
        """
        RCPT asks the store once whether the recipient has an account:
        the expansion uses the answer the domain check got.  An alias, a
        plus-address and a recipient without an account are still
        resolved as before.
        """
        asked = self.storeAsked("hasAccount")
        self.accept("alice@example.test")
        self.assertEqual(asked, ["alice@example.test"])
        self.assertEqual(self.session.transaction.routes["alice@example.test"].local, ["alice@example.test"])
        del asked[:]
        self.accept("bob+tag@example.test")
        self.assertEqual(self.session.transaction.routes["bob+tag@example.test"].local, ["bob@example.test"])
        self.assertEqual(asked, ["bob+tag@example.test", "bob@example.test"])
        refusal = self.failureResultOf(self.delivery.validateRecipient(self.session, "nobody@example.test"), SMTPReply)
        self.assertEqual(refusal.value.code, 550)

    def test_notValidatedLookedUp(self) -> None:
        """
        A recipient with no route noted (a caller that did not validate
        it) is looked up at delivery.
        """
        self.accept("alice@example.test")
        del self.lookups[:]
        self.successResultOf(self.delivery.deliver(self.session, "s@far.test", ["alice@example.test", "bob@example.test"],
                                                   io.BytesIO(b"\r\nx\r\n")))
        self.assertEqual(self.lookups, ["isLocalAddress", "expand"])
        self.assertEqual((self.count("alice@example.test"), self.count("bob@example.test")), (1, 1))

    def test_isLocalAddress(self) -> None:
        """
        An address with an account is in a local domain without the store
        being asked about the domain; one without asks it; with domains
        configured, the store is not asked at all.
        """
        asked = self.storeAsked("hasDomain")
        self.assertTrue(self.successResultOf(self.directory.isLocalAddress("alice@example.test")))
        self.assertEqual(asked, [])
        self.assertTrue(self.successResultOf(self.directory.isLocalAddress("nobody@example.test")))
        self.assertFalse(self.successResultOf(self.directory.isLocalAddress("alice@far.test")))
        self.assertEqual(asked, ["example.test", "far.test"])
        configured = StoreDirectory(self.store, ["other.test"])
        self.assertFalse(self.successResultOf(configured.isLocalAddress("alice@example.test")))
        self.assertTrue(self.successResultOf(configured.isLocalAddress("x@other.test")))
        self.assertEqual(asked, ["example.test", "far.test"])

    def test_expandOfLocalDomain(self) -> None:
        """
        C{expand} told the domain is local does not ask again.
        """
        resolution = self.successResultOf(self.directory.expand("alice@example.test", domainIsLocal=True))
        self.assertEqual(resolution.local, ["alice@example.test"])
        self.assertEqual(self.lookups, ["expand"])

    def test_accountGoneSinceRcpt(self) -> None:
        """
        An account deleted between RCPT and the end of the data gets no
        copy; the others do, and the message is accepted.
        """
        self.accept("alice@example.test", "bob@example.test")
        self.successResultOf(self.store.deleteAccount("bob@example.test"))
        self.successResultOf(self.delivery.deliver(self.session, "s@far.test", ["alice@example.test", "bob@example.test"],
                                                   io.BytesIO(b"\r\nx\r\n")))
        self.assertEqual(self.count("alice@example.test"), 1)

    def test_everyAccountGoneSinceRcpt(self) -> None:
        """
        When every account is gone, the message is refused as it would
        have been at RCPT.
        """
        self.accept("bob@example.test")
        self.successResultOf(self.store.deleteAccount("bob@example.test"))
        reply = self.failureResultOf(
            self.delivery.deliver(self.session, "s@far.test", ["bob@example.test"], io.BytesIO(b"\r\nx\r\n")), SMTPReply
        ).value
        self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"))


class DurableReplyTests(TestCase):
    """
    Over a Maildir store with group commit, the SMTP server's 250 for a
    message comes only after the commit that makes it durable: the file
    written (in the store's pool, not on the reactor thread), the
    filesystem flushed, the file renamed into C{new/} and that directory
    fsynced, and its uidlist line appended with an fdatasync.
    """

    def setUp(self) -> defer.Deferred:
        from mailplat.store import maildir
        from mailplat.store.maildir import MaildirStore

        if maildir._syncfs is None or not maildir.SYNCFS:
            raise SkipTest("group commit without syncfs(2) fsyncs each file in the pool")
        self.maildir = maildir
        self.store = MaildirStore(self.mktemp())
        self.addCleanup(self.store.close)
        # The INBOX is made, and its uidlist written, before the events are
        # recorded.
        d = self.store.getAccount("alice@example.test", create=True)
        return d.addCallback(lambda account: account.getMailbox("INBOX"))

    def record(self) -> list:
        """
        Record, in order, the steps of a commit and whether each ran on
        the reactor (main) thread.
        """
        events: list = []
        maildir = self.maildir

        def wrap(owner: object, name: str, label) -> None:
            original = getattr(owner, name)

            def recorded(*args, **kwargs):
                result = original(*args, **kwargs)
                events.append((label(*args), threading.current_thread() is threading.main_thread()))
                return result

            self.patch(owner, name, recorded)

        wrap(maildir.MaildirMailbox, "_writeTmp", lambda *a: "write")
        wrap(maildir, "_syncFilesystem", lambda *a: "syncfs")
        wrap(maildir, "_fsyncDirectory", lambda path: "fsync " + os.path.basename(path))
        wrap(maildir.MaildirMailbox, "_logChanges", lambda *a: "uidlist")
        return events

    def test_replyAfterCommit(self) -> defer.Deferred:
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from mailplat.smtp.server import SMTPFactory

        events = self.record()
        delivery = LocalDelivery(StoreDirectory(self.store), self.store)
        factory = SMTPFactory(delivery, "mx.example.test", clock=Clock())
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        replied: defer.Deferred = defer.Deferred()
        write = transport.write

        def writing(data: bytes) -> None:
            write(data)
            if b"250 2.0.0 Ok: queued" in data:
                events.append(("250", threading.current_thread() is threading.main_thread()))
                replied.callback(None)

        transport.write = writing  # type: ignore[method-assign]
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@far.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        proto.dataReceived(b"Subject: t\r\n\r\ndurable\r\n.\r\n")
        # Not acknowledged while the commit runs in the pool.
        self.assertNotIn(b"queued", transport.value())

        def check(_: None) -> None:
            proto.connectionLost(None)
            self.assertEqual([name for name, _ in events], ["write", "syncfs", "fsync new", "uidlist", "250"])
            self.assertEqual([main for _, main in events], [False, False, False, False, True])
            inbox = os.path.join(self.store.root, "example.test", "alice", "Maildir", "new")
            [name] = os.listdir(inbox)
            with open(os.path.join(inbox, name), "rb") as f:
                self.assertTrue(f.read().endswith(b"Subject: t\n\ndurable\n"))

        return replied.addCallback(check)


class MaildirWireSizeTests(TestCase):
    """
    A Maildir file name carries the message's wire size (C{W=}), counted
    while the file is written with LF line ends: the same for mail with
    CR LF only (the usual case, counted without looking for CR LF) as
    for mail with bare CRs and LFs, wherever the chunks of the copy end.
    """

    def setUp(self) -> defer.Deferred:
        from mailplat.store import maildir
        from mailplat.store.maildir import MaildirStore

        self.maildir = maildir
        self.store = MaildirStore(self.mktemp())
        self.addCleanup(self.store.close)
        d = self.store.getAccount("alice@example.test", create=True)
        return d.addCallback(lambda account: account.getMailbox("INBOX")).addCallback(self._opened)

    def _opened(self, inbox: object) -> None:
        self.inbox = inbox

    @defer.inlineCallbacks
    def test_wireSize(self) -> defer.Deferred:
        chunk = self.maildir.CHUNK
        line = b"x" * 76 + b"\r\n"
        messages = [
            b"Subject: crlf\r\n\r\n" + line * (2 * chunk // len(line) + 3),
            b"Subject: cr at a chunk's end\r\n\r\n" + b"y" * (chunk - 33 - 1) + b"\r\nafter\r\n",
            b"Subject: bare\r\n\r\na\rb\nc\r\n\n\r\r\n",
            b"Subject: bare across\r\n\r\n" + b"z" * (chunk - 26 - 1) + b"\r" + b"q\nend\r\n",
            b"Subject: lf only\n\nbody\n",
        ]
        for data in messages:
            yield self.inbox.append(io.BytesIO(data))
        names = os.listdir(os.path.join(self.inbox.path, "new"))
        self.assertEqual(len(names), len(messages))
        byDisk = {}
        for name in names:
            with open(os.path.join(self.inbox.path, "new", name), "rb") as f:
                byDisk[f.read()] = name
        for data in messages:
            disk = data.replace(b"\r\n", b"\n")
            name = byDisk[disk]
            wire = len(disk) + disk.count(b"\n") - disk.count(b"\r\n")
            self.assertIn(f",S={len(disk)},W={wire}", name, data[:40])
