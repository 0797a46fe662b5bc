"""
The mbox store: the conformance suite, and what only an mbox store has to
get right (mboxrd quoting, the headers mutt and Dovecot read, other
programs appending under the dotlock, crash-safe rewrites, locking, the
plugin factory).
"""

import errno
import fcntl
import os
import struct
import time
from io import BytesIO
from typing import Any, List

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailplat.errors import (
    ConfigError,
    InvalidMailboxName,
    MailboxLocked,
    NoSuchAccount,
    NoSuchMailbox,
    NoSuchMessage,
    StoreError,
)
from mailplat.interfaces import IStoreFactory
from mailplat.mailbox import DEFAULT_MAILBOXES
from mailplat.store import mbox as mboxModule
from mailplat.store.mbox import MboxStore, MboxStoreFactory, decodeLevel, mailboxPath
from tests.storetests import ALICE, RecordingListener, StoreConformanceMixin, message, readFile


class MboxStoreConformanceTests(StoreConformanceMixin, unittest.TestCase):
    """
    L{MboxStore} keeps the store contract, across restarts too.
    """

    persistent = True

    def makeStore(self) -> MboxStore:
        if not hasattr(self, "root"):
            self.root = self.mktemp()
            os.makedirs(self.root)
        return MboxStore(self.root)


