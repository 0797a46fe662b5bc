"""
The store conformance suite: every store passes these tests.

A store's test module makes a L{twisted.trial.unittest.TestCase} that mixes
in L{StoreConformanceMixin}, implements C{makeStore} and says with the class
attribute C{persistent} whether the store keeps its data across a restart
(a second C{makeStore()} call in the same test must then open the same data
again).
"""

from io import BytesIO
from typing import Any, List

from twisted.internet import defer
from twisted.trial.unittest import SkipTest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailplat.errors import (
    InvalidMailboxName,
    MailboxError,
    MailboxExists,
    MailboxLocked,
    NoSuchAccount,
    NoSuchMailbox,
    NoSuchMessage,
)
from mailplat.interfaces import IAccount, IMailbox, IMailboxImport, IMailboxListener, IStore
from mailplat.mailbox import DEFAULT_MAILBOXES

ALICE = "alice@example.test"
BOB = "bob@example.test"


def message(subject: str = "hello", body: bytes = b"Hello there.\r\n") -> bytes:
    """
    A small message in wire (CRLF) form.
    """
    return (
        b"From: alice@example.test\r\n"
        b"To: bob@example.test\r\n"
        b"Subject: " + subject.encode("ascii") + b"\r\n"
        b"\r\n" + body
    )


@implementer(IMailboxListener)
class RecordingListener:
    """
    Counts the change notifications it hears.
    """

    def __init__(self) -> None:
        self.calls: List[Any] = []

    def mailboxChanged(self, mailbox: Any) -> None:
        self.calls.append(mailbox)


def readFile(f: Any) -> bytes:
    """
    Read a file opened by C{openMessage} to its end in small pieces, and
    close it.
    """
    chunks = []
    try:
        while True:
            chunk = f.read(7919)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        f.close()
    return b"".join(chunks)


