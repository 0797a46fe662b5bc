"""
The Maildir store: the conformance suite, and what only a store on disk
has to get right (layout, file names, line ends, other programs touching
the same directories, the plugin factory).
"""

import os
from io import BytesIO

from twisted.internet import defer
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
from mailplat.store import maildir as maildirModule
from mailplat import mutf7
from mailplat.store.maildir import (
    MaildirStore,
    MaildirStoreFactory,
    folderDirectory,
    folderName,
)
from tests.storetests import ALICE, StoreConformanceMixin, message, readFile

_realTime = maildirModule.time.time


class MaildirStoreConformanceTests(StoreConformanceMixin, unittest.TestCase):
    """
    L{MaildirStore} keeps the store contract, across restarts too.
    """

    persistent = True

    def makeStore(self) -> MaildirStore:
        if not hasattr(self, "root"):
            self.root = self.mktemp()
            os.makedirs(self.root)
        return MaildirStore(self.root)


class NameEncodingTests(unittest.TestCase):
    """
    Folder names on disk: modified UTF-7 per level, C{.} encoded.
    """

    def test_mutf7(self) -> None:
        for text, encoded in [
            ("Entw\u00fcrfe", "Entw&APw-rfe"),
            ("a&b", "a&-b"),
            ("\u53f0\u5317", "&U,BTFw-"),
            ("plain", "plain"),
        ]:
            self.assertEqual(mutf7.encode(text, alsoEncode=".").decode("ascii"), encoded)
            self.assertEqual(mutf7.decode(encoded, alsoEncoded="."), text)

    def test_badMUTF7(self) -> None:
        for bad in ["&", "&U,BTFw", "&!!-", "\u00e9"]:
            self.assertRaises(ValueError, mutf7.decode, bad, ".")

    def test_folderDirectory(self) -> None:
        self.assertEqual(folderDirectory("a/b"), ".a.b")
        self.assertEqual(folderDirectory("a.b"), ".a&AC4-b")
        self.assertEqual(folderDirectory("Entw\u00fcrfe/x"), ".Entw&APw-rfe.x")
        for name in ["a/b", "a.b", "Entw\u00fcrfe/x", "..x/y.", "a & b/c"]:
            self.assertEqual(folderName(folderDirectory(name)), name)

    def test_foreignDirectories(self) -> None:
        self.assertIsNone(folderName("."))
        self.assertIsNone(folderName(".."))
        self.assertIsNone(folderName(".a..b"))
        self.assertIsNone(folderName(".&bad"))
        self.assertIsNone(folderName(".INBOX"))
        self.assertEqual(folderName(".INBOX.x"), "INBOX/x")
        self.assertEqual(folderName(".inbox.x"), "INBOX/x")


class LineEndTests(unittest.SynchronousTestCase):
    """
    The line-end conversions of message files, fed in chunks cut
    anywhere (a CR at a chunk's end waits for the next).
    """

    def convert(self, converter, parts):
        return b"".join(converter.feed(part) for part in parts) + converter.flush()

    def cuts(self, data, rng):
        points = sorted(rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(0, 4)))
        return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]

    def test_chunked(self):
        """
        To disk every CR LF becomes LF; to the wire every LF that has no CR
        before it becomes CR LF (a file written with CR LF comes out as it
        is); a bare CR stays.  Checked on random text of CR, LF, dots and
        letters, cut at random.
        """
        import random

        rng = random.Random(1)
        for _ in range(2000):
            data = bytes(rng.choice(b"ab\r\n.") for _ in range(rng.randrange(0, 40)))
            parts = self.cuts(data, rng)
            disk = self.convert(maildirModule._ToDisk(), parts)
            self.assertEqual(disk, data.replace(b"\r\n", b"\n"), parts)
            wire = self.convert(maildirModule._ToWire(), parts)
            lf = data.replace(b"\r\n", b"\n")
            self.assertEqual(wire, lf.replace(b"\n", b"\r\n"), parts)

    def test_noCR(self):
        """
        Data without a CR goes to disk as it is, and to the wire with a CR
        before each LF.
        """
        data = b"Subject: x\n\nline\n.dot\n" * 3
        self.assertEqual(self.convert(maildirModule._ToDisk(), [data[:7], data[7:]]), data)
        self.assertEqual(self.convert(maildirModule._ToWire(), [data]), data.replace(b"\n", b"\r\n"))