class MboxTestCase(unittest.TestCase):
    """
    An mbox store in a fresh directory, and helpers to look at its files.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.store = MboxStore(self.root)
        self.home = os.path.join(self.root, "example.test", "alice")
        self.inboxPath = os.path.join(self.home, "inbox")

    @defer.inlineCallbacks
    def inbox(self, store: Any = None):
        account = yield (store or self.store).getAccount(ALICE, create=True)
        inbox = yield account.getMailbox("INBOX")
        return inbox

    def read(self, path: str = "") -> bytes:
        with open(path or self.inboxPath, "rb") as f:
            return f.read()

    def externalAppend(self, data: bytes, path: str = "") -> None:
        """
        Append C{data} to an mbox file as procmail does: take the dotlock
        (C{O_EXCL}), append, remove the dotlock.
        """
        path = path or self.inboxPath
        fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        try:
            with open(path, "ab") as f:
                f.write(data)
        finally:
            os.unlink(path + ".lock")


class MboxFormatTests(MboxTestCase):
    """
    What the mbox store leaves on disk.
    """

    @defer.inlineCallbacks
    def test_layout(self):
        """
        An account is an inbox file and a mail/ tree; levels are modified
        UTF-7 with '.' encoded, children of a mailbox live in its '.d'
        directory.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        self.assertTrue(os.path.isfile(self.inboxPath))
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            self.assertTrue(os.path.isfile(os.path.join(self.home, "mail", name)))
        yield account.createMailbox("Entw\u00fcrfe/v1.0")
        self.assertTrue(os.path.isfile(os.path.join(self.home, "mail", "Entw&APw-rfe")))
        self.assertTrue(os.path.isfile(os.path.join(self.home, "mail", "Entw&APw-rfe.d", "v1&AC4-0")))
        yield account.createMailbox("INBOX/Sub")
        self.assertTrue(os.path.isfile(os.path.join(self.home, "mail", "INBOX.d", "Sub")))
        names = {e.name for e in (yield account.listMailboxes())}
        self.assertTrue({"Entw\u00fcrfe", "Entw\u00fcrfe/v1.0", "INBOX/Sub"} <= names)
        self.assertEqual(mailboxPath(self.home, "a/b/c"), os.path.join(self.home, "mail", "a.d", "b.d", "c"))
        self.assertEqual(mailboxPath(self.home, "x.lock"), os.path.join(self.home, "mail", "x&AC4-lock"))
        self.assertEqual(decodeLevel("x.lock"), None)
        self.assertEqual(decodeLevel("&bad"), None)
        with open(os.path.join(self.home, "subscriptions"), "rb") as f:
            self.assertIn(b"INBOX\n", f.read())

    @defer.inlineCallbacks
    def test_badAddresses(self):
        """
        No address can name a directory outside the root.
        """
        for address in ["../x@example.test", "x@..", "x@../etc", "a/b@example.test", ".hidden@example.test",
                        "nul\x00@example.test", "noat", "@example.test", "x@"]:
            yield self.assertFailure(self.store.getAccount(address, create=True), NoSuchAccount)
            self.assertFalse((yield self.store.hasAccount(address)))
        self.assertEqual(os.listdir(self.root), [])

    @defer.inlineCallbacks
    def test_tooLongName(self):
        account = yield self.store.getAccount(ALICE, create=True)
        yield self.assertFailure(account.createMailbox("\u00e9" * 200), InvalidMailboxName)

    @defer.inlineCallbacks
    def test_mboxrdQuoting(self):
        """
        Lines matching '>*From ' get one more '>' on disk and lose it when
        read, so bodies holding 'From ', '>From ' and '>>From ' come back
        exactly; other mbox readers see one message each.
        """
        import mailbox

        inbox = yield self.inbox()
        body = (b"From the start\r\n>From quoted once\r\n>>From quoted twice\r\n"
                b"From: not a separator\r\n>>>>From deep\r\nFromage\r\n")
        first = message("quoting", body)
        second = b"From nobody at the very top\r\n\r\nFrom again\r\n"
        a = yield inbox.append(BytesIO(first))
        b = yield inbox.append(BytesIO(second))
        data = self.read()
        self.assertIn(b"\n>From the start\n>>From quoted once\n>>>From quoted twice\nFrom: not a separator\n"
                      b">>>>>From deep\nFromage\n", data)
        self.assertIn(b">From nobody at the very top\n", data)
        self.assertEqual(readFile((yield inbox.openMessage(a))), first)
        self.assertEqual(readFile((yield inbox.openMessage(b))), second)
        self.assertEqual(len(mailbox.mbox(self.inboxPath, create=False)), 2)
        other = yield self.inbox(MboxStore(self.root))
        self.assertEqual(readFile((yield other.openMessage(b))), second)
        self.assertEqual([i.size for i in (yield other.listMessages())], [len(first), len(second)])

    @defer.inlineCallbacks
    def test_reservedHeadersKept(self):
        """
        A message that has headers of the names the store uses for its
        metadata reads back exactly; those headers do not become flags or
        UIDs.
        """
        inbox = yield self.inbox()
        data = (b"Status: RO\r\nX-UID: 99\r\nX-Status: AFD\r\nX-Keywords: evil\r\n"
                b"Content-Length: 3\r\nX-Mailplat: noeol\r\nX-Mailplat-Orig-Status: R\r\n"
                b"x-mailplat-orig-x-uid: 5\r\nSubject: reserved\r\n\r\nStatus: RO in the body\r\n")
        uid = yield inbox.append(BytesIO(data))
        self.assertNotEqual(uid, 99)
        [info] = yield inbox.listMessages()
        self.assertEqual(info.flags, frozenset())
        self.assertEqual(info.size, len(data))
        self.assertEqual(readFile((yield inbox.openMessage(uid))), data)
        self.assertIn(b"\nX-Mailplat-Orig-Status: RO\n", self.read())
        self.assertIn(b"\nX-Mailplat-Orig-X-Mailplat-Orig-Status: R\n", self.read())
        # A rewrite keeps them as they were.
        yield inbox.setFlags([uid], ["\\Seen"], "add")
        self.assertEqual(readFile((yield inbox.openMessage(uid))), data)
        other = yield self.inbox(MboxStore(self.root))
        [again] = yield other.listMessages()
        self.assertEqual((again.uid, again.flags, again.size), (uid, frozenset(["\\Seen"]), len(data)))

    @defer.inlineCallbacks
    def test_noLineEnd(self):
        """
        A message without a final line end is stored with one (the mbox
        needs it) and read back without it; the next message is separate.
        """
        import mailbox

        inbox = yield self.inbox()
        first = b"Subject: cut\r\n\r\nno line end"
        a = yield inbox.append(BytesIO(first))
        b = yield inbox.append(BytesIO(b""))
        c = yield inbox.append(BytesIO(message()))
        self.assertEqual(len(mailbox.mbox(self.inboxPath, create=False)), 3)
        self.assertEqual(readFile((yield inbox.openMessage(a))), first)
        self.assertEqual(readFile((yield inbox.openMessage(b))), b"")
        self.assertEqual(readFile((yield inbox.openMessage(c))), message())
        other = yield self.inbox(MboxStore(self.root))
        self.assertEqual([i.size for i in (yield other.listMessages())], [len(first), 0, len(message())])

    @defer.inlineCallbacks
    def test_muttHeaders(self):
        """
        UIDs and flags are in the headers Dovecot, UW-IMAP and mutt read:
        X-IMAPbase in the first message, X-UID, Status, X-Status,
        X-Keywords; the envelope line carries the internal date.
        """
        import mailbox

        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("one")), ["\\Seen", "$Work"], 1000000000.0)
        b = yield inbox.append(BytesIO(message("two")), ["\\Answered", "\\Flagged", "\\Draft", "\\Deleted"])
        data = self.read()
        self.assertTrue(data.startswith(b"From MAILER-DAEMON Sun Sep  9 01:46:40 2001\nX-IMAPbase: "), data[:80])
        self.assertIn(f"X-IMAPbase: {inbox.uidValidity:010d} ".encode("ascii"), data)
        self.assertRegex(data, f"X-UID: {a}\nStatus: +R\nX-Status: +\nX-Keywords: \\$Work *\n".encode("ascii"))
        self.assertRegex(data, f"X-UID: {b}\nStatus: +\nX-Status: AFTD\nX-Keywords: *\n".encode("ascii"))
        box = mailbox.mbox(self.inboxPath, create=False)
        got = [(m["Subject"], set(m.get_flags())) for m in box]
        self.assertEqual(got, [("one", {"R"}), ("two", {"A", "F", "T", "D"})])
        self.assertEqual([m["X-UID"] for m in box], [str(a), str(b)])
        # Claimed messages are marked old at once (in place).
        before = os.stat(self.inboxPath)
        yield inbox.claimRecent()
        self.assertEqual(os.stat(self.inboxPath).st_ino, before.st_ino)
        box = mailbox.mbox(self.inboxPath, create=False)
        self.assertEqual([set(m.get_flags()) for m in box], [{"R", "O"}, {"O", "A", "F", "T", "D"}])
        yield inbox.setFlags([a], ["\\Flagged"], "add")
        box = mailbox.mbox(self.inboxPath, create=False)
        self.assertEqual([set(m.get_flags()) for m in box], [{"R", "O", "F"}, {"O", "A", "F", "T", "D"}])

    @defer.inlineCallbacks
    def test_flagsChangedInPlace(self):
        """
        A flag change writes the message's reserved headers again where
        they are (the same file, the same size) while they fit; other
        readers (another store, Python's mailbox module as mutt would) see
        the new flags.  Keywords past the padding make the file be written
        again, padded anew, and the next change is in place again.
        """
        import mailbox

        inbox = yield self.inbox()
        uids = []
        for n in range(3):
            uids.append((yield inbox.append(BytesIO(message(f"m{n}")))))
        before = os.stat(self.inboxPath)
        yield inbox.setFlags([uids[1]], ["\\Seen", "\\Flagged", "$Work"], "add")
        after = os.stat(self.inboxPath)
        self.assertEqual((after.st_ino, after.st_size), (before.st_ino, before.st_size))
        box = mailbox.mbox(self.inboxPath, create=False)
        self.assertEqual([set(m.get_flags()) for m in box], [set(), {"R", "F"}, set()])
        self.assertEqual(box[1]["X-Keywords"].split(), ["$Work"])
        other = yield self.inbox(MboxStore(self.root))
        self.assertEqual([i.flags for i in (yield other.listMessages())],
                         [frozenset(), frozenset(["\\Seen", "\\Flagged", "$Work"]), frozenset()])
        # Each message's content reads back as it was appended.
        for n, uid in enumerate(uids):
            self.assertEqual(readFile((yield other.openMessage(uid))), message(f"m{n}"))
        # Taken away again, in place too.
        yield inbox.setFlags([uids[1]], ["\\Flagged", "$Work"], "remove")
        self.assertEqual(os.stat(self.inboxPath).st_ino, before.st_ino)
        self.assertEqual([set(m.get_flags()) for m in mailbox.mbox(self.inboxPath, create=False)], [set(), {"R"}, set()])
        # Too long for the padding: the file is written again.
        long = ["$" + "k" * 20 + str(n) for n in range(3)]
        yield inbox.setFlags([uids[2]], long, "add")
        rewritten = os.stat(self.inboxPath)
        self.assertNotEqual(rewritten.st_ino, before.st_ino)
        yield inbox.setFlags([uids[2]], ["\\Seen"], "add")
        self.assertEqual(os.stat(self.inboxPath).st_ino, rewritten.st_ino)
        self.assertEqual([i.flags for i in (yield self.inbox(MboxStore(self.root)).addCallback(
            lambda box: box.listMessages()))][2], frozenset(long + ["\\Seen"]))

    @defer.inlineCallbacks
    def test_inPlaceSeenByOtherInstance(self):
        """
        Flags another store instance (another process) wrote in place are
        seen even when the file's size and times did not change (a clock
        tick is coarse): its change to the side file is enough.
        """
        self.patch(mboxModule, "_stampOf", lambda st: (st.st_ino, st.st_size, 0, 0))
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message("one")))
        other = yield self.inbox(MboxStore(self.root))
        self.assertEqual([i.flags for i in (yield other.listMessages())], [frozenset()])
        yield inbox.setFlags([uid], ["\\Seen"], "add")
        self.assertEqual([i.flags for i in (yield other.listMessages())], [frozenset(["\\Seen"])])
        [info] = yield other.setFlags([uid], ["\\Flagged"], "add")
        self.assertEqual(info.flags, frozenset(["\\Seen", "\\Flagged"]))
        self.assertEqual([i.flags for i in (yield inbox.listMessages())], [frozenset(["\\Seen", "\\Flagged"])])

    @defer.inlineCallbacks
    def test_unpaddedHeadersRewrittenFirst(self):
        """
        Flags written without padding (by an older version, or Dovecot and
        mutt rewriting the file) are changed by writing the file again,
        padded; the change after that is in place.
        """
        yield self.store.getAccount(ALICE, create=True)
        with open(self.inboxPath, "wb") as f:
            f.write(b"From MAILER-DAEMON Sat Jan  3 01:05:34 2026\nX-IMAPbase: 0000000007 0000000003\n"
                    b"X-UID: 1\nStatus: RO\nSubject: one\n\nbody\n\n"
                    b"From MAILER-DAEMON Sat Jan  3 01:05:35 2026\nX-UID: 2\nX-Status: F\nSubject: two\n\nbody\n\n")
        inbox = yield self.inbox()
        self.assertEqual([(i.uid, i.flags) for i in (yield inbox.listMessages())],
                         [(1, frozenset(["\\Seen"])), (2, frozenset(["\\Flagged"]))])
        first = os.stat(self.inboxPath).st_ino
        yield inbox.setFlags([2], ["\\Answered"], "add")
        second = os.stat(self.inboxPath).st_ino
        self.assertNotEqual(second, first)
        yield inbox.setFlags([2], ["\\Seen"], "add")
        self.assertEqual(os.stat(self.inboxPath).st_ino, second)
        other = yield self.inbox(MboxStore(self.root))
        self.assertEqual([(i.uid, i.flags) for i in (yield other.listMessages())],
                         [(1, frozenset(["\\Seen"])), (2, frozenset(["\\Seen", "\\Flagged", "\\Answered"]))])
        self.assertEqual(readFile((yield other.openMessage(2))), b"Subject: two\r\n\r\nbody\r\n")


