"""
Tests for L{mailplat.delivery}: which recipients are accepted and where
their mail goes.
"""

import io

from twisted.trial.unittest import SynchronousTestCase
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