class MaildirTestCase(unittest.TestCase):
    """
    A Maildir store in a fresh directory, and helpers to look at its files.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.store = MaildirStore(self.root)
        self.addCleanup(lambda: self.store.close())
        self.maildir = os.path.join(self.root, "example.test", "alice", "Maildir")

    @defer.inlineCallbacks
    def inbox(self):
        account = yield self.store.getAccount(ALICE, create=True)
        inbox = yield account.getMailbox("INBOX")
        return inbox

    def files(self, sub: str, path: str = "") -> list:
        return sorted(os.listdir(os.path.join(path or self.maildir, sub)))


class MaildirLayoutTests(MaildirTestCase):
    """
    What the Maildir store leaves on disk, and what it makes of files other
    programs put there.
    """

    @defer.inlineCallbacks
    def test_layout(self):
        """
        An account is a Maildir++ tree with the default folders.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(self.maildir, sub)))
        for folder in (".Sent", ".Drafts", ".Trash", ".Junk", ".Archive"):
            self.assertTrue(os.path.isdir(os.path.join(self.maildir, folder, "cur")))
            self.assertTrue(os.path.exists(os.path.join(self.maildir, folder, "maildirfolder")))
        yield account.createMailbox("Entw\u00fcrfe/v1.0")
        self.assertTrue(os.path.isdir(os.path.join(self.maildir, ".Entw&APw-rfe.v1&AC4-0", "cur")))
        names = [e.name for e in (yield account.listMailboxes())]
        self.assertIn("Entw\u00fcrfe/v1.0", names)
        with open(os.path.join(self.maildir, "subscriptions"), "rb") as f:
            self.assertIn(b"INBOX\n", f.read())

    @defer.inlineCallbacks
    def test_badAddresses(self):
        """
        No address can name a directory outside the root.
        """
        for address in ["../x@example.test", "x@..", "x@../etc", "a/b@example.test", "x@a/b",
                        ".hidden@example.test", "x@.example", "nul\x00@example.test", "noat", "@example.test", "x@"]:
            yield self.assertFailure(self.store.getAccount(address, create=True), NoSuchAccount)
            self.assertFalse((yield self.store.hasAccount(address)))
            yield self.assertFailure(self.store.deleteAccount(address), NoSuchAccount)
        self.assertEqual(os.listdir(self.root), [])

    @defer.inlineCallbacks
    def test_fileNames(self):
        """
        Messages are stored with LF line ends under Maildir names carrying
        the disk and wire sizes and the flags; keywords are letters mapped
        by dovecot-keywords.
        """
        inbox = yield self.inbox()
        data = message(body=b"line one\r\nline two\r\n")
        yield inbox.append(BytesIO(data))
        [name] = self.files("new")
        diskSize = len(data.replace(b"\r\n", b"\n"))
        self.assertIn(f",S={diskSize},W={len(data)}", name)
        self.assertNotIn(":", name)
        with open(os.path.join(self.maildir, "new", name), "rb") as f:
            self.assertEqual(f.read(), data.replace(b"\r\n", b"\n"))
        uid = yield inbox.append(BytesIO(data), ["\\Seen", "\\Answered", "$Work", "\\Flagged"])
        [flagged] = self.files("cur")
        self.assertTrue(flagged.endswith(":2,FRSa"), flagged)
        with open(os.path.join(self.maildir, "dovecot-keywords")) as f:
            self.assertEqual(f.read(), "0 $Work\n")
        yield inbox.setFlags([uid], ["\\Deleted", "Later"], "add")
        [flagged] = self.files("cur")
        self.assertTrue(flagged.endswith(":2,FRSTab"), flagged)
        self.assertEqual(self.files("tmp"), [])

    @defer.inlineCallbacks
    def test_listingsShareInfos(self):
        """
        Two listings of an unchanged mailbox hand out the same
        L{MessageInfo} objects (every selected IMAP session keeps one, so
        10,000 idle sessions must not each hold their own); a message whose
        flags change, or whose keyword letters get renamed by another
        program, gets a new one.
        """
        inbox = yield self.inbox()
        first = yield inbox.append(BytesIO(message()), ["$Work"])
        second = yield inbox.append(BytesIO(message()))
        a = yield inbox.listMessages()
        b = yield inbox.listMessages()
        self.assertEqual([x is y for x, y in zip(a, b)], [True, True])
        yield inbox.setFlags([second], ["\\Seen"], "add")
        c = yield inbox.listMessages()
        self.assertIs(c[0], a[0])
        self.assertIsNot(c[1], a[1])
        self.assertEqual(c[1].flags, frozenset(["\\Seen"]))
        # Another program renames keyword "a" in dovecot-keywords.
        path = os.path.join(self.maildir, "dovecot-keywords")
        with open(path, "w") as f:
            f.write("0 $Personal\n")
        stamp = os.stat(path)
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 5_000_000_000))
        d = yield inbox.listMessages()
        self.assertEqual(d[0].uid, first)
        self.assertEqual(d[0].flags, frozenset(["$Personal"]))

    @defer.inlineCallbacks
    def test_claimMovesToCur(self):
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message()))
        self.assertEqual((yield inbox.claimRecent()), [uid])
        self.assertEqual(self.files("new"), [])
        [name] = self.files("cur")
        self.assertTrue(name.endswith(":2,"))

    @defer.inlineCallbacks
    def test_foreignDelivery(self):
        """
        Files put in new/ by another program get the next UIDs in name
        order; one with CRLF comes out unchanged; sizes are computed when
        the name does not carry W=.
        """
        inbox = yield self.inbox()
        first = yield inbox.append(BytesIO(message()))
        crlf = b"Subject: crlf\r\n\r\nbody\r\n"
        lf = b"Subject: lf\n\nbody\n"
        for name, data in [("2000.foreign.b", lf), ("1000.foreign.a", crlf)]:
            with open(os.path.join(self.maildir, "tmp", name), "wb") as f:
                f.write(data)
            os.rename(os.path.join(self.maildir, "tmp", name), os.path.join(self.maildir, "new", name))
        infos = yield inbox.listMessages()
        self.assertEqual([i.uid for i in infos], [first, first + 1, first + 2])
        self.assertEqual(infos[1].size, len(crlf))
        self.assertEqual(readFile((yield inbox.openMessage(first + 1))), crlf)
        self.assertEqual(infos[2].size, len(b"Subject: lf\r\n\r\nbody\r\n"))
        self.assertEqual(readFile((yield inbox.openMessage(first + 2))), b"Subject: lf\r\n\r\nbody\r\n")
        self.assertEqual((yield inbox.status()).recent, 3)

    @defer.inlineCallbacks
    def test_foreignFlagChangeAndDelete(self):
        """
        A rename by mutt (flags) is seen with a new modseq; a file removed
        by another program is gone.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")), ["\\Flagged"])
        b = yield inbox.append(BytesIO(message("b")), ["\\Flagged"])
        before = {i.uid: i for i in (yield inbox.listMessages())}
        names = self.files("cur")
        os.rename(os.path.join(self.maildir, "cur", names[0]),
                  os.path.join(self.maildir, "cur", names[0].replace(":2,F", ":2,FS")))
        os.unlink(os.path.join(self.maildir, "cur", names[1]))
        after = {i.uid: i for i in (yield inbox.listMessages())}
        self.assertEqual(list(after), [a])
        self.assertEqual(after[a].flags, frozenset(["\\Flagged", "\\Seen"]))
        self.assertGreater(after[a].modseq, before[b].modseq)
        yield self.assertFailure(inbox.openMessage(b), NoSuchMessage)
        self.assertEqual(readFile((yield inbox.openMessage(a))), message("a"))

    @defer.inlineCallbacks
    def test_renamedUnderneath(self):
        """
        A message renamed by another program after the last listing still
        opens.
        """
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message()))
        [name] = self.files("new")
        os.rename(os.path.join(self.maildir, "new", name), os.path.join(self.maildir, "cur", name + ":2,S"))
        self.assertEqual(readFile((yield inbox.openMessage(uid))), message())

    @defer.inlineCallbacks
    def test_twoProcesses(self):
        """
        Two stores on the same root (as two processes) share UIDs, recent
        claims and the POP3 lock.
        """
        inbox = yield self.inbox()
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        account = yield other.getAccount(ALICE)
        otherInbox = yield account.getMailbox("INBOX")
        self.assertEqual(otherInbox.uidValidity, inbox.uidValidity)
        a = yield inbox.append(BytesIO(message("a")))
        b = yield otherInbox.append(BytesIO(message("b")))
        c = yield inbox.append(BytesIO(message("c")))
        self.assertEqual(len({a, b, c}), 3)
        self.assertEqual([i.uid for i in (yield inbox.listMessages())], sorted([a, b, c]))
        self.assertEqual([i.uid for i in (yield otherInbox.listMessages())], sorted([a, b, c]))
        self.assertEqual(readFile((yield inbox.openMessage(b))), message("b"))
        claimed = yield inbox.claimRecent()
        self.assertEqual(claimed, sorted([a, b, c]))
        self.assertEqual((yield otherInbox.claimRecent()), [])
        release = yield inbox.lockExclusive()
        yield self.assertFailure(otherInbox.lockExclusive(), MailboxLocked)
        release()
        (yield otherInbox.lockExclusive())()

    @defer.inlineCallbacks
    def test_deleteAccountRemovesFiles(self):
        yield self.inbox()
        yield self.store.deleteAccount(ALICE)
        self.assertFalse(os.path.exists(os.path.join(self.root, "example.test")))

    @defer.inlineCallbacks
    def test_tooLongName(self):
        account = yield self.store.getAccount(ALICE, create=True)
        yield self.assertFailure(account.createMailbox("\u00e9" * 200), InvalidMailboxName)

    @defer.inlineCallbacks
    def test_damagedUidlist(self):
        """
        A damaged uidlist is started again with a new UIDVALIDITY; every
        message is still there.
        """
        inbox = yield self.inbox()
        yield inbox.append(BytesIO(message()))
        before = inbox.uidValidity
        with open(os.path.join(self.maildir, "mailplat-uidlist"), "w") as f:
            f.write("garbage\n")
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        account = yield other.getAccount(ALICE)
        again = yield account.getMailbox("INBOX")
        self.assertNotEqual(again.uidValidity, before)
        [info] = yield again.listMessages()
        self.assertEqual(readFile((yield again.openMessage(info.uid))), message())
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_renameRace(self):
        """
        Flags are changed and messages expunged even when another program
        renamed the file since the last listing.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")))
        b = yield inbox.append(BytesIO(message("b")))
        # Make the renames invisible to the directory mtime check, as when
        # they fall in the same clock tick as the last listing.
        self.patch(maildirModule, "_MTIME_SLACK", -1.0)
        yield inbox.listMessages()
        stamps = {sub: os.stat(os.path.join(self.maildir, sub)) for sub in ("new", "cur")}
        for name in self.files("new"):
            os.rename(os.path.join(self.maildir, "new", name), os.path.join(self.maildir, "cur", name + ":2,S"))
        for sub, st in stamps.items():
            os.utime(os.path.join(self.maildir, sub), ns=(st.st_atime_ns, st.st_mtime_ns))
        infos = yield inbox.setFlags([a], ["\\Flagged"], "add")
        self.assertEqual(infos[0].flags, frozenset(["\\Seen", "\\Flagged"]))
        self.assertEqual((yield inbox.expunge([b], requireDeleted=False)), [b])
        self.assertEqual(len(self.files("cur")), 1)
        self.assertEqual([i.uid for i in (yield inbox.listMessages())], [a])

    @defer.inlineCallbacks
    def test_unreadableIsStoreError(self):
        """
        An OSError surfaces as a StoreError with a message, not as OSError.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        os.rename(os.path.join(self.maildir, ".Sent", "tmp"), os.path.join(self.maildir, ".Sent", "gone"))
        sent = yield account.getMailbox("Sent")
        failure = yield self.assertFailure(sent.append(BytesIO(message())), StoreError)
        self.assertIn("store a message in Sent", str(failure))


class MaildirBehaviourTests(MaildirTestCase):
    """
    Mailbox objects, keywords, subscriptions and other programs' Maildir
    code (the standard library's C{mailbox.Maildir} stands in for mutt).
    """

    @defer.inlineCallbacks
    def test_stdlibReadsOurs(self):
        """
        Python's mailbox module reads our messages, flags and folders.
        """
        import mailbox

        account = yield self.store.getAccount(ALICE, create=True)
        yield account.createMailbox("Work/v1.0")
        inbox = yield account.getMailbox("INBOX")
        yield inbox.append(BytesIO(message("plain")))
        yield inbox.append(BytesIO(message("flagged")), ["\\Seen", "\\Flagged"])
        box = mailbox.Maildir(self.maildir, create=False)
        got = sorted((m["Subject"], m.get_subdir(), m.get_flags()) for m in box)
        self.assertEqual(got, [("flagged", "cur", "FS"), ("plain", "new", "")])
        self.assertIn("Work.v1&AC4-0", box.list_folders())
        for key in box.keys():
            self.assertNotIn(b"\r", box.get_bytes(key))

    @defer.inlineCallbacks
    def test_stdlibDelivers(self):
        """
        A message added by Python's mailbox module gets a UID; a flag it
        sets is seen.
        """
        import mailbox

        inbox = yield self.inbox()
        box = mailbox.Maildir(self.maildir, create=False)
        key = box.add(b"Subject: from stdlib\n\nhello\n")
        [info] = yield inbox.listMessages()
        self.assertEqual(readFile((yield inbox.openMessage(info.uid))), b"Subject: from stdlib\r\n\r\nhello\r\n")
        msg = box.get_message(key)
        msg.set_subdir("cur")
        msg.set_flags("RS")
        box[key] = msg
        [after] = yield inbox.listMessages()
        self.assertEqual(after.uid, info.uid)
        self.assertEqual(after.flags, frozenset(["\\Seen", "\\Answered"]))

    @defer.inlineCallbacks
    def test_readMessageReadsOnce(self):
        """
        readMessage reads a file whose name gives its size on disk (C{S=})
        with one read; a file named without it, or longer than its name
        says, is still read to its end.
        """
        from mailplat.store import maildir

        inbox = yield self.inbox()
        data = b"Subject: sized\r\n\r\nhello\r\n"
        uid = yield inbox.append(BytesIO(data))
        reads = []
        realRead = os.read
        self.patch(maildir.os, "read", lambda fd, n: reads.append(n) or realRead(fd, n))
        self.assertEqual(inbox.readMessage(uid, 65536), data)
        self.assertEqual(len(reads), 1)
        # Another program's files: no S=, and an S= that is too small.
        with open(os.path.join(self.maildir, "new", "1700000000.foreign.host"), "wb") as f:
            f.write(b"Subject: foreign\n\nno size in the name\n")
        with open(os.path.join(self.maildir, "new", "1700000001.liar.host,S=5"), "wb") as f:
            f.write(b"Subject: liar\n\nlonger than five\n")
        infos = yield inbox.listMessages()
        del reads[:]
        self.assertEqual(inbox.readMessage(infos[1].uid, 65536), b"Subject: foreign\r\n\r\nno size in the name\r\n")
        self.assertEqual(len(reads), 2)
        self.assertEqual(inbox.readMessage(infos[2].uid, 65536), b"Subject: liar\r\n\r\nlonger than five\r\n")

    @defer.inlineCallbacks
    def test_hostNameReadOnce(self):
        """
        The host name in the unique names of new files is read once per
        process, not once per message; its C{/} and C{:} are escaped.
        """
        from mailplat.store import maildir

        self.patch(maildir, "_hostnameCache", [])
        asked = []
        self.patch(maildir.socket, "gethostname", lambda: asked.append(1) or "mx/1:a")
        inbox = yield self.inbox()
        for n in range(3):
            yield inbox.append(BytesIO(b"Subject: %d\r\n\r\nbody\r\n" % n))
        self.assertEqual(len(asked), 1)
        names = os.listdir(os.path.join(self.maildir, "new"))
        self.assertEqual(len(names), 3)
        for name in names:
            self.assertIn(".mx\\0571\\072a,", name)

    @defer.inlineCallbacks
    def test_externalChangeNotifies(self):
        """
        A listener hears of a message another program delivered once the
        mailbox is looked at again.
        """
        from tests.storetests import RecordingListener

        inbox = yield self.inbox()
        listener = RecordingListener()
        inbox.addListener(listener)
        with open(os.path.join(self.maildir, "new", "123.other.host"), "wb") as f:
            f.write(b"Subject: x\n\n")
        yield inbox.status()
        self.assertEqual(len(listener.calls), 1)
        yield inbox.listMessages()
        self.assertEqual(len(listener.calls), 1)

    @defer.inlineCallbacks
    def test_keywords(self):
        """
        At most 26 keywords fit a maildir; keywords with spaces or
        control characters are refused; foreign letters are kept.
        """
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message()))
        yield inbox.setFlags([uid], [f"k{i}" for i in range(26)], "set")
        yield self.assertFailure(inbox.setFlags([uid], ["one-too-many"], "add"), StoreError)
        other = yield inbox.append(BytesIO(message()))
        yield self.assertFailure(inbox.setFlags([other], ["bad keyword"], "add"), StoreError)
        [name] = self.files("new")
        os.rename(os.path.join(self.maildir, "new", name), os.path.join(self.maildir, "cur", name + ":2,P"))
        infos = yield inbox.setFlags([other], ["\\Seen"], "add")
        self.assertEqual(infos[0].flags, frozenset(["\\Seen"]))
        self.assertTrue(any(n.endswith(":2,PS") for n in self.files("cur")))

    @defer.inlineCallbacks
    def test_deletedMailboxObject(self):
        """
        A mailbox object kept after its mailbox was deleted refuses work,
        and its listeners hear of the deletion.
        """
        from tests.storetests import RecordingListener

        account = yield self.store.getAccount(ALICE, create=True)
        yield account.createMailbox("Temp")
        temp = yield account.getMailbox("Temp")
        listener = RecordingListener()
        temp.addListener(listener)
        yield account.deleteMailbox("Temp")
        self.assertEqual(len(listener.calls), 1)
        yield self.assertFailure(temp.listMessages(), NoSuchMailbox)
        yield self.assertFailure(temp.append(BytesIO(message())), NoSuchMailbox)
        yield account.createMailbox("Temp")
        fresh = yield account.getMailbox("Temp")
        self.assertIsNot(fresh, temp)
        self.assertNotEqual(fresh.uidValidity, temp.uidValidity)

    @defer.inlineCallbacks
    def test_renamedMailboxObject(self):
        """
        A mailbox object follows its mailbox through a rename.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        yield account.createMailbox("Before/Child")
        child = yield account.getMailbox("Before/Child")
        uid = yield child.append(BytesIO(message()))
        yield account.renameMailbox("Before", "After")
        self.assertEqual(child.name, "After/Child")
        self.assertIs((yield account.getMailbox("After/Child")), child)
        self.assertEqual(readFile((yield child.openMessage(uid))), message())
        self.assertGreater((yield child.append(BytesIO(message()))), uid)

    @defer.inlineCallbacks
    def test_subscriptionFiles(self):
        """
        Subscriptions are kept in Dovecot's format; its version 1 is read.
        """
        account = yield self.store.getAccount(ALICE, create=True)
        yield account.subscribe("Entw\u00fcrfe/a b")
        with open(os.path.join(self.maildir, "subscriptions"), "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"V\t2\n\n"))
        self.assertIn("Entw\u00fcrfe\ta b\n".encode("utf-8"), data)
        self.assertIn("Entw\u00fcrfe/a b", (yield account.listSubscriptions()))
        with open(os.path.join(self.maildir, "subscriptions"), "wb") as f:
            f.write(b"INBOX\nEntw&APw-rfe\nPlain/Name\n")
        self.assertEqual((yield account.listSubscriptions()), ["Entw\u00fcrfe", "INBOX", "Plain/Name"])

    @defer.inlineCallbacks
    def test_uidlistLog(self):
        """
        Changes are appended to the uidlist, which another store reads
        back; it is written whole again once the appended lines outnumber
        the messages.
        """
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message()))
        gone = yield inbox.append(BytesIO(message()))
        yield inbox.setFlags([uid], ["\\Seen"], "add")
        yield inbox.expunge([gone], requireDeleted=False)
        yield inbox.claimRecent()
        path = os.path.join(self.maildir, "mailplat-uidlist")
        with open(path) as f:
            header = f.readline().split()
        self.assertEqual(header[0], "1")
        self.assertIn(f"V{inbox.uidValidity}", header)
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        account = yield other.getAccount(ALICE)
        again = yield account.getMailbox("INBOX")
        self.assertEqual((yield again.listMessages()), (yield inbox.listMessages()))
        self.assertEqual((yield again.status()), (yield inbox.status()))
        for i in range(600):
            yield inbox.setFlags([uid], ["\\Flagged"], "add" if i % 2 else "remove")
        with open(path) as f:
            self.assertLess(len(f.readlines()), 1100)

    @defer.inlineCallbacks
    def test_tornUidlist(self):
        """
        A uidlist whose last line was cut short by a crash is read without
        that line and written whole again.
        """
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message()))
        path = os.path.join(self.maildir, "mailplat-uidlist")
        with open(path, "a") as f:
            f.write("99 9")
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        account = yield other.getAccount(ALICE)
        again = yield account.getMailbox("INBOX")
        self.assertEqual([i.uid for i in (yield again.listMessages())], [uid])
        self.assertGreater((yield again.append(BytesIO(message()))), uid)
        with open(path) as f:
            self.assertTrue(f.read().endswith("\n"))