class MboxOtherProgramsTests(MboxTestCase):
    """
    Other programs (procmail, mutt, another mailplat) sharing the files.
    """

    @defer.inlineCallbacks
    def test_externalAppend(self):
        """
        A message appended by another program under the dotlock gets the
        next UID, written into the file, and is \\Recent; a listener hears
        of it.
        """
        inbox = yield self.inbox()
        first = yield inbox.append(BytesIO(message()))
        yield inbox.claimRecent()
        listener = RecordingListener()
        inbox.addListener(listener)
        self.externalAppend(b"From procmail@example.test Mon Jan  1 10:00:00 2024\n"
                            b"Subject: delivered\n\n>From the outside\nbody\n\n")
        infos = yield inbox.listMessages()
        self.assertEqual([i.uid for i in infos], [first, first + 1])
        self.assertEqual(len(listener.calls), 1)
        self.assertEqual(infos[1].internalDate, 1704103200.0)
        expected = b"Subject: delivered\r\n\r\nFrom the outside\r\nbody\r\n"
        self.assertEqual(infos[1].size, len(expected))
        self.assertEqual(readFile((yield inbox.openMessage(first + 1))), expected)
        self.assertIn(f"X-UID: {first + 1}\n".encode("ascii"), self.read())
        self.assertEqual((yield inbox.status()).recent, 1)
        self.assertEqual((yield inbox.claimRecent()), [first + 1])
        # Another process sees the same UIDs.
        other = yield self.inbox(MboxStore(self.root))
        self.assertEqual((yield other.listMessages()), (yield inbox.listMessages()))
        self.assertEqual(len(listener.calls), 1)

    @defer.inlineCallbacks
    def test_externalAppendWithoutSeparator(self):
        """
        A message appended by a careless writer after a message without
        its separating empty line, and without a final line end itself, is
        found whole, and ours after it too.
        """
        import mailbox

        inbox = yield self.inbox()
        yield inbox.append(BytesIO(message("ours")))
        with open(self.inboxPath, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            f.truncate()
        self.externalAppend(b"From x Mon Jan  1 10:00:00 2024\nSubject: theirs\n\nno end")
        last = yield inbox.append(BytesIO(message("last")))
        infos = yield inbox.listMessages()
        self.assertEqual(len(infos), 3)
        self.assertEqual(readFile((yield inbox.openMessage(infos[0].uid))), message("ours"))
        self.assertEqual(readFile((yield inbox.openMessage(infos[1].uid))), b"Subject: theirs\r\n\r\nno end")
        self.assertEqual(infos[1].size, len(b"Subject: theirs\r\n\r\nno end"))
        self.assertEqual(readFile((yield inbox.openMessage(last))), message("last"))
        self.assertEqual(len(mailbox.mbox(self.inboxPath, create=False)), 3)

    @defer.inlineCallbacks
    def test_stdlibAppendsWithLocks(self):
        """
        Python's mailbox module, taking the dotlock and the fcntl lock as
        mutt does, appends a message that gets the next UID.
        """
        import mailbox

        inbox = yield self.inbox()
        first = yield inbox.append(BytesIO(message()))
        box = mailbox.mbox(self.inboxPath, create=False)
        box.lock()
        try:
            box.add(b"From stdlib Mon Jan  1 10:00:00 2024\nSubject: stdlib\n\nhello\n")
            box.flush()
        finally:
            box.unlock()
            box.close()
        infos = yield inbox.listMessages()
        self.assertEqual([i.uid for i in infos], [first, first + 1])
        self.assertEqual(readFile((yield inbox.openMessage(first + 1))), b"Subject: stdlib\r\n\r\nhello\r\n")

    @defer.inlineCallbacks
    def test_foreignFlagChangeAndDelete(self):
        """
        Flags changed and a message deleted by another mbox program (the
        standard library's, rewriting the file as mutt does) are seen; UIDs
        stay, the changed message gets a new modseq.
        """
        import mailbox

        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")))
        b = yield inbox.append(BytesIO(message("b")), ["\\Seen"])
        c = yield inbox.append(BytesIO(message("c")))
        before = {i.uid: i for i in (yield inbox.listMessages())}
        box = mailbox.mbox(self.inboxPath, create=False)
        box.lock()
        try:
            keys = box.keys()
            msg = box[keys[0]]
            msg.add_flag("F")
            box[keys[0]] = msg
            box.remove(keys[1])
            box.flush()
        finally:
            box.unlock()
            box.close()
        after = {i.uid: i for i in (yield inbox.listMessages())}
        self.assertEqual(sorted(after), [a, c])
        self.assertEqual(after[a].flags, frozenset(["\\Flagged"]))
        self.assertGreater(after[a].modseq, max(i.modseq for i in before.values()))
        self.assertEqual(after[c].modseq, before[c].modseq)
        self.assertEqual(readFile((yield inbox.openMessage(c))), message("c"))
        yield self.assertFailure(inbox.openMessage(b), NoSuchMessage)
        self.assertGreater((yield inbox.status()).highestModseq, after[a].modseq - 1)

    @defer.inlineCallbacks
    def test_foreignMboxAdopted(self):
        """
        An mbox file made by another program, without any of our headers
        or side file, gets a UIDVALIDITY and UIDs in file order.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        path = os.path.join(self.home, "mail", "Imported")
        with open(path, "wb") as f:
            f.write(b"From a Mon Jan  1 10:00:00 2024\nSubject: 1\nStatus: RO\n\none\n\n"
                    b"From b Tue Jan  2 10:00:00 2024\nSubject: 2\nX-Status: F\n\ntwo\n")
        self.assertIn("Imported", {e.name for e in (yield account.listMailboxes())})
        imported = yield account.getMailbox("Imported")
        infos = yield imported.listMessages()
        self.assertEqual([(i.uid, i.flags) for i in infos], [(1, frozenset(["\\Seen"])), (2, frozenset(["\\Flagged"]))])
        self.assertTrue(self.read(path).startswith(b"From a Mon Jan  1 10:00:00 2024\nX-IMAPbase: "))
        self.assertEqual(readFile((yield imported.openMessage(2))), b"Subject: 2\r\n\r\ntwo\r\n")
        other = yield MboxStore(self.root).getAccount(ALICE)
        again = yield other.getMailbox("Imported")
        self.assertEqual(again.uidValidity, imported.uidValidity)
        self.assertEqual((yield again.listMessages()), infos)

    @defer.inlineCallbacks
    def test_twoProcesses(self):
        """
        Two stores on the same root (as two processes) share UIDs, recent
        claims and the POP3 lock.
        """
        inbox = yield self.inbox()
        otherInbox = yield self.inbox(MboxStore(self.root))
        self.assertEqual(otherInbox.uidValidity, inbox.uidValidity)
        a = yield inbox.append(BytesIO(message("a")))
        b = yield otherInbox.append(BytesIO(message("b")))
        c = yield inbox.append(BytesIO(message("c")))
        self.assertEqual([a, b, c], sorted({a, b, c}))
        self.assertEqual((yield otherInbox.listMessages()), (yield inbox.listMessages()))
        self.assertEqual(readFile((yield inbox.openMessage(b))), message("b"))
        yield otherInbox.setFlags([a], ["\\Seen"], "add")
        [info] = yield inbox.setFlags([a], ["$Later"], "add")
        self.assertEqual(info.flags, frozenset(["\\Seen", "$Later"]))
        self.assertEqual((yield inbox.claimRecent()), [a, b, c])
        self.assertEqual((yield otherInbox.claimRecent()), [])
        self.assertEqual((yield otherInbox.expunge([b], requireDeleted=False)), [b])
        self.assertEqual([i.uid for i in (yield inbox.listMessages())], [a, c])
        self.assertEqual((yield inbox.status()), (yield otherInbox.status()))
        release = yield inbox.lockExclusive()
        yield self.assertFailure(otherInbox.lockExclusive(), MailboxLocked)
        release()
        (yield otherInbox.lockExclusive())()

    @defer.inlineCallbacks
    def test_sideFileLost(self):
        """
        Without its side file a mailbox keeps its UIDVALIDITY and UIDs
        (they are in the mbox); modseqs start again higher.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message()), ["\\Seen"])
        os.unlink(self.inboxPath + ".mailplat-uidlist")
        again = yield self.inbox(MboxStore(self.root))
        self.assertEqual(again.uidValidity, inbox.uidValidity)
        [info] = yield again.listMessages()
        self.assertEqual((info.uid, info.flags), (a, frozenset(["\\Seen"])))
        self.assertGreater((yield again.append(BytesIO(message()))), a)


