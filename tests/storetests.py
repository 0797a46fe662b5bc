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
from mailplat.interfaces import (
    ConditionalFlags,
    IAccount,
    IAccountACL,
    IMailbox,
    IMailboxImport,
    IMailboxListener,
    IMessageReader,
    IStore,
    IStoreACL,
)
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


class ACLConformanceMixin:
    """
    Tests of the optional ACL part of the contract (L{IAccountACL},
    L{IStoreACL}), run by every store through L{StoreConformanceMixin}.
    The helpers (C{account}, C{reopen}, C{store}) are the conformance
    suite's.
    """

    @defer.inlineCallbacks
    def test_aclInterfaces(self):
        """
        Accounts provide L{IAccountACL} and lead to their store, which
        provides L{IStoreACL}.
        """
        account = yield self.account()
        verifyObject(IAccountACL, account)
        verifyObject(IStoreACL, self.store)
        self.assertIs(account.store, self.store)

    @defer.inlineCallbacks
    def test_aclSetAndGet(self):
        """
        Rights are kept canonical, per identifier; an empty or L{None}
        right string removes the entry, and removing a missing entry is
        not an error.
        """
        account = yield self.account()
        self.assertEqual((yield account.getACL("INBOX")), {})
        yield account.setACL("Drafts", BOB, "rlsl")
        yield account.setACL("Drafts", "anyone", "l")
        self.assertEqual((yield account.getACL("Drafts")), {BOB: "lrs", "anyone": "l"})
        acl = yield account.getACL("Drafts")
        acl.clear()
        self.assertEqual((yield account.getACL("Drafts")), {BOB: "lrs", "anyone": "l"})
        yield account.setACL("Drafts", BOB, "aetxkpiwsrl")
        self.assertEqual((yield account.getACL("Drafts")), {BOB: "lrswipkxtea", "anyone": "l"})
        yield account.setACL("Drafts", BOB, "")
        yield account.setACL("Drafts", "anyone", None)
        yield account.setACL("Drafts", "carol@example.test", None)
        self.assertEqual((yield account.getACL("Drafts")), {})
        self.assertEqual((yield account.getACL("INBOX")), {})

    @defer.inlineCallbacks
    def test_aclRefused(self):
        """
        Unknown rights, the owner, empty or spaced identifiers and missing
        mailboxes are refused, and nothing is kept.
        """
        account = yield self.account()
        yield self.assertFailure(account.setACL("INBOX", BOB, "lrz"), MailboxError)
        yield self.assertFailure(account.setACL("INBOX", BOB, "c"), MailboxError)
        yield self.assertFailure(account.setACL("INBOX", ALICE, "lr"), MailboxError)
        yield self.assertFailure(account.setACL("INBOX", "", "lr"), MailboxError)
        yield self.assertFailure(account.setACL("INBOX", "bob @example.test", "lr"), MailboxError)
        yield self.assertFailure(account.setACL("INBOX", "bob\t@example.test", "lr"), MailboxError)
        yield self.assertFailure(account.setACL("Nowhere", BOB, "lr"), NoSuchMailbox)
        yield self.assertFailure(account.getACL("Nowhere"), NoSuchMailbox)
        yield self.assertFailure(account.getACL("a//b"), InvalidMailboxName)
        self.assertEqual((yield account.getACL("INBOX")), {})
        self.assertEqual((yield self.store.sharedWith(BOB)), [])

    @defer.inlineCallbacks
    def test_aclNoselectHasNone(self):
        """
        A name kept only as hierarchy (\\Noselect) is not a mailbox an ACL
        can be put on.
        """
        account = yield self.account()
        yield account.createMailbox("Top/Child")
        yield account.deleteMailbox("Top")
        yield self.assertFailure(account.setACL("Top", BOB, "lr"), NoSuchMailbox)
        yield self.assertFailure(account.getACL("Top"), NoSuchMailbox)

    @defer.inlineCallbacks
    def test_aclSharedWith(self):
        """
        C{sharedWith} finds what others gave the user or C{anyone}, with
        the rights of both together, sorted, and never the user's own.
        """
        alice = yield self.account()
        bob = yield self.account(address=BOB)
        carol = "carol@example.test"
        yield alice.createMailbox("Work")
        yield alice.setACL("Work", BOB, "lr")
        yield alice.setACL("Trash", "anyone", "li")
        yield alice.setACL("Trash", BOB, "r")
        yield bob.setACL("INBOX", ALICE, "lrs")
        yield bob.setACL("Sent", "anyone", "l")
        self.assertEqual(
            (yield self.store.sharedWith(BOB)),
            [(ALICE, "Trash", "lri"), (ALICE, "Work", "lr")],
        )
        self.assertEqual(
            (yield self.store.sharedWith(ALICE)),
            [(BOB, "INBOX", "lrs"), (BOB, "Sent", "l")],
        )
        self.assertEqual(
            (yield self.store.sharedWith(carol)),
            [(ALICE, "Trash", "li"), (BOB, "Sent", "l")],
        )
        yield alice.setACL("Work", BOB, None)
        yield alice.setACL("Trash", "anyone", "")
        self.assertEqual((yield self.store.sharedWith(BOB)), [(ALICE, "Trash", "r")])
        self.assertEqual((yield self.store.sharedWith(carol)), [(BOB, "Sent", "l")])

    @defer.inlineCallbacks
    def test_aclRename(self):
        """
        Renaming a mailbox carries its ACL and its children's to the new
        names; nothing stays under the old ones.
        """
        alice = yield self.account()
        yield alice.createMailbox("Team/Sub")
        yield alice.createMailbox("Teamwork")
        yield alice.setACL("Team", BOB, "lr")
        yield alice.setACL("Team/Sub", BOB, "lrw")
        yield alice.setACL("Teamwork", BOB, "l")
        yield alice.renameMailbox("Team", "Group/Team")
        self.assertEqual((yield alice.getACL("Group/Team")), {BOB: "lr"})
        self.assertEqual((yield alice.getACL("Group/Team/Sub")), {BOB: "lrw"})
        self.assertEqual((yield alice.getACL("Teamwork")), {BOB: "l"})
        self.assertEqual((yield alice.getACL("Group")), {})
        yield self.assertFailure(alice.getACL("Team"), NoSuchMailbox)
        self.assertEqual(
            (yield self.store.sharedWith(BOB)),
            [(ALICE, "Group/Team", "lr"), (ALICE, "Group/Team/Sub", "lrw"), (ALICE, "Teamwork", "l")],
        )
        yield alice.createMailbox("Team")
        self.assertEqual((yield alice.getACL("Team")), {})

    @defer.inlineCallbacks
    def test_aclRenameInbox(self):
        """
        Renaming INBOX moves its messages, not its ACL: INBOX keeps it.
        """
        alice = yield self.account()
        yield alice.setACL("INBOX", BOB, "lr")
        yield alice.renameMailbox("INBOX", "Old")
        self.assertEqual((yield alice.getACL("INBOX")), {BOB: "lr"})
        self.assertEqual((yield alice.getACL("Old")), {})
        self.assertEqual((yield self.store.sharedWith(BOB)), [(ALICE, "INBOX", "lr")])

    @defer.inlineCallbacks
    def test_aclDelete(self):
        """
        Deleting a mailbox drops its ACL (one made again under the name
        starts with none); its children, kept, keep theirs.
        """
        alice = yield self.account()
        yield alice.createMailbox("Team/Sub")
        yield alice.createMailbox("Solo")
        yield alice.setACL("Team", BOB, "lr")
        yield alice.setACL("Team/Sub", BOB, "lrw")
        yield alice.setACL("Solo", "anyone", "lr")
        yield alice.deleteMailbox("Team")
        yield alice.deleteMailbox("Solo")
        self.assertEqual((yield alice.getACL("Team/Sub")), {BOB: "lrw"})
        self.assertEqual((yield self.store.sharedWith(BOB)), [(ALICE, "Team/Sub", "lrw")])
        yield alice.createMailbox("Team")
        yield alice.createMailbox("Solo")
        self.assertEqual((yield alice.getACL("Team")), {})
        self.assertEqual((yield alice.getACL("Solo")), {})
        self.assertEqual((yield self.store.sharedWith("carol@example.test")), [])

    @defer.inlineCallbacks
    def test_aclDeleteAccount(self):
        """
        The mailboxes of a deleted account are no longer shared with
        anyone, and an account made again under the address shares
        nothing.
        """
        alice = yield self.account()
        yield alice.setACL("INBOX", BOB, "lr")
        yield alice.setACL("Sent", "anyone", "l")
        yield self.store.deleteAccount(ALICE)
        self.assertEqual((yield self.store.sharedWith(BOB)), [])
        alice = yield self.account()
        self.assertEqual((yield alice.getACL("INBOX")), {})
        self.assertEqual((yield self.store.sharedWith(BOB)), [])

    @defer.inlineCallbacks
    def test_aclRestart(self):
        """
        ACLs survive a restart, and so does what C{sharedWith} finds.
        """
        alice = yield self.account()
        yield alice.createMailbox("Shared Stuff/Ünïcode")
        yield alice.setACL("Shared Stuff/Ünïcode", BOB, "lrs")
        yield alice.setACL("INBOX", "anyone", "l")
        store = yield self.reopen()
        alice = yield store.getAccount(ALICE)
        self.assertEqual((yield alice.getACL("Shared Stuff/Ünïcode")), {BOB: "lrs"})
        self.assertEqual((yield alice.getACL("INBOX")), {"anyone": "l"})
        self.assertEqual(
            (yield store.sharedWith(BOB)),
            [(ALICE, "INBOX", "l"), (ALICE, "Shared Stuff/Ünïcode", "lrs")],
        )