class GroupCommitTests(MaildirTestCase):
    """
    Concurrent appends share their commits, and none is acknowledged before
    its message is durable.
    """

    @defer.inlineCallbacks
    def test_concurrentAppendsShareCommits(self):
        """
        Twenty appends started together get distinct UIDs in order of
        commit, in fewer uidlist appends than messages; when an append's
        Deferred fires, its file is in C{new/} and its uidlist line on disk.
        """
        inbox = yield self.inbox()
        commits = []
        original = inbox._logChanges

        def counting(lines):
            commits.append(len(lines))
            return original(lines)

        self.patch(inbox, "_logChanges", counting)
        path = os.path.join(self.maildir, "mailplat-uidlist")
        seen = []

        def check(uid):
            with open(path) as f:
                self.assertIn(str(uid), [line.split()[0] for line in f.read().splitlines()[1:]])
            seen.append(uid)
            return uid

        uids = yield defer.gatherResults(
            [inbox.append(BytesIO(message(str(i)))).addCallback(check) for i in range(20)]
        )
        self.assertEqual(len(set(uids)), 20)
        self.assertEqual(sorted(seen), sorted(uids))
        self.assertEqual(sum(commits), 20)
        self.assertLess(len(commits), 20)
        self.assertEqual(len(os.listdir(os.path.join(self.maildir, "new"))), 20)
        self.assertEqual(os.listdir(os.path.join(self.maildir, "tmp")), [])
        for i, uid in enumerate(uids):
            self.assertEqual(readFile((yield inbox.openMessage(uid))), message(str(i)))

    @defer.inlineCallbacks
    def test_perFileFsyncWithoutSyncfs(self):
        """
        Without C{syncfs}, each file is fsynced in the pool and each
        directory once per batch; the messages are all there.
        """
        self.patch(maildirModule, "SYNCFS", False)
        inbox = yield self.inbox()
        uids = yield defer.gatherResults([inbox.append(BytesIO(message(str(i))), ["\\Seen"]) for i in range(5)])
        self.assertEqual(len(set(uids)), 5)
        self.assertEqual(len(os.listdir(os.path.join(self.maildir, "cur"))), 5)

    @defer.inlineCallbacks
    def test_failedCommitAcknowledgesNothing(self):
        """
        When the batch's shared commit fails, every append of the batch
        fails and no temporary file stays behind.
        """
        inbox = yield self.inbox()

        def broken(lines):
            raise OSError(5, "Input/output error", "mailplat-uidlist")

        self.patch(inbox, "_logChanges", broken)
        results = yield defer.DeferredList(
            [inbox.append(BytesIO(message(str(i)))) for i in range(3)], consumeErrors=True
        )
        for ok, failure in results:
            self.assertFalse(ok)
            failure.trap(StoreError)
        self.assertEqual(os.listdir(os.path.join(self.maildir, "tmp")), [])

    @defer.inlineCallbacks
    def test_closeWaitsForAppends(self):
        """
        L{MaildirStore.close} fires after the appends under way committed,
        and stops the pool.
        """
        inbox = yield self.inbox()
        d = inbox.append(BytesIO(message()))
        yield self.store.close()
        self.assertIsNone(self.store._threads._pool)
        uid = yield d
        self.assertEqual(uid, 1)

    @defer.inlineCallbacks
    def test_noPool(self):
        """
        With C{poolSize=0} an append is committed alone on the calling
        thread, already fired.
        """
        store = MaildirStore(self.root, poolSize=0)
        self.addCleanup(store.close)
        account = yield store.getAccount(ALICE, create=True)
        inbox = yield account.getMailbox("INBOX")
        d = inbox.append(BytesIO(message()))
        self.assertEqual(self.successResultOf(d), 1)