class MboxSafetyTests(MboxTestCase):
    """
    Failures leave the mailbox whole; damaged files are refused.
    """

    @defer.inlineCallbacks
    def test_rewriteFailsBeforeRename(self):
        """
        A rewrite that fails before its rename leaves the original file
        as it was, and no temporary file; the mailbox still works after.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")))
        b = yield inbox.append(BytesIO(message("b")))
        before = self.read()
        status = yield inbox.status()

        def failingRename(tmp: str, path: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", tmp)

        self.patch(mboxModule, "_replaceFile", failingRename)
        # (A new keyword on the first message lengthens its X-IMAPbase:
        # the change needs a rewrite, not a write in place.)
        failure = yield self.assertFailure(inbox.setFlags([a], ["\\Seen", "$New"], "add"), StoreError)
        self.assertIn("change flags in INBOX", str(failure))
        yield self.assertFailure(inbox.expunge([b], requireDeleted=False), StoreError)
        self.assertEqual(self.read(), before)
        self.assertEqual(sorted(os.listdir(self.home)), ["inbox", "inbox.mailplat-uidlist", "mail",
                                                         "mailplat-specialuse", "subscriptions"])
        self.assertEqual([i.flags for i in (yield inbox.listMessages())], [frozenset(), frozenset()])
        self.assertEqual((yield inbox.status()), status)
        self.patch(mboxModule, "_replaceFile", os.rename)
        [info] = yield inbox.setFlags([a], ["\\Seen"], "add")
        self.assertEqual(info.flags, frozenset(["\\Seen"]))
        self.assertEqual((yield inbox.expunge([b], requireDeleted=False)), [b])

    @defer.inlineCallbacks
    def test_appendFailsHalfway(self):
        """
        An append that fails half-way is cut back off the file.
        """
        inbox = yield self.inbox()
        yield inbox.append(BytesIO(message("kept")))
        before = self.read()
        calls = []
        realWriteAll = mboxModule._writeAll

        def failingWriteAll(fd: int, data: bytes) -> None:
            calls.append(data)
            if len(calls) == 2:
                realWriteAll(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            realWriteAll(fd, data)

        self.patch(mboxModule, "_writeAll", failingWriteAll)
        yield self.assertFailure(inbox.append(BytesIO(message("lost", b"x" * 1000 + b"\r\n"))), StoreError)
        self.assertEqual(self.read(), before)
        self.patch(mboxModule, "_writeAll", realWriteAll)
        self.assertEqual(len((yield inbox.listMessages())), 1)
        uid = yield inbox.append(BytesIO(message("next")))
        self.assertEqual(readFile((yield inbox.openMessage(uid))), message("next"))

    @defer.inlineCallbacks
    def test_corruptRefused(self):
        """
        A file that does not start with a 'From ' line is refused with a
        StoreError naming it, and left untouched.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        path = os.path.join(self.home, "mail", "Sent")
        garbage = b"This is not\nan mbox file\nFrom here on it looks like one\n\n"
        with open(path, "wb") as f:
            f.write(garbage)
        side = self.read(path + ".mailplat-uidlist")
        failure = yield self.assertFailure(account.getMailbox("Sent"), StoreError)
        self.assertIn(path, str(failure))
        self.assertIn("not an mbox file", str(failure))
        self.assertEqual(self.read(path), garbage)
        self.assertEqual(self.read(path + ".mailplat-uidlist"), side)
        # A mailbox already open refuses the same way once damaged.
        inbox = yield account.getMailbox("INBOX")
        yield inbox.append(BytesIO(message()))
        with open(self.inboxPath, "r+b") as f:
            f.write(b"XXXX")
        damaged = self.read()
        yield self.assertFailure(inbox.status(), StoreError)
        yield self.assertFailure(inbox.append(BytesIO(message())), StoreError)
        self.assertEqual(self.read(), damaged)
        self.assertFalse(os.path.exists(self.inboxPath + ".lock"))

    @defer.inlineCallbacks
    def test_unreadableIsStoreError(self):
        """
        An OSError surfaces as a StoreError with a message, not as OSError.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        sent = yield account.getMailbox("Sent")
        path = os.path.join(self.home, "mail", "Sent")
        os.unlink(path)
        os.mkdir(path)
        failure = yield self.assertFailure(sent.append(BytesIO(message())), StoreError)
        self.assertIn("store a message in Sent", str(failure))
        self.assertNotIsInstance(failure, OSError)
        self.assertFalse(os.path.exists(path + ".lock"))


class MboxLockingTests(MboxTestCase):
    """
    Dotlocks and fcntl locks shared with other programs, waited for on the
    reactor's clock.
    """

    def setUp(self) -> None:
        super().setUp()
        self.clock = task.Clock()
        self.store = MboxStore(self.root, self.clock)

    def holdDotlock(self, age: float = 0.0) -> str:
        lock = self.inboxPath + ".lock"
        with open(lock, "wb") as f:
            f.write(b"12345\n")
        if age:
            then = time.time() - age
            os.utime(lock, (then, then))
        return lock

    @defer.inlineCallbacks
    def test_dotlockContention(self):
        """
        While another program holds the dotlock, writes wait (reads of an
        unchanged mailbox do not); they go ahead once it is gone.
        """
        inbox = yield self.inbox()
        first = yield inbox.append(BytesIO(message()))
        lock = self.holdDotlock()
        appended: List[int] = []
        d = inbox.append(BytesIO(message("waited")))
        d.addCallback(appended.append)
        self.clock.advance(mboxModule.LOCK_RETRY)
        self.clock.advance(5)
        self.assertEqual(appended, [])
        with open(lock, "rb") as f:
            self.assertEqual(f.read(), b"12345\n")
        os.unlink(lock)
        self.clock.advance(mboxModule.LOCK_RETRY)
        self.assertEqual(appended, [first + 1])
        self.assertFalse(os.path.exists(lock))
        yield d

    @defer.inlineCallbacks
    def test_deleteAndRenameWaitForTheLocks(self):
        """
        DELETE and RENAME of a mailbox take its dotlock like a write: while
        another program (or mailplat process) holds it, and so may be
        rewriting the file, they wait, so the file cannot come back under
        its old name when that program renames its new copy into place.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        for name in ("Work", "Old"):
            yield account.createMailbox(name)
            box = yield account.getMailbox(name)
            yield box.append(BytesIO(message(name)))
        for name, change, gone, there in (
            ("Work", lambda: account.deleteMailbox("Work"), "Work", None),
            ("Old", lambda: account.renameMailbox("Old", "New"), "Old", "New"),
        ):
            path = os.path.join(self.home, "mail", name)
            lock = path + ".lock"
            with open(lock, "wb") as f:
                f.write(b"12345\n")
            done: List[object] = []
            change().addCallback(done.append)
            self.clock.advance(mboxModule.LOCK_RETRY)
            self.clock.advance(5)
            self.assertEqual(done, [])
            self.assertTrue(os.path.exists(path))
            os.unlink(lock)
            self.clock.advance(mboxModule.LOCK_RETRY)
            self.assertEqual(done, [None])
            self.assertFalse(os.path.exists(os.path.join(self.home, "mail", gone)))
            self.assertFalse(os.path.exists(lock))
            if there is not None:
                self.assertIn(b"Subject: Old", self.read(os.path.join(self.home, "mail", there)))
        names = [entry.name for entry in (yield account.listMailboxes())]
        self.assertIn("New", names)
        self.assertNotIn("Old", names)
        self.assertNotIn("Work", names)

    @defer.inlineCallbacks
    def test_dotlockTimeout(self):
        """
        A dotlock that stays gives up with a StoreError naming it.
        """
        inbox = yield self.inbox()
        lock = self.holdDotlock()
        d = inbox.setFlags([1], ["\\Seen"], "add")
        self.clock.pump([1.0] * int(mboxModule.LOCK_TIMEOUT + 2))
        failure = yield self.assertFailure(d, StoreError)
        self.assertIn(lock, str(failure))
        self.assertTrue(os.path.exists(lock))

    @defer.inlineCallbacks
    def test_staleDotlockBroken(self):
        """
        A dotlock older than DOTLOCK_STALE was left by a crash: it is
        broken at once.
        """
        inbox = yield self.inbox()
        lock = self.holdDotlock(age=mboxModule.DOTLOCK_STALE + 60)
        uid = yield inbox.append(BytesIO(message()))
        self.assertEqual(uid, 1)
        self.assertFalse(os.path.exists(lock))

    @defer.inlineCallbacks
    def test_fcntlContention(self):
        """
        A write waits for another program's fcntl lock on the mbox (an
        open-file-description lock stands in for another process).
        """
        if not hasattr(fcntl, "F_OFD_SETLK"):
            raise unittest.SkipTest("no open file description locks here")
        inbox = yield self.inbox()
        fd = os.open(self.inboxPath, os.O_RDWR)
        self.addCleanup(os.close, fd)
        # struct flock: l_type, l_whence, l_start, l_len, l_pid.
        lock = struct.pack("hhxxxxqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)
        unlock = struct.pack("hhxxxxqqi4x", fcntl.F_UNLCK, 0, 0, 0, 0)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        appended: List[int] = []
        inbox.append(BytesIO(message())).addCallback(appended.append)
        self.clock.advance(1)
        self.assertEqual(appended, [])
        self.assertFalse(os.path.exists(self.inboxPath + ".lock"))
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, unlock)
        self.clock.advance(mboxModule.LOCK_RETRY)
        self.assertEqual(appended, [1])

    @defer.inlineCallbacks
    def test_operationsQueue(self):
        """
        Operations on one mailbox run one at a time, in order, while one
        of them waits for a lock.
        """
        inbox = yield self.inbox()
        lock = self.holdDotlock()
        results: List[Any] = []
        inbox.append(BytesIO(message("1"))).addCallback(results.append)
        inbox.append(BytesIO(message("2"))).addCallback(results.append)
        inbox.listMessages().addCallback(lambda infos: results.append([i.uid for i in infos]))
        self.clock.advance(1)
        self.assertEqual(results, [])
        os.unlink(lock)
        self.clock.advance(mboxModule.LOCK_RETRY)
        self.assertEqual(results, [1, 2, [1, 2]])