class StoreConformanceMixin:
    """
    Tests of the whole store contract (L{mailplat.interfaces}).

    @cvar persistent: whether a second C{makeStore()} sees the first one's
        data (restart tests are skipped otherwise).
    """

    persistent = False

    def makeStore(self) -> IStore:
        """
        Make the store under test; for a persistent store, every call opens
        the same data.
        """
        raise NotImplementedError("StoreConformanceMixin.makeStore")

    # helpers

    def openStore(self) -> IStore:
        store = self.makeStore()
        self.addCleanup(store.close)
        return store

    def setUp(self) -> None:
        self.store = self.openStore()

    @defer.inlineCallbacks
    def account(self, store: Any = None, address: str = ALICE):
        store = self.store if store is None else store
        account = yield store.getAccount(address, create=True)
        return account

    @defer.inlineCallbacks
    def mailbox(self, name: str = "INBOX", store: Any = None):
        account = yield self.account(store)
        mailbox = yield account.getMailbox(name)
        return mailbox

    @defer.inlineCallbacks
    def reopen(self):
        """
        Close the store and open its data again (persistent stores only).
        """
        if not self.persistent:
            raise SkipTest("store does not persist across restarts")
        yield self.store.close()
        self.store = self.openStore()
        return self.store

    def listing(self, entries: Any) -> dict:
        return {e.name: set(e.attributes) for e in entries}

    # interfaces

    @defer.inlineCallbacks
    def test_interfaces(self):
        """
        The store, its accounts and mailboxes provide their interfaces.
        """
        self.assertTrue(verifyObject(IStore, self.store))
        account = yield self.account()
        self.assertTrue(verifyObject(IAccount, account))
        mailbox = yield account.getMailbox("INBOX")
        self.assertTrue(verifyObject(IMailbox, mailbox))
        self.assertEqual(mailbox.name, "INBOX")
        self.assertTrue(1 <= mailbox.uidValidity <= 2**32 - 1)

    # accounts

    @defer.inlineCallbacks
    def test_accounts(self):
        """
        Accounts are created on demand, then exist and are listed sorted.
        """
        self.assertFalse((yield self.store.hasAccount(BOB)))
        yield self.assertFailure(self.store.getAccount(BOB), NoSuchAccount)
        bob = yield self.store.getAccount(BOB, create=True)
        self.assertEqual(bob.address, BOB)
        yield self.store.getAccount(ALICE, create=True)
        self.assertTrue((yield self.store.hasAccount(BOB)))
        self.assertEqual((yield self.store.listAccounts()), [ALICE, BOB])
        again = yield self.store.getAccount(BOB)
        self.assertEqual(again.address, BOB)

    @defer.inlineCallbacks
    def test_deleteAccount(self):
        """
        A deleted account and its mail are gone; deleting it again fails.
        """
        inbox = yield self.mailbox()
        yield inbox.append(BytesIO(message()))
        yield self.store.deleteAccount(ALICE)
        self.assertFalse((yield self.store.hasAccount(ALICE)))
        self.assertEqual((yield self.store.listAccounts()), [])
        yield self.assertFailure(self.store.getAccount(ALICE), NoSuchAccount)
        yield self.assertFailure(self.store.deleteAccount(ALICE), NoSuchAccount)
        inbox = yield self.mailbox()
        self.assertEqual((yield inbox.status()).messages, 0)

    @defer.inlineCallbacks
    def test_defaultMailboxes(self):
        """
        A new account has INBOX and the default special-use mailboxes.
        """
        account = yield self.account()
        listing = self.listing((yield account.listMailboxes()))
        self.assertIn("INBOX", listing)
        self.assertNotIn("\\Noselect", listing["INBOX"])
        for name, use in DEFAULT_MAILBOXES:
            self.assertIn(name, listing)
            self.assertIn(use, listing[name])
            self.assertIn("\\HasNoChildren", listing[name])
            yield account.getMailbox(name)
        names = [e.name for e in (yield account.listMailboxes())]
        self.assertEqual(names, sorted(names))

    # mailbox hierarchy

    @defer.inlineCallbacks
    def test_createWithParents(self):
        """
        Creating C{a/b/c} creates its missing superiors; the listing marks
        which have children.
        """
        account = yield self.account()
        yield account.createMailbox("a/b/c")
        listing = self.listing((yield account.listMailboxes()))
        self.assertIn("\\HasChildren", listing["a"])
        self.assertIn("\\HasChildren", listing["a/b"])
        self.assertIn("\\HasNoChildren", listing["a/b/c"])
        self.assertNotIn("\\Noselect", listing["a/b/c"])
        for name in ("a", "a/b", "a/b/c"):
            mailbox = yield account.getMailbox(name)
            self.assertEqual(mailbox.name, name)

    @defer.inlineCallbacks
    def test_createSpecialUse(self):
        """
        A special-use attribute given at creation is listed.
        """
        account = yield self.account()
        yield account.createMailbox("Everything", "\\All")
        listing = self.listing((yield account.listMailboxes()))
        self.assertIn("\\All", listing["Everything"])

    @defer.inlineCallbacks
    def test_createExisting(self):
        """
        Creating an existing mailbox, INBOX in any case included, fails.
        """
        account = yield self.account()
        yield account.createMailbox("Work")
        yield self.assertFailure(account.createMailbox("Work"), MailboxExists)
        yield self.assertFailure(account.createMailbox("INBOX"), MailboxExists)
        yield self.assertFailure(account.createMailbox("inbox"), MailboxExists)

    @defer.inlineCallbacks
    def test_invalidNames(self):
        """
        Names that could escape the account or break the hierarchy are
        refused everywhere.
        """
        account = yield self.account()
        for name in ["", "..", "a/../b", "a/./b", "a//b", "/a", "a/", "a\x00b", "a\\b", "x\ny"]:
            yield self.assertFailure(account.createMailbox(name), InvalidMailboxName)
            yield self.assertFailure(account.getMailbox(name), InvalidMailboxName)
            yield self.assertFailure(account.deleteMailbox(name), InvalidMailboxName)
            yield self.assertFailure(account.renameMailbox("Sent", name), InvalidMailboxName)
        names = {e.name for e in (yield account.listMailboxes())}
        self.assertEqual(names, {"INBOX"} | {n for n, _ in DEFAULT_MAILBOXES})

    @defer.inlineCallbacks
    def test_inboxCaseInsensitive(self):
        """
        INBOX is found in any case and is one mailbox.
        """
        account = yield self.account()
        lower = yield account.getMailbox("inbox")
        self.assertEqual(lower.name, "INBOX")
        yield lower.append(BytesIO(message()))
        upper = yield account.getMailbox("InBoX")
        self.assertEqual((yield upper.status()).messages, 1)
        yield account.createMailbox("inbox/Sub")
        names = [e.name for e in (yield account.listMailboxes())]
        self.assertIn("INBOX/Sub", names)

    @defer.inlineCallbacks
    def test_getMissingMailbox(self):
        account = yield self.account()
        yield self.assertFailure(account.getMailbox("Nope"), NoSuchMailbox)

    @defer.inlineCallbacks
    def test_deleteInboxRefused(self):
        account = yield self.account()
        yield self.assertFailure(account.deleteMailbox("INBOX"), MailboxError)
        yield self.assertFailure(account.deleteMailbox("inbox"), MailboxError)
        yield account.getMailbox("INBOX")

    @defer.inlineCallbacks
    def test_deleteMissing(self):
        account = yield self.account()
        yield self.assertFailure(account.deleteMailbox("Nope"), NoSuchMailbox)

    @defer.inlineCallbacks
    def test_deleteRemovesMessages(self):
        """
        A deleted mailbox is gone with its messages; one made again under
        the same name starts empty.
        """
        account = yield self.account()
        yield account.createMailbox("Old")
        old = yield account.getMailbox("Old")
        yield old.append(BytesIO(message()))
        yield account.deleteMailbox("Old")
        yield self.assertFailure(account.getMailbox("Old"), NoSuchMailbox)
        self.assertNotIn("Old", self.listing((yield account.listMailboxes())))
        yield account.createMailbox("Old")
        again = yield account.getMailbox("Old")
        self.assertEqual((yield again.status()).messages, 0)

    @defer.inlineCallbacks
    def test_deleteWithChildren(self):
        """
        Deleting a mailbox with children keeps its name as \\Noselect;
        deleting that name again is refused until the children are gone.
        """
        account = yield self.account()
        yield account.createMailbox("a/b")
        a = yield account.getMailbox("a")
        yield a.append(BytesIO(message()))
        yield account.deleteMailbox("a")
        listing = self.listing((yield account.listMailboxes()))
        self.assertIn("\\Noselect", listing["a"])
        self.assertIn("\\HasChildren", listing["a"])
        self.assertNotIn("\\Noselect", listing["a/b"])
        yield self.assertFailure(account.getMailbox("a"), NoSuchMailbox)
        yield self.assertFailure(account.deleteMailbox("a"), MailboxError)
        yield account.deleteMailbox("a/b")
        yield account.deleteMailbox("a")
        listing = self.listing((yield account.listMailboxes()))
        self.assertNotIn("a", listing)
        self.assertNotIn("a/b", listing)
        # A \Noselect name may be created as a real mailbox again.
        yield account.createMailbox("c/d")
        yield account.deleteMailbox("c")
        yield account.createMailbox("c")
        c = yield account.getMailbox("c")
        self.assertEqual((yield c.status()).messages, 0)

    @defer.inlineCallbacks
    def test_renameWithChildren(self):
        """
        Renaming moves a mailbox, its children and their messages.
        """
        account = yield self.account()
        yield account.createMailbox("a/b")
        b = yield account.getMailbox("a/b")
        yield b.append(BytesIO(message("moved")), ["\\Seen"])
        yield account.renameMailbox("a", "z/y")
        listing = self.listing((yield account.listMailboxes()))
        self.assertNotIn("a", listing)
        self.assertNotIn("a/b", listing)
        self.assertIn("z", listing)
        self.assertIn("z/y", listing)
        self.assertIn("z/y/b", listing)
        yield self.assertFailure(account.getMailbox("a/b"), NoSuchMailbox)
        moved = yield account.getMailbox("z/y/b")
        self.assertEqual(moved.name, "z/y/b")
        infos = yield moved.listMessages()
        self.assertEqual(len(infos), 1)
        self.assertEqual(infos[0].flags, frozenset(["\\Seen"]))
        data = readFile((yield moved.openMessage(infos[0].uid)))
        self.assertEqual(data, message("moved"))

    @defer.inlineCallbacks
    def test_renameErrors(self):
        account = yield self.account()
        yield self.assertFailure(account.renameMailbox("Nope", "Other"), NoSuchMailbox)
        yield self.assertFailure(account.renameMailbox("Sent", "Drafts"), MailboxExists)
        yield self.assertFailure(account.renameMailbox("Sent", "inbox"), MailboxExists)
        yield self.assertFailure(account.renameMailbox("Sent", "Sent/Inner"), MailboxError)

    @defer.inlineCallbacks
    def test_renameInbox(self):
        """
        Renaming INBOX moves its messages to the new mailbox and leaves an
        empty INBOX whose UIDs still go up.
        """
        account = yield self.account()
        inbox = yield account.getMailbox("INBOX")
        uids = []
        for i in range(2):
            uids.append((yield inbox.append(BytesIO(message(f"m{i}")), ["\\Flagged"])))
        yield account.renameMailbox("INBOX", "Old Mail")
        inbox = yield account.getMailbox("INBOX")
        self.assertEqual((yield inbox.status()).messages, 0)
        self.assertEqual((yield inbox.listMessages()), [])
        old = yield account.getMailbox("Old Mail")
        infos = yield old.listMessages()
        self.assertEqual(len(infos), 2)
        for i, info in enumerate(infos):
            self.assertEqual(info.flags, frozenset(["\\Flagged"]))
            self.assertEqual(readFile((yield old.openMessage(info.uid))), message(f"m{i}"))
        newUID = yield inbox.append(BytesIO(message()))
        self.assertGreater(newUID, max(uids))
        self.assertIn("INBOX", self.listing((yield account.listMailboxes())))

    # subscriptions

    @defer.inlineCallbacks
    def test_subscriptions(self):
        """
        Any name may be subscribed; unsubscribing an unsubscribed name fails.
        """
        account = yield self.account()
        before = set((yield account.listSubscriptions()))
        yield account.subscribe("Nonexistent/Child")
        yield account.subscribe("Work")
        subs = yield account.listSubscriptions()
        self.assertEqual(subs, sorted(subs))
        self.assertTrue({"Nonexistent/Child", "Work"} <= set(subs))
        yield account.unsubscribe("Work")
        self.assertEqual(set((yield account.listSubscriptions())), before | {"Nonexistent/Child"})
        yield self.assertFailure(account.unsubscribe("Work"), NoSuchMailbox)
        yield self.assertFailure(account.subscribe("a//b"), InvalidMailboxName)

    # messages

    @defer.inlineCallbacks
    def test_appendIncreasingUIDs(self):
        inbox = yield self.mailbox()
        uids = []
        for i in range(5):
            uids.append((yield inbox.append(BytesIO(message(f"n{i}")))))
        self.assertEqual(uids, sorted(set(uids)))
        self.assertTrue(all(u > 0 for u in uids))
        infos = yield inbox.listMessages()
        self.assertEqual([i.uid for i in infos], uids)
        status = yield inbox.status()
        self.assertGreater(status.uidNext, uids[-1])

    @defer.inlineCallbacks
    def test_status(self):
        """
        STATUS counts messages, recent, unseen and size.
        """
        inbox = yield self.mailbox()
        empty = yield inbox.status()
        self.assertEqual((empty.messages, empty.recent, empty.unseen, empty.size), (0, 0, 0, 0))
        self.assertEqual(empty.uidValidity, inbox.uidValidity)
        bodies = [message("a"), message("bb"), message("ccc")]
        yield inbox.append(BytesIO(bodies[0]))
        yield inbox.append(BytesIO(bodies[1]), ["\\Seen"])
        last = yield inbox.append(BytesIO(bodies[2]), ["\\Flagged"])
        status = yield inbox.status()
        self.assertEqual(status.messages, 3)
        self.assertEqual(status.recent, 3)
        self.assertEqual(status.unseen, 2)
        self.assertEqual(status.size, sum(len(b) for b in bodies))
        self.assertGreater(status.uidNext, last)
        self.assertEqual(status.uidValidity, inbox.uidValidity)
        self.assertGreaterEqual(status.highestModseq, max(i.modseq for i in (yield inbox.listMessages())))
        yield inbox.claimRecent()
        self.assertEqual((yield inbox.status()).recent, 0)

    @defer.inlineCallbacks
    def assertRoundTrip(self, mailbox, data: bytes):
        uid = yield mailbox.append(BytesIO(data))
        infos = {i.uid: i for i in (yield mailbox.listMessages())}
        self.assertEqual(infos[uid].size, len(data))
        got = readFile((yield mailbox.openMessage(uid)))
        self.assertEqual(len(got), len(data))
        self.assertEqual(got, data)

    @defer.inlineCallbacks
    def test_openMessageExact(self):
        """
        openMessage yields exactly the wire bytes appended, and size is
        their length, whatever the line lengths and ending.
        """
        inbox = yield self.mailbox()
        yield self.assertRoundTrip(inbox, message())
        yield self.assertRoundTrip(inbox, message(body=b"no newline at the end"))
        yield self.assertRoundTrip(inbox, message(body=b"x" * 200000 + b"\r\n" + b"y" * 70000))
        yield self.assertRoundTrip(inbox, message(body=b"ends in CR\r"))
        yield self.assertRoundTrip(inbox, message(body=b"\r\n" * 70000))
        yield self.assertRoundTrip(inbox, message(body=bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"))
        # A CRLF that straddles a 64 KiB boundary, whatever the chunking.
        for pad in (65534, 65535, 65536):
            yield self.assertRoundTrip(inbox, b"S: x\r\n\r\n" + b"z" * (pad - 8) + b"\r\nend\r\n")

    @defer.inlineCallbacks
    def test_openMessageExactLooksLikeMetadata(self):
        """
        A message whose headers and body look like the metadata or
        separators a store keeps on disk (mbox C{From } lines, C{Status},
        C{X-UID}, C{Content-Length}) reads back exactly, with no flags.
        """
        inbox = yield self.mailbox()
        data = (
            b"Status: RO\r\nX-Status: AFD\r\nX-UID: 7\r\nX-Keywords: junk\r\n"
            b"X-IMAPbase: 1 2\r\nContent-Length: 1\r\nSubject: tricky\r\n\r\n"
            b"From the body\r\n>From quoted\r\n>>From twice\r\n\r\nFrom x Mon Jan  1 00:00:00 2024\r\n"
        )
        yield self.assertRoundTrip(inbox, data)
        infos = yield inbox.listMessages()
        self.assertEqual([i.flags for i in infos], [frozenset()])
        self.assertEqual(len(infos), 1)

    @defer.inlineCallbacks
    def test_bigMessage(self):
        """
        A 5 MB message comes back whole.
        """
        inbox = yield self.mailbox()
        line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
        data = message(body=line * (5 * 1024 * 1024 // len(line)))
        self.assertGreater(len(data), 5000000)
        yield self.assertRoundTrip(inbox, data)

    @defer.inlineCallbacks
    def test_openMissing(self):
        inbox = yield self.mailbox()
        yield self.assertFailure(inbox.openMessage(12345), NoSuchMessage)
        uid = yield inbox.append(BytesIO(message()))
        yield inbox.expunge([uid], requireDeleted=False)
        yield self.assertFailure(inbox.openMessage(uid), NoSuchMessage)

    @defer.inlineCallbacks
    def test_internalDate(self):
        """
        A given internal date is kept; without one it is about now.
        """
        import time

        inbox = yield self.mailbox()
        dated = yield inbox.append(BytesIO(message()), internalDate=1000000000.0)
        before = time.time()
        now = yield inbox.append(BytesIO(message()))
        infos = {i.uid: i for i in (yield inbox.listMessages())}
        self.assertEqual(infos[dated].internalDate, 1000000000.0)
        self.assertLess(abs(infos[now].internalDate - before), 60)

    @defer.inlineCallbacks
    def test_flags(self):
        """
        Flags and keywords are set, added and removed; system flags match
        case-insensitively; \\Recent is never stored.
        """
        inbox = yield self.mailbox()
        uid = yield inbox.append(BytesIO(message()), ["\\SEEN", "\\Recent", "$Label1"])
        info = (yield inbox.listMessages())[0]
        self.assertEqual(info.flags, frozenset(["\\Seen", "$Label1"]))
        infos = yield inbox.setFlags([uid], ["\\flagged", "Work", "\\Recent"], "add")
        self.assertEqual([i.uid for i in infos], [uid])
        self.assertEqual(infos[0].flags, frozenset(["\\Seen", "$Label1", "\\Flagged", "Work"]))
        infos = yield inbox.setFlags([uid], ["\\seen", "$label1"], "remove")
        self.assertEqual(infos[0].flags, frozenset(["\\Flagged", "Work"]))
        infos = yield inbox.setFlags([uid], ["\\Answered", "\\Draft", "\\Deleted"], "set")
        self.assertEqual(infos[0].flags, frozenset(["\\Answered", "\\Draft", "\\Deleted"]))
        self.assertEqual((yield inbox.listMessages())[0].flags, infos[0].flags)
        infos = yield inbox.setFlags([uid, uid + 100], ["\\Recent"], "set")
        self.assertEqual([(i.uid, i.flags) for i in infos], [(uid, frozenset())])

    @defer.inlineCallbacks
    def test_modseq(self):
        """
        A change raises a message's modseq above every earlier one; a no-op
        keeps it.
        """
        inbox = yield self.mailbox()
        a = yield inbox.append(BytesIO(message()))
        b = yield inbox.append(BytesIO(message()))
        infos = {i.uid: i for i in (yield inbox.listMessages())}
        highest = (yield inbox.status()).highestModseq
        self.assertGreaterEqual(highest, max(i.modseq for i in infos.values()))
        changed = (yield inbox.setFlags([a], ["\\Seen"], "add"))[0]
        self.assertGreater(changed.modseq, highest)
        status = yield inbox.status()
        self.assertEqual(status.highestModseq, changed.modseq)
        same = yield inbox.setFlags([a, b], ["\\Seen"], "add")
        self.assertEqual(same[0].modseq, changed.modseq)
        self.assertGreater(same[1].modseq, changed.modseq)
        noop = yield inbox.setFlags([a], ["\\Seen"], "add")
        self.assertEqual(noop[0].modseq, changed.modseq)
        self.assertEqual((yield inbox.status()).highestModseq, same[1].modseq)
        yield inbox.setFlags([b], ["\\Deleted"], "add")
        before = (yield inbox.status()).highestModseq
        yield inbox.expunge()
        self.assertGreater((yield inbox.status()).highestModseq, before)

    @defer.inlineCallbacks
    def test_claimRecent(self):
        """
        Each new message is \\Recent for exactly one claimer.
        """
        account = yield self.account()
        one = yield account.getMailbox("INBOX")
        two = yield account.getMailbox("INBOX")
        first = yield one.append(BytesIO(message()))
        second = yield one.append(BytesIO(message()), ["\\Seen"])
        self.assertEqual((yield one.claimRecent()), [first, second])
        self.assertEqual((yield two.claimRecent()), [])
        self.assertEqual((yield one.claimRecent()), [])
        third = yield two.append(BytesIO(message()))
        self.assertEqual((yield one.status()).recent, 1)
        self.assertEqual((yield two.claimRecent()), [third])
        self.assertEqual((yield one.claimRecent()), [])
        # Claiming does not touch flags.
        infos = yield one.listMessages()
        self.assertEqual([i.flags for i in infos], [frozenset(), frozenset(["\\Seen"]), frozenset()])

    @defer.inlineCallbacks
    def test_expunge(self):
        """
        Expunge removes \\Deleted messages (of the given UIDs), or exactly
        the given UIDs without requireDeleted.
        """
        inbox = yield self.mailbox()
        uids = []
        for i in range(4):
            uids.append((yield inbox.append(BytesIO(message(f"e{i}")))))
        yield inbox.setFlags([uids[0], uids[2]], ["\\Deleted"], "add")
        self.assertEqual((yield inbox.expunge([uids[0], uids[1]])), [uids[0]])
        self.assertEqual([i.uid for i in (yield inbox.listMessages())], uids[1:])
        self.assertEqual((yield inbox.expunge()), [uids[2]])
        self.assertEqual((yield inbox.expunge()), [])
        self.assertEqual((yield inbox.expunge([uids[3], 999], requireDeleted=False)), [uids[3]])
        infos = yield inbox.listMessages()
        self.assertEqual([i.uid for i in infos], [uids[1]])
        self.assertEqual(readFile((yield inbox.openMessage(uids[1]))), message("e1"))
        status = yield inbox.status()
        self.assertEqual((status.messages, status.size), (1, len(message("e1"))))

    @defer.inlineCallbacks
    def test_uidsNotReused(self):
        inbox = yield self.mailbox()
        a = yield inbox.append(BytesIO(message()))
        b = yield inbox.append(BytesIO(message()))
        yield inbox.expunge([a, b], requireDeleted=False)
        c = yield inbox.append(BytesIO(message()))
        self.assertGreater(c, b)

    @defer.inlineCallbacks
    def test_copyTo(self):
        """
        Copies keep content, flags and internal date, get new UIDs and are
        \\Recent in the target; missing UIDs are skipped.
        """
        account = yield self.account()
        inbox = yield account.getMailbox("INBOX")
        archive = yield account.getMailbox("Archive")
        yield archive.append(BytesIO(message("already there")))
        a = yield inbox.append(BytesIO(message("a")), ["\\Seen", "Important"], 1100000000.0)
        b = yield inbox.append(BytesIO(message("b", b"x" * 100000)), [], 1200000000.0)
        yield archive.claimRecent()
        pairs = yield inbox.copyTo([b, a, 4242], archive)
        self.assertEqual([p[0] for p in pairs], [a, b])
        targets = [p[1] for p in pairs]
        infos = {i.uid: i for i in (yield archive.listMessages())}
        self.assertEqual(len(infos), 3)
        self.assertEqual(infos[targets[0]].flags, frozenset(["\\Seen", "Important"]))
        self.assertEqual(infos[targets[0]].internalDate, 1100000000.0)
        self.assertEqual(infos[targets[1]].internalDate, 1200000000.0)
        self.assertEqual(readFile((yield archive.openMessage(targets[1]))), message("b", b"x" * 100000))
        self.assertEqual(sorted((yield archive.claimRecent())), sorted(targets))
        # The source is untouched.
        self.assertEqual(len((yield inbox.listMessages())), 2)

    @defer.inlineCallbacks
    def test_copyToOtherAccount(self):
        alice = yield self.account()
        bob = yield self.account(address=BOB)
        source = yield alice.getMailbox("INBOX")
        target = yield bob.getMailbox("INBOX")
        uid = yield source.append(BytesIO(message("shared")), ["\\Answered"])
        pairs = yield source.copyTo([uid], target)
        self.assertEqual(len(pairs), 1)
        self.assertEqual(readFile((yield target.openMessage(pairs[0][1]))), message("shared"))

    @defer.inlineCallbacks
    def test_listeners(self):
        """
        A listener hears appends, flag changes and expunges made through
        another mailbox object of the same mailbox, until removed.
        """
        account = yield self.account()
        watched = yield account.getMailbox("INBOX")
        listener = RecordingListener()
        watched.addListener(listener)
        other = yield account.getMailbox("inbox")
        uid = yield other.append(BytesIO(message()))
        self.assertEqual(len(listener.calls), 1)
        yield other.setFlags([uid], ["\\Deleted"], "add")
        self.assertEqual(len(listener.calls), 2)
        yield other.expunge()
        self.assertEqual(len(listener.calls), 3)
        # Another mailbox does not notify this one.
        sent = yield account.getMailbox("Sent")
        yield sent.append(BytesIO(message()))
        self.assertEqual(len(listener.calls), 3)
        watched.removeListener(listener)
        watched.removeListener(listener)
        yield other.append(BytesIO(message()))
        self.assertEqual(len(listener.calls), 3)

    @defer.inlineCallbacks
    def test_listenerErrorsContained(self):
        """
        A listener that raises does not stop the change or other listeners.
        """

        @implementer(IMailboxListener)
        class Broken:
            def mailboxChanged(self, mailbox):
                raise RuntimeError("broken listener")

        inbox = yield self.mailbox()
        listener = RecordingListener()
        inbox.addListener(Broken())
        inbox.addListener(listener)
        uid = yield inbox.append(BytesIO(message()))
        self.assertEqual(len(listener.calls), 1)
        self.assertEqual([i.uid for i in (yield inbox.listMessages())], [uid])
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_lockExclusive(self):
        """
        The exclusive lock is held by one session at a time.
        """
        account = yield self.account()
        one = yield account.getMailbox("INBOX")
        two = yield account.getMailbox("INBOX")
        release = yield one.lockExclusive()
        yield self.assertFailure(two.lockExclusive(), MailboxLocked)
        yield self.assertFailure(one.lockExclusive(), MailboxLocked)
        release()
        again = yield two.lockExclusive()
        again()
        # Other mailboxes are locked independently.
        release = yield one.lockExclusive()
        sent = yield account.getMailbox("Sent")
        (yield sent.lockExclusive())()
        release()

    # the import seam (IMailboxImport)

    @defer.inlineCallbacks
    def importer(self, name: str = "INBOX"):
        mailbox = yield self.mailbox(name)
        seam = IMailboxImport(mailbox, None)
        self.assertIsNotNone(seam, "the store's mailboxes do not provide IMailboxImport")
        self.assertTrue(verifyObject(IMailboxImport, seam))
        return seam

    @defer.inlineCallbacks
    def test_importMessage(self):
        """
        A message imported under a given UID keeps it, its flags, internal
        date and content; UIDNEXT follows it, and appends go on above it.
        """
        inbox = yield self.importer()
        uid = yield inbox.importMessage(7, BytesIO(message("seven")), ["\\Seen", "$Work"], 1300000000.0)
        self.assertEqual(uid, 7)
        infos = yield inbox.listMessages()
        self.assertEqual([(i.uid, i.flags, i.internalDate, i.size) for i in infos],
                         [(7, frozenset(["\\Seen", "$Work"]), 1300000000.0, len(message("seven")))])
        self.assertEqual(readFile((yield inbox.openMessage(7))), message("seven"))
        self.assertEqual((yield inbox.status()).uidNext, 8)
        self.assertEqual((yield inbox.importMessage(9, BytesIO(message("nine")))), 9)
        self.assertEqual((yield inbox.append(BytesIO(message("ten")))), 10)
        self.assertEqual([i.uid for i in (yield inbox.listMessages())], [7, 9, 10])

    @defer.inlineCallbacks
    def test_importBelowUIDNext(self):
        """
        Importing under a UID that is taken, or below UIDNEXT, is refused
        and changes nothing.
        """
        inbox = yield self.importer()
        yield inbox.importMessage(5, BytesIO(message("five")))
        yield self.assertFailure(inbox.importMessage(5, BytesIO(message("again"))), MailboxError)
        yield self.assertFailure(inbox.importMessage(3, BytesIO(message("lower"))), MailboxError)
        self.assertEqual([i.uid for i in (yield inbox.listMessages())], [5])
        self.assertEqual(readFile((yield inbox.openMessage(5))), message("five"))
        self.assertEqual((yield inbox.status()).uidNext, 6)

    @defer.inlineCallbacks
    def test_setUIDValidity(self):
        """
        An empty mailbox takes a given UIDVALIDITY; one holding mail, or an
        out-of-range value, is refused.
        """
        sent = yield self.importer("Sent")
        yield sent.setUIDValidity(1234567)
        self.assertEqual(sent.uidValidity, 1234567)
        self.assertEqual((yield sent.status()).uidValidity, 1234567)
        again = yield self.mailbox("Sent")
        self.assertEqual(again.uidValidity, 1234567)
        for bad in (0, 2**32):
            yield self.assertFailure(sent.setUIDValidity(bad), MailboxError)
        yield sent.append(BytesIO(message()))
        yield self.assertFailure(sent.setUIDValidity(7654321), MailboxError)
        self.assertEqual((yield sent.status()).uidValidity, 1234567)

    @defer.inlineCallbacks
    def test_raiseUIDNext(self):
        """
        UIDNEXT can be raised, never lowered; the next append takes it.
        """
        inbox = yield self.importer()
        yield inbox.raiseUIDNext(100)
        self.assertEqual((yield inbox.status()).uidNext, 100)
        yield inbox.raiseUIDNext(50)
        self.assertEqual((yield inbox.status()).uidNext, 100)
        self.assertEqual((yield inbox.append(BytesIO(message()))), 100)

    @defer.inlineCallbacks
    def test_importRestart(self):
        """
        An imported UIDVALIDITY, imported UIDs and a raised UIDNEXT survive
        a restart.
        """
        if not self.persistent:
            raise SkipTest("store does not persist across restarts")
        work = yield self.importer("Archive")
        yield work.setUIDValidity(4242)
        yield work.importMessage(3, BytesIO(message("three")), ["\\Flagged", "Later"], 1200000000.0)
        yield work.importMessage(8, BytesIO(message("eight")))
        yield work.raiseUIDNext(20)
        before = [(i.uid, i.flags, i.internalDate, i.size) for i in (yield work.listMessages())]
        yield self.reopen()
        work = yield self.mailbox("Archive")
        self.assertEqual(work.uidValidity, 4242)
        status = yield work.status()
        self.assertEqual((status.uidValidity, status.uidNext), (4242, 20))
        self.assertEqual([(i.uid, i.flags, i.internalDate, i.size) for i in (yield work.listMessages())], before)
        self.assertEqual(readFile((yield work.openMessage(8))), message("eight"))

    # restart persistence

    @defer.inlineCallbacks
    def test_restartPersistence(self):
        """
        Mailboxes, UIDVALIDITY, UIDs, flags, keywords, internal dates,
        special-use and subscriptions survive a restart.
        """
        if not self.persistent:
            raise SkipTest("store does not persist across restarts")
        account = yield self.account()
        yield account.createMailbox("Work/Projects", "\\Flagged")
        yield account.createMailbox("Entw\u00fcrfe.alt")
        yield account.subscribe("Work/Projects")
        yield account.subscribe("Entw\u00fcrfe.alt")
        work = yield account.getMailbox("Work/Projects")
        a = yield work.append(BytesIO(message("a")), ["\\Seen", "$Important"], 1300000000.0)
        b = yield work.append(BytesIO(message("b")), ["Later"])
        yield work.setFlags([b], ["\\Flagged"], "add")
        before = yield work.listMessages()
        status = yield work.status()
        validity = work.uidValidity
        listing = self.listing((yield account.listMailboxes()))
        subs = yield account.listSubscriptions()

        yield self.reopen()
        account = yield self.store.getAccount(ALICE)
        self.assertEqual(self.listing((yield account.listMailboxes())), listing)
        self.assertEqual((yield account.listSubscriptions()), subs)
        work = yield account.getMailbox("Work/Projects")
        self.assertEqual(work.uidValidity, validity)
        after = yield work.listMessages()
        self.assertEqual(after, before)
        again = yield work.status()
        self.assertEqual(
            (again.messages, again.uidNext, again.uidValidity, again.highestModseq, again.size, again.unseen),
            (status.messages, status.uidNext, status.uidValidity, status.highestModseq, status.size, status.unseen),
        )
        self.assertEqual(readFile((yield work.openMessage(a))), message("a"))
        yield account.getMailbox("Entw\u00fcrfe.alt")

    @defer.inlineCallbacks
    def test_restartUIDsNotReused(self):
        """
        UIDs of expunged messages are not given again after a restart.
        """
        if not self.persistent:
            raise SkipTest("store does not persist across restarts")
        inbox = yield self.mailbox()
        yield inbox.append(BytesIO(message()))
        last = yield inbox.append(BytesIO(message()))
        yield inbox.expunge([last], requireDeleted=False)
        yield self.reopen()
        inbox = yield self.mailbox()
        self.assertGreater((yield inbox.append(BytesIO(message()))), last)

    @defer.inlineCallbacks
    def test_restartRecentClaimedOnce(self):
        """
        A message claimed as \\Recent before a restart is not \\Recent
        after it; one not yet claimed still is.
        """
        if not self.persistent:
            raise SkipTest("store does not persist across restarts")
        inbox = yield self.mailbox()
        claimed = yield inbox.append(BytesIO(message()))
        yield inbox.claimRecent()
        fresh = yield inbox.append(BytesIO(message()), ["\\Seen"])
        yield self.reopen()
        inbox = yield self.mailbox()
        self.assertEqual((yield inbox.status()).recent, 1)
        self.assertEqual((yield inbox.claimRecent()), [fresh])
        self.assertNotIn(claimed, (yield inbox.claimRecent()))

    @defer.inlineCallbacks
    def test_restartAccountsAndDeletes(self):
        """
        Accounts, deleted mailboxes and \\Noselect names persist.
        """
        if not self.persistent:
            raise SkipTest("store does not persist across restarts")
        account = yield self.account()
        yield self.account(address=BOB)
        yield account.createMailbox("p/q")
        yield account.createMailbox("gone")
        yield account.deleteMailbox("p")
        yield account.deleteMailbox("gone")
        yield self.reopen()
        self.assertEqual((yield self.store.listAccounts()), [ALICE, BOB])
        account = yield self.store.getAccount(ALICE)
        listing = self.listing((yield account.listMailboxes()))
        self.assertIn("\\Noselect", listing["p"])
        self.assertIn("p/q", listing)
        self.assertNotIn("gone", listing)