class ListingTests(MaildirTestCase):
    """
    What the store reads again, and when: records appended by another
    process, and the directories after a change of its own.
    """

    @defer.inlineCallbacks
    def test_tailOfUidlist(self):
        """
        Records another process appended are read without reading the
        whole uidlist again.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")))
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        otherInbox = yield (yield other.getAccount(ALICE)).getMailbox("INBOX")
        b = yield otherInbox.append(BytesIO(message("b")))
        yield otherInbox.setFlags([a], ["\\Flagged"], "add")
        whole = []
        self.patch(inbox, "_readUidlist", lambda: whole.append(1))
        infos = yield inbox.listMessages()
        self.assertEqual([(i.uid, "\\Flagged" in i.flags) for i in infos], [(a, True), (b, False)])
        self.assertEqual(whole, [])
        self.assertEqual(readFile((yield inbox.openMessage(b))), message("b"))
        c = yield inbox.append(BytesIO(message("c")))
        self.assertEqual([i.uid for i in (yield otherInbox.listMessages())], [a, b, c])

    def countListings(self) -> list:
        """
        Count from now on the listings of the INBOX's C{new/} and C{cur/}
        (one item per directory listed).
        """
        listed: list = []
        scandir = os.scandir
        dirs = {os.path.abspath(os.path.join(self.maildir, sub)) for sub in ("new", "cur")}

        def counting(path):  # type: ignore[no-untyped-def]
            if os.path.abspath(path) in dirs:
                listed.append(path)
            return scandir(path)

        self.patch(os, "scandir", counting)
        return listed

    def setUp(self) -> None:
        """
        Stop the store's clock (as the directories' mtimes see it): no
        recheck comes due however slowly a test runs, until L{later}.
        """
        super().setUp()
        self.now = _realTime()
        test = self

        class Clock:
            @staticmethod
            def time() -> float:
                return test.now

        self.patch(maildirModule, "time", Clock)

    def later(self, seconds: float) -> None:
        """
        Set the store's clock C{seconds} ahead of the real time.
        """
        self.now = _realTime() + seconds

    def sameTick(self, stamps: tuple) -> None:
        """
        Give C{new/} and C{cur/} back the mtimes C{stamps}, as when another
        program's change falls in the clock tick of the last one.
        """
        for sub, stamp in zip(("new", "cur"), stamps):
            os.utime(os.path.join(self.maildir, sub), ns=(stamp, stamp))

    @defer.inlineCallbacks
    def rechecked(self, mailbox):
        """
        List C{mailbox} once its directories are due for a recheck: the
        listing that finds it due answers at once, and the recheck is made
        in the store's pool; the listing after it is returned.
        """
        yield mailbox.listMessages()
        yield mailbox._drained()
        infos = yield mailbox.listMessages()
        return infos

    def stamps(self) -> tuple:
        return tuple(os.stat(os.path.join(self.maildir, sub)).st_mtime_ns for sub in ("new", "cur"))

    def dropForeign(self, name: str, sub: str = "new") -> None:
        """
        Put a message file in C{sub} as another program would, in a clock
        tick of its own (the directory's mtime moves on even where the
        clock is coarse).
        """
        path = os.path.join(self.maildir, sub)
        before = os.stat(path).st_mtime_ns
        with open(os.path.join(path, name), "wb") as f:
            f.write(message("foreign").replace(b"\r\n", b"\n"))
        if os.stat(path).st_mtime_ns == before:
            os.utime(path, ns=(before + 1_000_000, before + 1_000_000))

    @defer.inlineCallbacks
    def test_ownChangesNotListed(self):
        """
        After its own changes (appends, flags, expunge, a claim) the store
        does not list the directories again; it lists them once after the
        slack following the last change, then not until they change.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")))
        yield inbox.listMessages()
        listed = self.countListings()
        b = yield inbox.append(BytesIO(message("b")))
        yield inbox.setFlags([a], ["\\Seen"], "add")
        yield inbox.claimRecent()
        yield inbox.expunge([b], requireDeleted=False)
        c = yield inbox.append(BytesIO(message("c")), ["\\Flagged"])
        infos = yield inbox.listMessages()
        self.assertEqual([(i.uid, i.flags) for i in infos],
                         [(a, frozenset(["\\Seen"])), (c, frozenset(["\\Flagged"]))])
        yield inbox.status()
        self.assertEqual(listed, [])
        self.later(60)
        yield self.rechecked(inbox)
        self.assertEqual(len(listed), 2)
        yield inbox.listMessages()
        yield inbox.status()
        self.assertEqual(len(listed), 2)

    @defer.inlineCallbacks
    def test_ownChangeThenForeignSameTick(self):
        """
        A file another program renames or drops in the clock tick of the
        store's own change (an append, then a flag change), so that the
        mtimes do not show it, is found once the slack has passed; one in
        another tick at once.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")))
        yield inbox.listMessages()
        b = yield inbox.append(BytesIO(message("b")))
        stamps = self.stamps()
        name = inbox._entries[a].filename
        os.rename(os.path.join(self.maildir, "new", name), os.path.join(self.maildir, "cur", name + ":2,S"))
        self.sameTick(stamps)
        self.assertEqual([i.flags for i in (yield inbox.listMessages())], [frozenset(), frozenset()])
        yield inbox.setFlags([b], ["\\Flagged"], "add")
        stamps = self.stamps()
        self.dropForeign("1.M1P1Q1.foreign")
        self.sameTick(stamps)
        self.assertEqual(len((yield inbox.listMessages())), 2)
        self.later(60)
        infos = yield self.rechecked(inbox)
        self.assertEqual([(i.uid, i.flags) for i in infos],
                         [(a, frozenset(["\\Seen"])), (b, frozenset(["\\Flagged"])), (b + 1, frozenset())])
        # Another tick: seen at once.
        self.dropForeign("2.M1P1Q1.foreign")
        self.assertEqual(len((yield inbox.listMessages())), 4)

    @defer.inlineCallbacks
    def test_recentListingRechecked(self):
        """
        A listing made while a directory's mtime is within the slack is
        followed by one more once the slack has passed, even when the mtime
        stays the same: a file dropped in the same tick right after the
        listing is found then (and not lost for good).  That recheck is
        made in the pool, and the listeners hear of what it found.
        """
        inbox = yield self.inbox()
        yield inbox.append(BytesIO(message("a")))
        self.dropForeign("1.M1P1Q1.foreign")
        now = self.stamps()
        self.assertGreater(max(now) / 1e9 + maildirModule._MTIME_SLACK, _realTime())
        yield inbox.listMessages()
        self.assertEqual(len((yield inbox.listMessages())), 2)
        self.dropForeign("2.M1P1Q1.foreign")
        self.sameTick(now)
        self.assertEqual(len((yield inbox.listMessages())), 2)
        self.later(60)
        from tests.storetests import RecordingListener

        listener = RecordingListener()
        inbox.addListener(listener)
        self.assertEqual(len((yield inbox.listMessages())), 2)
        yield inbox._drained()
        self.assertEqual(len(listener.calls), 1)
        self.assertEqual(len((yield inbox.listMessages())), 3)
        listed = self.countListings()
        self.assertEqual(len((yield inbox.listMessages())), 3)
        self.assertEqual(listed, [])

    @defer.inlineCallbacks
    def test_otherProcessChangesNotListed(self):
        """
        Changes another mailplat process made under the lock are read from
        the uidlist records, with the directories' stamps before and after
        them, and not listed; a foreign file dropped in the tick of such a
        change is found once the slack has passed.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")))
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        otherInbox = yield (yield other.getAccount(ALICE)).getMailbox("INBOX")
        yield inbox.listMessages()
        listed = self.countListings()
        b = yield otherInbox.append(BytesIO(message("b")))
        yield otherInbox.setFlags([a], ["\\Flagged"], "add")
        yield otherInbox.claimRecent()
        yield otherInbox.expunge([b], requireDeleted=False)
        c = yield otherInbox.append(BytesIO(message("c")))
        yield inbox.setFlags([c], ["\\Seen"], "add")
        d = yield inbox.append(BytesIO(message("d")))
        stamps = self.stamps()
        self.dropForeign("1.M1P1Q1.foreign")
        self.sameTick(stamps)
        expected = [(a, frozenset(["\\Flagged"])), (c, frozenset(["\\Seen"])), (d, frozenset())]
        self.assertEqual([(i.uid, i.flags) for i in (yield otherInbox.listMessages())], expected)
        self.assertEqual([(i.uid, i.flags) for i in (yield inbox.listMessages())], expected)
        self.assertEqual(listed, [])
        self.later(60)
        self.assertEqual([i.uid for i in (yield self.rechecked(inbox))], [a, c, d, d + 1])
        self.assertEqual([i.uid for i in (yield self.rechecked(otherInbox))], [a, c, d, d + 1])

    @defer.inlineCallbacks
    def test_claimNothingTakesNoLock(self):
        """
        claimRecent with no \\Recent message takes no lock; with one, it
        claims it.
        """
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message()))
        self.assertEqual((yield inbox.claimRecent()), [uid])
        locks = []
        lock = inbox._lock
        self.patch(inbox, "_lock", lambda: locks.append(1) or lock())
        self.assertEqual((yield inbox.claimRecent()), [])
        self.assertEqual(locks, [])
        self.dropForeign("1.M1P1Q1.foreign")
        self.assertEqual((yield inbox.claimRecent()), [uid + 1])
        self.assertNotEqual(locks, [])

    @defer.inlineCallbacks
    def test_listingAndStatusKept(self):
        """
        The listing and the counts are made again only after a change; a
        listing handed out is the caller's own copy.
        """
        inbox = yield self.inbox()
        a = yield inbox.append(BytesIO(message("a")))
        first = yield inbox.listMessages()
        status = yield inbox.status()
        made = []
        info = inbox._info
        self.patch(inbox, "_info", lambda entry: made.append(entry.uid) or info(entry))
        second = yield inbox.listMessages()
        self.assertEqual(second, first)
        self.assertIsNot(second, first)
        second.clear()
        self.assertEqual(len((yield inbox.listMessages())), 1)
        self.assertEqual((yield inbox.status()), status)
        self.assertEqual(made, [])
        [new] = yield inbox.setFlags([a], ["\\Seen"], "add")
        [changed] = yield inbox.listMessages()
        self.assertIs(changed, new)
        self.assertEqual(changed.flags, frozenset(["\\Seen"]))
        self.assertEqual((yield inbox.status()).unseen, 0)

    @defer.inlineCallbacks
    def test_patchedListingMatchesWhole(self):
        """
        The listing and counts kept up to date change by change (appends,
        flags, claims, expunges, another process's changes, another
        program's files) are those of a listing made whole.
        """
        import random

        rng = random.Random(11)
        inbox = yield self.inbox()
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        otherInbox = yield (yield other.getAccount(ALICE)).getMailbox("INBOX")

        def summary(infos, status):  # type: ignore[no-untyped-def]
            return ([(i.uid, i.flags, i.modseq, i.size) for i in infos],
                    (status.messages, status.recent, status.unseen, status.size, status.uidNext))

        for step in range(80):
            box = inbox if rng.random() < 0.7 else otherInbox
            uids = [i.uid for i in (yield box.listMessages())]
            action = rng.choice(["append", "append", "flags", "flags", "claim", "expunge", "foreign", "keyword"])
            if action == "append" or not uids:
                yield box.append(BytesIO(message(f"m{step}")), rng.choice([[], ["\\Seen"], ["\\Flagged"]]))
            elif action in ("flags", "keyword"):
                flag = rng.choice(["\\Seen", "\\Deleted"]) if action == "flags" else f"k{rng.randint(1, 3)}"
                yield box.setFlags(rng.sample(uids, min(len(uids), 3)), [flag], rng.choice(["add", "remove"]))
            elif action == "claim":
                yield box.claimRecent()
            elif action == "expunge":
                yield box.expunge(rng.sample(uids, 1) if rng.random() < 0.5 else None)
            else:
                self.dropForeign(f"{step}.M1P1Q1.foreign", rng.choice(["new", "cur"]))
            kept = summary((yield inbox.listMessages()), (yield inbox.status()))
            inbox._listingCache = None
            whole = summary((yield inbox.listMessages()), (yield inbox.status()))
            self.assertEqual(kept, whole, f"step {step}: {action}")
            theirs = summary((yield otherInbox.listMessages()), (yield otherInbox.status()))
            self.assertEqual(theirs[0], whole[0], f"step {step}: {action}")

    @defer.inlineCallbacks
    def test_changesRunInThePool(self):
        """
        Flag changes, expunges and claims run in the store's thread pool
        (their fsyncs do not hold up the reactor): their Deferreds fire
        later, on the reactor thread, and closing the store waits for them.
        """
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message()))
        claim = inbox.claimRecent()
        self.assertNoResult(claim)
        self.assertEqual((yield claim), [uid])
        expunge = inbox.expunge([uid], requireDeleted=False)
        self.assertNoResult(expunge)
        self.assertEqual((yield expunge), [uid])
        other = yield inbox.append(BytesIO(message()))
        flags = inbox.setFlags([other], ["\\Flagged"], "add")
        self.assertNoResult(flags)
        order = []
        flags.addCallback(lambda infos: order.append([i.flags for i in infos]))
        closing = self.store.close()
        closing.addCallback(lambda _: order.append("closed"))
        yield closing
        self.assertEqual(order, [[frozenset(["\\Flagged"])], "closed"])
        [name] = self.files("cur")
        self.assertTrue(name.endswith(":2,F"), name)