class MboxBehaviourTests(MboxTestCase):
    """
    Mailbox objects through deletes and renames.
    """

    @defer.inlineCallbacks
    def test_deletedMailboxObject(self):
        """
        A mailbox object kept after its mailbox was deleted refuses work,
        and its listeners hear of the deletion.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        yield account.createMailbox("Temp")
        temp = yield account.getMailbox("Temp")
        listener = RecordingListener()
        temp.addListener(listener)
        yield account.deleteMailbox("Temp")
        self.assertEqual(len(listener.calls), 1)
        yield self.assertFailure(temp.listMessages(), NoSuchMailbox)
        yield self.assertFailure(temp.append(BytesIO(message())), NoSuchMailbox)
        self.assertEqual(sorted(os.listdir(os.path.join(self.home, "mail"))),
                         sorted([n for n, _ in DEFAULT_MAILBOXES] + [n + ".mailplat-uidlist" for n, _ in DEFAULT_MAILBOXES]))
        yield account.createMailbox("Temp")
        fresh = yield account.getMailbox("Temp")
        self.assertIsNot(fresh, temp)
        self.assertNotEqual(fresh.uidValidity, temp.uidValidity)

    @defer.inlineCallbacks
    def test_fileWorkOffTheReactorThread(self):
        """
        Under the real reactor the file work under the locks (catching up,
        appending, rewriting) runs in the store's own thread pool, while
        listeners hear of every change, a deletion included, on the
        reactor thread.
        """
        import threading

        from twisted.python.threadable import isInIOThread

        self.addCleanup(self.store.close)
        onReactor: List[bool] = []
        threadNames: List[str] = []
        for name in ("_underLocks", "_deleteFiles"):
            cls = mboxModule.MboxMailbox if name == "_underLocks" else mboxModule.MboxAccount
            original = getattr(cls, name)

            def recording(*args: Any, _original: Any = original) -> Any:
                onReactor.append(isInIOThread())
                threadNames.append(threading.current_thread().name)
                return _original(*args)

            self.patch(cls, name, recording)
        heard: List[bool] = []

        class Listener:
            def mailboxChanged(self, mailbox: Any) -> None:
                heard.append(isInIOThread())

        account = yield self.store.getAccount(ALICE, create=True)
        yield account.createMailbox("Temp")
        temp = yield account.getMailbox("Temp")
        temp.addListener(Listener())
        uid = yield temp.append(BytesIO(message()))
        yield temp.setFlags([uid], ["\\Deleted"], "add")
        yield temp.expunge()
        yield account.deleteMailbox("Temp")
        self.assertTrue(onReactor)
        self.assertNotIn(True, onReactor)
        self.assertEqual({n.split(":")[0] for n in threadNames}, {"PoolThread-mbox"}, threadNames)
        self.assertGreaterEqual(len(heard), 3)
        self.assertNotIn(False, heard)

    @defer.inlineCallbacks
    def test_deletedByAnotherProgram(self):
        """
        A mailbox file removed by another program is gone.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        sent = yield account.getMailbox("Sent")
        os.unlink(os.path.join(self.home, "mail", "Sent"))
        yield self.assertFailure(sent.append(BytesIO(message())), NoSuchMailbox)
        yield self.assertFailure(account.getMailbox("Sent"), NoSuchMailbox)

    @defer.inlineCallbacks
    def test_renamedMailboxObject(self):
        """
        A mailbox object follows its mailbox (and its children) through a
        rename.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        yield account.createMailbox("Before/Child")
        child = yield account.getMailbox("Before/Child")
        uid = yield child.append(BytesIO(message()))
        yield account.renameMailbox("Before", "After/Deeper")
        self.assertEqual(child.name, "After/Deeper/Child")
        self.assertEqual(child.path, os.path.join(os.path.abspath(self.home), "mail", "After.d", "Deeper.d", "Child"))
        self.assertIs((yield account.getMailbox("After/Deeper/Child")), child)
        self.assertEqual(readFile((yield child.openMessage(uid))), message())
        self.assertGreater((yield child.append(BytesIO(message()))), uid)
        self.assertFalse(os.path.exists(os.path.join(self.home, "mail", "Before.d")))

    @defer.inlineCallbacks
    def test_renameInboxKeepsValidity(self):
        """
        The mailbox INBOX was renamed to has INBOX's messages and UIDs; the
        file INBOX is left empty, with its UIDVALIDITY.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        inbox = yield account.getMailbox("INBOX")
        uid = yield inbox.append(BytesIO(message()), ["\\Seen"])
        validity = inbox.uidValidity
        yield account.renameMailbox("INBOX", "Old")
        self.assertEqual(self.read(), b"")
        old = yield account.getMailbox("Old")
        self.assertEqual([(i.uid, i.flags) for i in (yield old.listMessages())], [(uid, frozenset(["\\Seen"]))])
        again = yield self.inbox(MboxStore(self.root))
        self.assertEqual(again.uidValidity, validity)
        self.assertEqual((yield again.status()).uidNext, uid + 1)


class MboxFactoryTests(unittest.TestCase):
    """
    The C{mbox} store plugin.
    """

    def test_interface(self) -> None:
        factory = MboxStoreFactory()
        self.assertTrue(verifyObject(IStoreFactory, factory))
        self.assertEqual(factory.storeName, "mbox")

    def test_defaultRoot(self) -> None:
        dataDir = self.mktemp()
        store = MboxStoreFactory().makeStore("", dataDir)
        self.assertEqual(store.root, os.path.abspath(os.path.join(dataDir, "mbox")))
        self.assertTrue(os.path.isdir(store.root))

    def test_givenRoot(self) -> None:
        root = self.mktemp()
        store = MboxStoreFactory().makeStore(root, "/nonexistent")
        self.assertEqual(store.root, os.path.abspath(root))

    def test_unusableRoot(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a directory")
        error = self.assertRaises(ConfigError, MboxStoreFactory().makeStore, path, "/nonexistent")
        self.assertIn(path, str(error))
        self.assertIn("mbox", str(error))
        error = self.assertRaises(ConfigError, MboxStoreFactory().makeStore, os.path.join(path, "sub"), "/x")
        self.assertIn("mbox", str(error))