class StoreConformanceMixin(ACLConformanceMixin):
    """
    Tests of the whole store contract (L{mailplat.interfaces}).

    @cvar persistent: whether a second C{makeStore()} sees the first one's
        data (restart tests are skipped otherwise).
    @cvar aclOptional: a store that offers no ACLs (the optional
        L{IStoreACL}) sets this, and the ACL tests are skipped for it;
        mailplat's own stores leave it false, so losing ACLs fails.
    """

    persistent = False
    aclOptional = False

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
        if (self.aclOptional and self._testMethodName.startswith("test_acl")  # type: ignore[attr-defined]
                and not IStoreACL.providedBy(self.store)):
            raise SkipTest("the store offers no ACLs (optional: IStoreACL)")

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
    def test_hasDomain(self):
        """
        A domain is known while one of its accounts exists; a domain that
        only ends like another, or a LIKE wildcard, is not.
        """
        domain = BOB.split("@", 1)[1]
        self.assertFalse((yield self.store.hasDomain(domain)))
        yield self.store.getAccount(BOB, create=True)
        self.assertTrue((yield self.store.hasDomain(domain)))
        self.assertFalse((yield self.store.hasDomain("x" + domain)))
        self.assertFalse((yield self.store.hasDomain(domain[1:])))
        self.assertFalse((yield self.store.hasDomain("%")))
        self.assertFalse((yield self.store.hasDomain(domain.replace(".", "_"))))
        self.assertFalse((yield self.store.hasDomain("..")))
        yield self.store.deleteAccount(BOB)
        self.assertFalse((yield self.store.hasDomain(domain)))

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
    def test_listingsShareInfos(self):
        """
        Two listings of an unchanged mailbox, through two handles of it,
        hand out the same info objects, so that every session keeping a
        listing (an idle IMAP session keeps one for ever) does not keep a
        copy of the mailbox's metadata; a changed message gets a new one.
        """
        inbox = yield self.mailbox()
        for _ in range(3):
            yield inbox.append(BytesIO(message()), ["\\Seen"])
        first = yield inbox.listMessages()
        other = yield (yield self.account()).getMailbox("INBOX")
        second = yield other.listMessages()
        self.assertEqual(len(first), 3)
        self.assertTrue(all(a is b for a, b in zip(first, second)))
        yield inbox.setFlags([first[0].uid], ["\\Flagged"], "add")
        third = yield inbox.listMessages()
        self.assertIsNot(third[0], first[0])
        self.assertEqual(third[0].flags, frozenset(["\\Seen", "\\Flagged"]))
        self.assertIs(third[1], first[1])

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

    # -- conditional STORE (setFlags with unchangedSince, RFC 7162 3.1.3) and
    #    imported modseqs (IMailboxImport.importMessage's modseq,
    #    raiseHighestModseq)

    @defer.inlineCallbacks
    def test_conditionalSetFlags(self):
        """
        With C{unchangedSince}, a message whose modseq is at most the value
        is changed (or left as it is, keeping its modseq, when its flags
        are already so); one whose modseq is greater is left unchanged and
        reported in C{modified}; a UID that is gone is neither.
        """
        inbox = yield self.mailbox()
        a = yield inbox.append(BytesIO(message("a")))
        b = yield inbox.append(BytesIO(message("b")), ["\\Seen"])
        c = yield inbox.append(BytesIO(message("c")))
        before = {i.uid: i for i in (yield inbox.listMessages())}
        mark = max(i.modseq for i in before.values())
        touched = (yield inbox.setFlags([a], ["\\Answered"], "add"))[0]
        self.assertGreater(touched.modseq, mark)

        outcome = yield inbox.setFlags([a, b, c, 99], ["\\Seen"], "add", unchangedSince=mark)
        self.assertIsInstance(outcome, ConditionalFlags)
        self.assertEqual(outcome.modified, [a])
        self.assertEqual([i.uid for i in outcome.infos], [b, c])
        infos = {i.uid: i for i in outcome.infos}
        self.assertEqual(infos[b].modseq, before[b].modseq, "a message already so keeps its modseq")
        self.assertEqual(infos[b].flags, frozenset(["\\Seen"]))
        self.assertGreater(infos[c].modseq, touched.modseq)
        self.assertEqual(infos[c].flags, frozenset(["\\Seen"]))
        now = {i.uid: i for i in (yield inbox.listMessages())}
        self.assertEqual(now[a], touched, "the modified message is left as it was")
        self.assertEqual(now[c], infos[c])

        # A modseq equal to the value passes; 0 fails every message.
        equal = yield inbox.setFlags([c], ["\\Flagged"], "add", unchangedSince=infos[c].modseq)
        self.assertEqual((equal.modified, [i.uid for i in equal.infos]), ([], [c]))
        self.assertIn("\\Flagged", equal.infos[0].flags)
        highest = (yield inbox.status()).highestModseq
        none = yield inbox.setFlags([a, b, c], ["\\Deleted"], "add", unchangedSince=0)
        self.assertEqual((none.infos, none.modified), ([], [a, b, c]))
        self.assertEqual((yield inbox.status()).highestModseq, highest)
        self.assertFalse(any("\\Deleted" in i.flags for i in (yield inbox.listMessages())))

        # Without it, the answer is still a plain list.
        plain = yield inbox.setFlags([a], ["\\Seen"], "add")
        self.assertEqual([i.uid for i in plain], [a])
        self.assertNotIsInstance(plain, ConditionalFlags)

    @defer.inlineCallbacks
    def test_conditionalSetFlagsBadValue(self):
        """
        An C{unchangedSince} that is not a modseq is refused and changes
        nothing.
        """
        inbox = yield self.mailbox()
        uid = yield inbox.append(BytesIO(message()))
        for bad in (-1, 2**63, "1"):
            yield self.assertFailure(inbox.setFlags([uid], ["\\Seen"], "add", unchangedSince=bad), ValueError)
        self.assertEqual([i.flags for i in (yield inbox.listMessages())], [frozenset()])

    @defer.inlineCallbacks
    def test_conditionalSetFlagsOtherProcess(self):
        """
        Two store instances on the same data (two processes): a change made
        through one fails the other's conditional STORE, even though the
        other read the mailbox before the change; and of two conditional
        STOREs racing with the same C{unchangedSince}, exactly one wins.
        """
        if not self.persistent:
            raise SkipTest("store does not persist: no second instance on the same data")
        first = yield self.mailbox()
        other = self.openStore()
        second = yield self.mailbox(store=other)
        uid = yield first.append(BytesIO(message()))
        [seen] = yield second.listMessages()
        self.assertEqual(seen.uid, uid)

        yield first.setFlags([uid], ["\\Seen"], "add")
        stale = yield second.setFlags([uid], ["\\Deleted"], "add", unchangedSince=seen.modseq)
        self.assertEqual((stale.infos, stale.modified), ([], [uid]))
        [now] = yield first.listMessages()
        self.assertEqual(now.flags, frozenset(["\\Seen"]))

        # Both ask at once, each believing the message unchanged since now.
        racing = yield defer.gatherResults([
            first.setFlags([uid], ["\\Flagged"], "add", unchangedSince=now.modseq),
            second.setFlags([uid], ["$Second"], "add", unchangedSince=now.modseq),
        ])
        winners = [r for r in racing if r.infos]
        losers = [r for r in racing if r.modified]
        self.assertEqual((len(winners), len(losers)), (1, 1), racing)
        self.assertEqual(losers[0].modified, [uid])
        winner = winners[0].infos[0]
        self.assertGreater(winner.modseq, now.modseq)
        wonFlag = "\\Flagged" if winners[0] is racing[0] else "$Second"
        self.assertEqual(winner.flags, frozenset(["\\Seen", wonFlag]))
        for mailbox in (first, second):
            [final] = yield mailbox.listMessages()
            self.assertEqual((final.flags, final.modseq), (winner.flags, winner.modseq))

    @defer.inlineCallbacks
    def test_importModseq(self):
        """
        A message imported with a modseq keeps it, in any order;
        HIGHESTMODSEQ is at least every one and can be raised, never
        lowered; later changes get modseqs above it.
        """
        inbox = yield self.importer()
        yield inbox.importMessage(3, BytesIO(message("three")), ["\\Seen"], 1300000000.0, modseq=50)
        yield inbox.importMessage(4, BytesIO(message("four")), [], 1300000001.0, modseq=7)
        self.assertEqual([(i.uid, i.modseq) for i in (yield inbox.listMessages())], [(3, 50), (4, 7)])
        self.assertEqual((yield inbox.status()).highestModseq, 50)
        yield inbox.raiseHighestModseq(80)
        self.assertEqual((yield inbox.status()).highestModseq, 80)
        yield inbox.raiseHighestModseq(60)
        self.assertEqual((yield inbox.status()).highestModseq, 80)
        [changed] = yield inbox.setFlags([4], ["\\Flagged"], "add")
        self.assertGreater(changed.modseq, 80)
        fresh = yield inbox.importMessage(5, BytesIO(message("five")))
        infos = {i.uid: i for i in (yield inbox.listMessages())}
        self.assertGreater(infos[fresh].modseq, changed.modseq)
        self.assertEqual(infos[3].modseq, 50)
        self.assertEqual((yield inbox.status()).highestModseq, infos[fresh].modseq)

    @defer.inlineCallbacks
    def test_importModseqOutOfRange(self):
        """
        A modseq outside 1..2**63-1 is refused, by the import (which adds
        nothing) and by raiseHighestModseq.
        """
        inbox = yield self.importer()
        for bad in (0, -3, 2**63):
            yield self.assertFailure(inbox.importMessage(3, BytesIO(message()), modseq=bad), MailboxError)
            yield self.assertFailure(inbox.raiseHighestModseq(bad), MailboxError)
        self.assertEqual((yield inbox.listMessages()), [])
        self.assertEqual((yield inbox.status()).uidNext, 1)

    @defer.inlineCallbacks
    def test_importModseqRestart(self):
        """
        Imported modseqs and a raised HIGHESTMODSEQ survive a restart.
        """
        if not self.persistent:
            raise SkipTest("store does not persist across restarts")
        work = yield self.importer("Archive")
        yield work.importMessage(2, BytesIO(message("two")), ["Later"], 1200000000.0, modseq=900)
        yield work.importMessage(6, BytesIO(message("six")), ["\\Seen"], 1200000001.0, modseq=40)
        yield work.raiseHighestModseq(1000)
        yield self.reopen()
        work = yield self.mailbox("Archive")
        self.assertEqual([(i.uid, i.modseq) for i in (yield work.listMessages())], [(2, 900), (6, 40)])
        self.assertEqual((yield work.status()).highestModseq, 1000)
        [changed] = yield work.setFlags([6], ["\\Flagged"], "add")
        self.assertGreater(changed.modseq, 1000)

    # the fast read seam (IMessageReader, optional)

    @defer.inlineCallbacks
    def reader(self, mailbox: Any = None):
        """
        C{mailbox} (INBOX by default) as an L{IMessageReader}; the test is
        skipped for a store that does not offer one.
        """
        mailbox = (yield self.mailbox()) if mailbox is None else mailbox
        reader = IMessageReader(mailbox, None)
        if reader is None:
            raise SkipTest("the store offers no IMessageReader (optional)")
        self.assertTrue(verifyObject(IMessageReader, reader))
        return reader

    @defer.inlineCallbacks
    def test_readMessageExact(self):
        """
        readMessage gives exactly the octets openMessage yields, for the
        awkward endings of test_openMessageExact, and L{None} exactly when
        the message is longer than the limit.
        """
        inbox = yield self.mailbox()
        reader = yield self.reader(inbox)
        for data in (
            message(),
            message(body=b"no newline at the end"),
            message(body=b"ends in CR\r"),
            message(body=b".dot\r\n\r\n" * 3000),
            message(body=b"x" * 70000 + b"\r\n" + b"y" * 700),
            b"S: x\r\n\r\n" + b"z" * 65526 + b"\r\nend\r\n",
        ):
            uid = yield inbox.append(BytesIO(data))
            self.assertEqual(readFile((yield inbox.openMessage(uid))), data)
            self.assertEqual(reader.readMessage(uid, len(data)), data)
            self.assertEqual(reader.readMessage(uid, len(data) + 4096), data)
            self.assertIsNone(reader.readMessage(uid, len(data) - 1))
            self.assertIsNone(reader.readMessage(uid, 0))

    @defer.inlineCallbacks
    def test_readMessageMissing(self):
        """
        An unknown or expunged UID raises NoSuchMessage, at once.
        """
        inbox = yield self.mailbox()
        reader = yield self.reader(inbox)
        self.assertRaises(NoSuchMessage, reader.readMessage, 12345, 65536)
        uid = yield inbox.append(BytesIO(message()))
        yield inbox.expunge([uid], requireDeleted=False)
        self.assertRaises(NoSuchMessage, reader.readMessage, uid, 65536)

    @defer.inlineCallbacks
    def test_readMessageOtherProcess(self):
        """
        A second store instance on the same data (another process) reads a
        message whose flags the first changed since it listed it (a Maildir
        renames the file), and raises NoSuchMessage once the first has
        expunged it.
        """
        if not self.persistent:
            raise SkipTest("store does not persist: no second instance on the same data")
        first = yield self.mailbox()
        second = yield self.mailbox(store=self.openStore())
        reader = yield self.reader(second)
        data = message(body=b"read by the other process\r\n")
        uid = yield first.append(BytesIO(data))
        self.assertEqual([i.uid for i in (yield second.listMessages())], [uid])
        yield first.setFlags([uid], ["\\Seen", "\\Flagged"], "add")
        self.assertEqual(reader.readMessage(uid, 65536), data)
        yield first.expunge([uid], requireDeleted=False)
        self.assertRaises(NoSuchMessage, reader.readMessage, uid, 65536)

    @defer.inlineCallbacks
    def test_otherInstanceSeesEveryChange(self):
        """
        Two store instances on the same data (two processes), changing one
        mailbox by turns, each see every change of the other at once: new
        messages, flags, expunges, \\Recent claims and the counts (a store
        that learns of its own changes without looking at its data again
        must not miss the other's).
        """
        if not self.persistent:
            raise SkipTest("store does not persist: no second instance on the same data")
        first = yield self.mailbox()
        second = yield self.mailbox(store=self.openStore())

        @defer.inlineCallbacks
        def seen(mailbox):
            infos = yield mailbox.listMessages()
            status = yield mailbox.status()
            return [(i.uid, sorted(i.flags), i.modseq) for i in infos], (status.messages, status.unseen, status.uidNext)

        a = yield first.append(BytesIO(message("a")))
        b = yield first.append(BytesIO(message("b")), ["\\Seen"])
        self.assertEqual((yield seen(second)), (yield seen(first)))
        yield second.setFlags([a], ["\\Flagged"], "add")
        c = yield second.append(BytesIO(message("c")))
        self.assertEqual((yield seen(first)), (yield seen(second)))
        self.assertEqual([uid for uid, _, _ in (yield seen(first))[0]], [a, b, c])
        self.assertEqual(sorted((yield first.claimRecent())), [a, b, c])
        self.assertEqual((yield second.claimRecent()), [])
        yield first.expunge([b], requireDeleted=False)
        yield first.setFlags([c], ["\\Seen"], "add")
        yield second.setFlags([a], ["\\Flagged"], "remove")
        yield second.expunge([c], requireDeleted=False)
        expected = yield seen(second)
        self.assertEqual([(uid, flags) for uid, flags, _ in expected[0]], [(a, [])])
        self.assertEqual(expected[1], (1, 1, c + 1))
        self.assertEqual((yield seen(first)), expected)
        self.assertEqual(readFile((yield first.openMessage(a))), message("a"))