class MaildirFactoryTests(unittest.TestCase):
    """
    The C{maildir} store plugin.
    """

    def test_interface(self) -> None:
        factory = MaildirStoreFactory()
        self.assertTrue(verifyObject(IStoreFactory, factory))
        self.assertEqual(factory.storeName, "maildir")

    def test_defaultRoot(self) -> None:
        dataDir = self.mktemp()
        store = MaildirStoreFactory().makeStore("", dataDir)
        self.assertEqual(store.root, os.path.abspath(os.path.join(dataDir, "mail")))
        self.assertTrue(os.path.isdir(store.root))

    def test_givenRoot(self) -> None:
        root = self.mktemp()
        store = MaildirStoreFactory().makeStore(root, "/nonexistent")
        self.assertEqual(store.root, os.path.abspath(root))

    def test_unusableRoot(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a directory")
        error = self.assertRaises(ConfigError, MaildirStoreFactory().makeStore, path, "/nonexistent")
        self.assertIn(path, str(error))
        error = self.assertRaises(ConfigError, MaildirStoreFactory().makeStore, os.path.join(path, "sub"), "/x")
        self.assertIn("maildir", str(error))


class InternalDateTests(MaildirTestCase):
    """
    The internal date of a message is its file's mtime (as Dovecot
    answers), read only when asked for when the store did not write the
    file itself, and kept in the uidlist once known.
    """

    def foreign(self, name: str, mtime: float, sub: str = "cur") -> str:
        """
        Put a message file in C{sub} as another server would, with the
        mtime C{mtime}; return its path.
        """
        path = os.path.join(self.maildir, sub, name)
        with open(path, "wb") as f:
            f.write(message(name).replace(b"\r\n", b"\n"))
        os.utime(path, (mtime, mtime))
        return path

    def countStats(self) -> list:
        """
        Count from now on the C{stat}s of message files of the INBOX.
        """
        stats: list = []
        stat = os.stat
        dirs = {os.path.abspath(os.path.join(self.maildir, sub)) for sub in ("new", "cur")}

        def counting(path, *args, **kwargs):  # type: ignore[no-untyped-def]
            if isinstance(path, str) and os.path.dirname(os.path.abspath(path)) in dirs:
                stats.append(path)
            return stat(path, *args, **kwargs)

        self.patch(os, "stat", counting)
        return stats

    def uidlist(self) -> list:
        """
        The uidlist's message lines, the last one for each UID.
        """
        lines: dict = {}
        with open(os.path.join(self.maildir, "mailplat-uidlist")) as f:
            for line in f.read().splitlines()[1:]:
                if line[:1].isdigit():
                    lines[int(line.split()[0])] = line
        return [lines[uid] for uid in sorted(lines)]

    @defer.inlineCallbacks
    def test_readWhenAsked(self):
        """
        Listing files another program put there reads no file's mtime; the
        first read of an internal date does (once), and answers the mtime.
        """
        yield self.inbox()
        self.foreign("1500000000.a.host,S=60,W=63:2,S", 1400000000.0)
        self.foreign("1500000001.b.host,S=60,W=63:2,", 1400000123.5, "cur")
        stats = self.countStats()
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        inbox = yield (yield other.getAccount(ALICE)).getMailbox("INBOX")
        infos = yield inbox.listMessages()
        self.assertEqual([(i.flags, i.size) for i in infos], [(frozenset(["\\Seen"]), 63), (frozenset(), 63)])
        self.assertEqual((yield inbox.status()).messages, 2)
        self.assertEqual(stats, [])
        self.assertEqual([line.split()[2] for line in self.uidlist()], ["-", "-"])
        self.assertEqual([i.internalDate for i in infos], [1400000000.0, 1400000123.5])
        self.assertEqual(len(stats), 2)
        self.assertEqual([i.internalDate for i in (yield inbox.listMessages())], [1400000000.0, 1400000123.5])
        self.assertEqual(len(stats), 2)

    @defer.inlineCallbacks
    def test_sameInEveryProcess(self):
        """
        Another store on the same maildir (another process) answers the same
        dates, read from the files too, before any was written down; once
        read, they go into the uidlist when it is written whole and are
        taken from it (even when a file's mtime changes later).  A file
        found later is recorded by a record appended to the uidlist.
        """
        yield self.inbox()
        self.foreign("1500000000.a.host,S=60,W=63", 1400000000.0, "new")
        self.foreign("1500000001.b.host,S=60,W=63:2,F", 1400000001.0)
        first = MaildirStore(self.root)
        self.addCleanup(first.close)
        one = yield (yield first.getAccount(ALICE)).getMailbox("INBOX")
        a, b = yield one.listMessages()
        second = MaildirStore(self.root)
        self.addCleanup(second.close)
        two = yield (yield second.getAccount(ALICE)).getMailbox("INBOX")
        self.assertEqual([i.internalDate for i in (yield two.listMessages())], [1400000000.0, 1400000001.0])
        self.assertEqual((a.internalDate, b.internalDate), (1400000000.0, 1400000001.0))
        self.foreign("1500000002.c.host,S=60,W=63", 1400000002.0, "new")
        os.utime(os.path.join(self.maildir, "new"), (1, 1))
        size = os.path.getsize(os.path.join(self.maildir, "mailplat-uidlist"))
        yield one.listMessages()
        with open(os.path.join(self.maildir, "mailplat-uidlist")) as f:
            f.seek(size)
            self.assertEqual(f.read().split("\n")[0].split()[2:], ["-", "63", "new/1500000002.c.host,S=60,W=63"])
        self.assertEqual([line.split()[2] for line in self.uidlist()], ["-", "-", "-"])
        one._locked(one._writeUidlist)
        self.assertEqual([line.split()[2] for line in self.uidlist()], ["1400000000.0", "1400000001.0", "-"])
        for name in os.listdir(os.path.join(self.maildir, "new")) + os.listdir(os.path.join(self.maildir, "cur")):
            path = os.path.join(self.maildir, "new" if ":" not in name else "cur", name)
            os.utime(path, (1600000000, 1600000000))
        third = MaildirStore(self.root)
        self.addCleanup(third.close)
        three = yield (yield third.getAccount(ALICE)).getMailbox("INBOX")
        stats = self.countStats()
        infos = yield three.listMessages()
        self.assertEqual([i.internalDate for i in infos[:2]], [1400000000.0, 1400000001.0])
        self.assertEqual(stats, [])
        self.assertEqual(infos[2].internalDate, 1600000000.0)

    @defer.inlineCallbacks
    def test_renamedOrGone(self):
        """
        A file renamed by another program after the listing is found again
        for its date; one removed meanwhile is dated by its name.
        """
        inbox = yield self.inbox()
        self.foreign("1500000000.a.host,S=60,W=63", 1400000000.0, "new")
        self.foreign("1500000001.b.host,S=60,W=63", 1400000001.0, "new")
        os.utime(os.path.join(self.maildir, "new"), (1, 1))
        a, b = yield inbox.listMessages()
        os.rename(os.path.join(self.maildir, "new", "1500000000.a.host,S=60,W=63"),
                  os.path.join(self.maildir, "cur", "1500000000.a.host,S=60,W=63:2,S"))
        os.unlink(os.path.join(self.maildir, "new", "1500000001.b.host,S=60,W=63"))
        self.assertEqual(a.internalDate, 1400000000.0)
        self.assertEqual(b.internalDate, 1500000001.0)
        self.assertEqual([i.uid for i in (yield inbox.listMessages())], [a.uid])

    @defer.inlineCallbacks
    def test_ownMessagesDated(self):
        """
        A message appended here has its date from the start (no file read
        for it), and a copy keeps the date of a message found undated.
        """
        inbox = yield self.inbox()
        uid = yield inbox.append(BytesIO(message()), [], 1300000000.0)
        self.foreign("1500000000.a.host,S=60,W=63", 1400000000.0, "new")
        os.utime(os.path.join(self.maildir, "new"), (1, 1))
        stats = self.countStats()
        own, found = yield inbox.listMessages()
        self.assertEqual((own.uid, own.internalDate), (uid, 1300000000.0))
        self.assertEqual(stats, [])
        account = yield self.store.getAccount(ALICE)
        [copied] = yield inbox.copyTo([found.uid], (yield account.getMailbox("Trash")))
        [info] = yield (yield account.getMailbox("Trash")).listMessages()
        self.assertEqual(info.internalDate, 1400000000.0)

    @defer.inlineCallbacks
    def test_uidlistWithDatesRead(self):
        """
        A uidlist written before dates could be left unknown (every line
        with its date) is read as it is: the dates come from it, not from
        the files.
        """
        yield self.inbox()
        self.foreign("1500000000.a.host,S=60,W=63:2,S", 1400000000.0)
        self.foreign("1500000001.b.host,S=60,W=63", 1400000001.0, "new")
        with open(os.path.join(self.maildir, "mailplat-uidlist"), "w") as f:
            f.write("1 V77 N9 M12 R8\n"
                    "7 11 1234567890.25 63 cur/1500000000.a.host,S=60,W=63:2,S\n"
                    "8 12 1234567891.0 63 new/1500000001.b.host,S=60,W=63\n")
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        inbox = yield (yield other.getAccount(ALICE)).getMailbox("INBOX")
        stats = self.countStats()
        infos = yield inbox.listMessages()
        self.assertEqual(inbox.uidValidity, 77)
        self.assertEqual([(i.uid, i.modseq, i.internalDate) for i in infos],
                         [(7, 11, 1234567890.25), (8, 12, 1234567891.0)])
        self.assertEqual(stats, [])
        self.assertEqual((yield inbox.status()).recent, 1)

    @defer.inlineCallbacks
    def test_knownMaildirNotReconciled(self):
        """
        Opening a maildir whose uidlist names just the files there (a new
        process) makes no pass over the entries and writes nothing.
        """
        inbox = yield self.inbox()
        for n in range(3):
            yield inbox.append(BytesIO(message(str(n))))
        self.foreign("1500000000.a.host,S=60,W=63", 1400000000.0, "new")
        os.utime(os.path.join(self.maildir, "new"), (1, 1))
        yield inbox.listMessages()
        before = os.stat(os.path.join(self.maildir, "mailplat-uidlist"))
        passes = []
        reconcile = maildirModule.MaildirMailbox._reconcile

        def counting(mailbox, bases=None):  # type: ignore[no-untyped-def]
            passes.append(bases)
            return reconcile(mailbox, bases)

        self.patch(maildirModule.MaildirMailbox, "_reconcile", counting)
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        again = yield (yield other.getAccount(ALICE)).getMailbox("INBOX")
        self.assertEqual((yield again.listMessages()), (yield inbox.listMessages()))
        self.assertEqual(passes, [])
        after = os.stat(os.path.join(self.maildir, "mailplat-uidlist"))
        self.assertEqual((after.st_ino, after.st_size), (before.st_ino, before.st_size))
        # A file dropped into new/ is reconciled alone.
        self.foreign("1500000001.b.host,S=60,W=63", 1400000001.0, "new")
        os.utime(os.path.join(self.maildir, "new"), (2, 2))
        infos = yield again.listMessages()
        self.assertEqual(len(infos), 5)
        self.assertEqual(passes, [{"1500000001.b.host,S=60,W=63"}])

    @defer.inlineCallbacks
    def test_otherProcessBetween(self):
        """
        The UIDs a store gave new files before taking the lock are given
        again under it when another process recorded a change meanwhile
        (here a delivery, which took the next UID): no UID names two
        messages, no message is lost, and each process reads the other's
        records.
        """
        inbox = yield self.inbox()
        other = MaildirStore(self.root)
        self.addCleanup(other.close)
        second = yield (yield other.getAccount(ALICE)).getMailbox("INBOX")
        lock = inbox._lock
        delivered = []

        def racing() -> int:
            # The other process takes the lock first and delivers.
            if not delivered:
                delivered.append(second._appendSync(BytesIO(message("own")), [], None))
            return lock()

        self.patch(inbox, "_lock", racing)
        self.foreign("1500000000.a.host,S=60,W=63", 1400000000.0, "new")
        self.foreign("1500000001.b.host,S=60,W=63", 1400000001.0, "new")
        os.utime(os.path.join(self.maildir, "new"), (2, 2))
        infos = yield inbox.listMessages()
        self.assertEqual(delivered, [1])
        self.assertEqual([i.uid for i in infos], [1, 2, 3])
        self.assertEqual(readFile((yield inbox.openMessage(1))), message("own"))
        self.assertEqual([i.uid for i in (yield second.listMessages())], [1, 2, 3])
        names = [line.split()[4] for line in self.uidlist()]
        self.assertEqual(names[1:], ["new/1500000000.a.host,S=60,W=63", "new/1500000001.b.host,S=60,W=63"])
        self.assertNotIn(names[0], names[1:])
