"""
C{mailplat migrate}: the engine between every kind of store, resuming,
verification, the Dovecot Maildir reader and the admin command.

The PostgreSQL pair runs when C{MAILPLAT_TEST_POSTGRES} holds a DSN; it
works in a schema of its own, dropped afterwards.
"""

import os
import uuid
from io import BytesIO, StringIO
from typing import Any, List

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from mailplat.admin import migrate_cmd
from mailplat.errors import ConfigError, StoreError
from mailplat.interfaces import IMailbox, IMailboxImport
from mailplat.migrate import UNKNOWN_MODSEQ_FLOOR, Migration, MigrationError, Progress
from mailplat.store.foreign import ForeignMaildirStore, parseUidlist, readCourierKeywords
from mailplat.store.maildir import MaildirStore
from mailplat.store.mbox import MboxStore
from mailplat.store.memory import MemoryStore
from mailplat.store.sql import SQLStore
from tests.storetests import ALICE, BOB, message, readFile

POSTGRES = os.environ.get("MAILPLAT_TEST_POSTGRES", "")


class StoresMixin:
    """
    Makes stores of every kind in the test's temporary directory.
    """

    def store(self, kind: str) -> Any:
        base = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(base)
        if kind == "memory":
            store: Any = MemoryStore()
        elif kind == "maildir":
            store = MaildirStore(base)
        elif kind == "mbox":
            store = MboxStore(base)
        elif kind == "sqlite":
            store = SQLStore.sqlite(os.path.join(base, "mail.sqlite3"))
        elif kind == "postgresql":
            import psycopg
            from psycopg import sql

            schema = "mp_migrate_" + uuid.uuid4().hex[:16]
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))

            def drop() -> None:
                with psycopg.connect(POSTGRES, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

            self.addCleanup(drop)  # type: ignore[attr-defined]
            store = SQLStore.postgresql(POSTGRES, schema, poolSize=2)
        else:
            raise ValueError(kind)
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        return store

    @defer.inlineCallbacks
    def populate(self, store: Any):
        """
        Two accounts with hierarchy, special use, a \\Noselect name,
        keywords, dates, expunged UIDs and subscriptions.
        """
        alice = yield store.getAccount(ALICE, create=True)
        yield alice.createMailbox("Work/Projects", "\\Flagged")
        yield alice.createMailbox("Lists/Twisted")
        yield alice.deleteMailbox("Lists")
        yield alice.createMailbox("Entw\u00fcrfe")
        yield alice.subscribe("Work/Projects")
        yield alice.unsubscribe("Junk")
        # Shared with bob and, read-only, with everyone (RFC 4314 ACLs).
        yield alice.setACL("Work/Projects", BOB, "lrswi")
        yield alice.setACL("Work/Projects", "anyone", "lr")
        inbox = yield alice.getMailbox("INBOX")
        uids = []
        for i in range(6):
            uids.append((yield inbox.append(BytesIO(message(f"in{i}", b"body %d\r\n" % i)),
                                            ["\\Seen", "$Label1"] if i % 2 else [], 1500000000.0 + i * 3600)))
        # Modseqs out of UID order, and a HIGHESTMODSEQ above every
        # message's (the expunge after the last change).
        yield inbox.setFlags([uids[0]], ["\\Answered"], "add")
        yield inbox.expunge([uids[1], uids[5]], requireDeleted=False)
        work = yield alice.getMailbox("Work/Projects")
        yield work.append(BytesIO(message("big", b"y" * 100000 + b"\r\n")), ["\\Flagged", "\\Answered", "Later"],
                          1400000000.0)
        yield work.append(BytesIO(message("draft")), ["\\Draft"], 1400000100.0)
        twisted = yield alice.getMailbox("Lists/Twisted")
        yield twisted.append(BytesIO(message("list")), ["\\Deleted"], 1300000000.0)
        bob = yield store.getAccount(BOB, create=True)
        bobInbox = yield bob.getMailbox("INBOX")
        yield bobInbox.append(BytesIO(message("for bob")), [], 1600000000.0)

    @defer.inlineCallbacks
    def snapshot(self, store: Any, address: str = ALICE):
        """
        Everything a client sees of an account, to compare two stores.
        """
        account = yield store.getAccount(address)
        listing = {e.name: set(e.attributes) for e in (yield account.listMailboxes())}
        boxes = {}
        for name, attrs in listing.items():
            if "\\Noselect" in attrs:
                continue
            mailbox = yield account.getMailbox(name)
            status = yield mailbox.status()
            messages = []
            for info in (yield mailbox.listMessages()):
                body = readFile((yield mailbox.openMessage(info.uid)))
                messages.append((info.uid, info.flags, int(info.internalDate), info.size, body))
            boxes[name] = (status.uidValidity, status.uidNext, messages, (yield account.getACL(name)))
        return listing, (yield account.listSubscriptions()), boxes

    @defer.inlineCallbacks
    def modseqs(self, store: Any, address: str = ALICE):
        """
        What a CONDSTORE client caches of an account: each mailbox's
        HIGHESTMODSEQ and each message's MODSEQ.
        """
        account = yield store.getAccount(address)
        result = {}
        for entry in (yield account.listMailboxes()):
            if "\\Noselect" in entry.attributes:
                continue
            mailbox = yield account.getMailbox(entry.name)
            status = yield mailbox.status()
            result[entry.name] = (status.highestModseq, [(i.uid, i.modseq) for i in (yield mailbox.listMessages())])
        return result


class PairTests(StoresMixin, unittest.TestCase):
    """
    Every pair of the brief keeps everything a client sees.
    """

    @defer.inlineCallbacks
    def assertMigrates(self, fromKind: str, toKind: str):
        source = self.store(fromKind)
        target = self.store(toKind)
        yield self.populate(source)
        reports = yield Migration(source, target).run()
        self.assertEqual([r.address for r in reports], [ALICE, BOB])
        for report in reports:
            self.assertEqual(report.mismatches, [])
        self.assertEqual(reports[0].copied, 7)
        for address in (ALICE, BOB):
            self.assertEqual((yield self.snapshot(target, address)), (yield self.snapshot(source, address)))
            self.assertEqual((yield self.modseqs(target, address)), (yield self.modseqs(source, address)))
        inbox = (yield self.modseqs(source))["INBOX"]
        self.assertGreater(inbox[0], max(m for _, m in inbox[1]), "the fixture's HIGHESTMODSEQ is an expunge's")
        self.assertNotEqual(inbox[1], sorted(inbox[1], key=lambda p: p[1]), "the fixture's modseqs follow its UIDs")
        listing = (yield self.snapshot(target))[0]
        self.assertIn("\\Noselect", listing["Lists"])
        # The ACL came along, and so did the store's index of who shares
        # what with whom.
        self.assertEqual((yield (yield target.getAccount(ALICE)).getACL("Work/Projects")), {BOB: "lrswi", "anyone": "lr"})
        self.assertIn((ALICE, "Work/Projects", "lrswi"), (yield target.sharedWith(BOB)))
        self.assertIn("\\Flagged", listing["Work/Projects"])
        # A second run copies nothing and still verifies.
        again = yield Migration(source, target).run([ALICE])
        self.assertEqual((again[0].copied, again[0].skipped, again[0].mismatches), (0, 7, []))

    def test_memoryToMaildir(self):
        return self.assertMigrates("memory", "maildir")

    def test_maildirToMbox(self):
        return self.assertMigrates("maildir", "mbox")

    def test_mboxToSQLite(self):
        return self.assertMigrates("mbox", "sqlite")

    def test_sqliteToMaildir(self):
        return self.assertMigrates("sqlite", "maildir")

    def test_mboxToPostgres(self):
        return self.assertMigrates("mbox", "postgresql")

    def test_postgresToMaildir(self):
        return self.assertMigrates("postgresql", "maildir")

    if not POSTGRES:
        test_mboxToPostgres.skip = test_postgresToMaildir.skip = "MAILPLAT_TEST_POSTGRES is not set"  # type: ignore[attr-defined]


@implementer(IMailbox, IMailboxImport)
class _Failing:
    """
    A target mailbox that breaks after a number of imports (an interrupted
    run).
    """

    def __init__(self, real: Any, budget: List[int]) -> None:
        self._real = real
        self._budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def importMessage(self, *args: Any, **kwargs: Any) -> defer.Deferred:
        if self._budget[0] <= 0:
            return defer.fail(StoreError("disk on fire"))
        self._budget[0] -= 1
        return self._real.importMessage(*args, **kwargs)


class _FailingAccount:
    def __init__(self, real: Any, budget: List[int]) -> None:
        self._real = real
        self._budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @defer.inlineCallbacks
    def getMailbox(self, name: str):
        mailbox = yield self._real.getMailbox(name)
        return _Failing(mailbox, self._budget)


class _FailingStore:
    def __init__(self, real: Any, budget: int) -> None:
        self._real = real
        self.budget = [budget]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @defer.inlineCallbacks
    def getAccount(self, address: str, create: bool = False):
        account = yield self._real.getAccount(address, create)
        return _FailingAccount(account, self.budget)


class ResumeAndVerifyTests(StoresMixin, unittest.TestCase):
    """
    Interrupted runs resume; the verification catches a damaged copy.
    """

    @defer.inlineCallbacks
    def test_resume(self):
        """
        A run that fails after three messages leaves them copied; the next
        run skips them by UID and copies the rest.
        """
        source = self.store("mbox")
        target = self.store("maildir")
        yield self.populate(source)
        yield self.assertFailure(Migration(source, _FailingStore(target, 3)).run([ALICE]), StoreError)
        partial = (yield self.snapshot(target))[2]
        self.assertEqual(sum(len(b[2]) for b in partial.values()), 3)
        reports = yield Migration(source, target).run([ALICE])
        self.assertEqual((reports[0].copied, reports[0].skipped, reports[0].mismatches), (4, 3, []))
        self.assertEqual((yield self.snapshot(target)), (yield self.snapshot(source)))
        self.assertEqual((yield self.modseqs(target)), (yield self.modseqs(source)))

    @defer.inlineCallbacks
    def test_resumeAfterFlagChange(self):
        """
        A message whose flags changed in the source between two runs gets
        its new flags with a modseq above the source's HIGHESTMODSEQ, so
        that every client of the source sees the change; the rest keep
        their modseqs, and the copy verifies.
        """
        source = self.store("sqlite")
        target = self.store("mbox")
        yield self.populate(source)
        yield Migration(source, target).run([ALICE])
        work = yield (yield source.getAccount(ALICE)).getMailbox("Work/Projects")
        first = (yield work.listMessages())[0]
        yield work.setFlags([first.uid], ["\\Seen"], "add")
        sourceHighest = (yield work.status()).highestModseq
        reports = yield Migration(source, target).run([ALICE])
        self.assertEqual((reports[0].copied, reports[0].mismatches), (0, []))
        self.assertEqual((yield self.snapshot(target)), (yield self.snapshot(source)))
        before, after = (yield self.modseqs(source)), (yield self.modseqs(target))
        highest, infos = after.pop("Work/Projects")
        expected = before.pop("Work/Projects")[1]
        self.assertEqual(after, before)
        self.assertGreater(dict(infos)[first.uid], sourceHighest)
        self.assertGreaterEqual(highest, dict(infos)[first.uid])
        self.assertEqual([p for p in infos if p[0] != first.uid], [p for p in expected if p[0] != first.uid])

    @defer.inlineCallbacks
    def test_modseqMismatch(self):
        """
        A target message with another modseq that a client of the source
        may hold (at most the source's HIGHESTMODSEQ), or a lower
        HIGHESTMODSEQ, is a difference.
        """
        source = self.store("memory")
        target = self.store("memory")
        inbox = yield (yield source.getAccount(ALICE, create=True)).getMailbox("INBOX")
        uid = yield inbox.append(BytesIO(message()))
        yield inbox.setFlags([uid], ["\\Seen"], "add")
        yield inbox.setFlags([uid], ["\\Flagged"], "add")
        copy = IMailboxImport((yield (yield target.getAccount(ALICE, create=True)).getMailbox("INBOX")))
        yield copy.setUIDValidity(inbox.uidValidity)
        yield copy.importMessage(uid, BytesIO(message()), ["\\Seen", "\\Flagged"], modseq=2)
        report = yield Migration(source, target).verifyAccount(ALICE)
        lines = [line for line in report.mismatches if " INBOX: " in line]
        self.assertEqual(lines, [
            f"{ALICE} INBOX: HIGHESTMODSEQ 2 in the target, 4 in the source",
            f"{ALICE} INBOX: UID {uid} modseq 2 in the target, 4 in the source",
        ])

    @defer.inlineCallbacks
    def test_corruptedCopy(self):
        """
        A message file changed in the target (same size) is found by its
        hash; a lost flag by the comparison of flags.
        """
        source = self.store("memory")
        target = self.store("maildir")
        yield self.populate(source)
        yield Migration(source, target).run([ALICE])
        work = yield (yield target.getAccount(ALICE)).getMailbox("Work/Projects")
        infos = yield work.listMessages()
        entry = work._entries[infos[0].uid]
        path = os.path.join(work.path, entry.subdir, entry.filename)
        with open(path, "r+b") as f:
            f.seek(-3, os.SEEK_END)
            f.write(b"z")
        yield work.setFlags([infos[1].uid], ["\\Draft"], "remove")
        report = yield Migration(source, target).verifyAccount(ALICE)
        self.assertEqual(len(report.mismatches), 2)
        self.assertIn(f"UID {infos[0].uid} content differs", report.mismatches[0])
        self.assertIn("flags", report.mismatches[1])

    @defer.inlineCallbacks
    def test_conflictingTarget(self):
        """
        A target mailbox holding other mail under another UIDVALIDITY is
        refused, not renumbered.
        """
        source = self.store("memory")
        target = self.store("memory")
        yield self.populate(source)
        inbox = yield (yield target.getAccount(ALICE, create=True)).getMailbox("INBOX")
        yield inbox.append(BytesIO(message("mine")))
        yield self.assertFailure(Migration(source, target).run([ALICE]), MigrationError)


def writeDovecotMaildir(root: str) -> None:
    """
    A Dovecot Maildir++ tree written by hand: INBOX and C{.Work.Projects}
    with C{dovecot-uidlist} version 3, C{dovecot-keywords}, and
    C{subscriptions} version 2; one file not in the uidlist yet.
    """
    for folder in ("", ".Work.Projects", ".Entw&APw-rfe"):
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, folder, sub))

    def put(folder: str, sub: str, name: str, data: bytes, mtime: float) -> None:
        path = os.path.join(root, folder, sub, name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (mtime, mtime))

    put("", "cur", "1400000000.M1P1.host,S=60:2,Sa", b"Subject: one\n\nfirst\n", 1400000000)
    put("", "cur", "1400000100.M2P1.host:2,FRb", b"Subject: two\n\nsecond\n", 1400000100)
    put("", "new", "1400000200.M3P1.host", b"Subject: three\n\nnew one\n", 1400000200)
    with open(os.path.join(root, "dovecot-uidlist"), "w") as f:
        f.write("3 V1234567890 N17 G0123456789abcdef\n")
        f.write("5 :1400000000.M1P1.host,S=60\n")
        f.write("9 W24 :1400000100.M2P1.host\n")
    with open(os.path.join(root, "dovecot-keywords"), "w") as f:
        f.write("0 $Forwarded\n1 Important\n")
    put(".Work.Projects", "cur", "1300000000.M4P1.host:2,T", b"Subject: old\n\ngone\n", 1300000000)
    with open(os.path.join(root, ".Work.Projects", "dovecot-uidlist"), "w") as f:
        f.write("3 V1234567999 N3\n2 :1300000000.M4P1.host\n")
    with open(os.path.join(root, "subscriptions"), "w") as f:
        f.write("V\t2\n\nINBOX\nWork\tProjects\n")


def writeCourierMaildir(root: str) -> None:
    """
    A Courier-IMAP Maildir++ tree written by hand, in the formats
    courier-libs uses (C{maildir/maildirkeywords2.c}, see
    L{mailplat.store.foreign.readCourierKeywords}): C{courierimapuiddb},
    C{courierimapsubscribed}, and C{courierimapkeywords/} with a C{:list}
    and update files that override it (C{.<n>.<name>}, the highest C{n}
    winning, and a plain C{<name>} newer than all of them; an empty one
    clears), a C{.tmp.} scratch file and a name that is no IMAP keyword.
    """
    for folder in ("", ".Work"):
        for sub in ("cur", "new", "tmp", "courierimapkeywords"):
            os.makedirs(os.path.join(root, folder, sub))

    def put(path: str, data: bytes, mtime: float = 1500000000) -> None:
        with open(os.path.join(root, path), "wb") as f:
            f.write(data)
        os.utime(os.path.join(root, path), (mtime, mtime))

    put("cur/1500000000.M1P1.host:2,S", b"Subject: one\n\nfirst\n", 1500000000)
    put("cur/1500000100.M2P1.host:2,", b"Subject: two\n\nsecond\n", 1500000100)
    put("cur/1500000200.M3P1.host:2,F", b"Subject: three\n\nthird\n", 1500000200)
    put("new/1500000300.M4P1.host", b"Subject: four\n\nnew one\n", 1500000300)
    put("courierimapuiddb", b"1 987654321 8\n3 1500000000.M1P1.host\n4 1500000100.M2P1.host\n"
                            b"7 1500000200.M3P1.host\n")
    put("courierimapkeywords/:list", b"$Forwarded\nImportant\nJunk\n\n"
                                     b"1500000000.M1P1.host:0 1\n1500000100.M2P1.host:2\n"
                                     b"1500000200.M3P1.host:1\n")
    put("courierimapkeywords/.9.1500000100.M2P1.host", b"Junk\n")
    put("courierimapkeywords/.12.1500000100.M2P1.host", b"NonJunk\n")
    put("courierimapkeywords/.20.1500000200.M3P1.host", b"Old\n")
    put("courierimapkeywords/1500000200.M3P1.host", b"")
    put("courierimapkeywords/.3.1500000300.M4P1.host", b"$Label1\nbad word\n")
    put("courierimapkeywords/.tmp.1500000000.scratch", b"Scratch\n")
    put(".Work/cur/1400000000.M5P1.host:2,RS", b"Subject: work\n\nwork\n", 1400000000)
    put(".Work/courierimapuiddb", b"1 55555 3\n2 1400000000.M5P1.host\n")
    put(".Work/courierimapkeywords/:list", b"Later\n\n1400000000.M5P1.host:0\n")
    put("courierimapsubscribed", b"INBOX\nINBOX.Work\n")


class ForeignTests(StoresMixin, unittest.TestCase):
    """
    Importing a Dovecot Maildir keeps its UIDs, UIDVALIDITY, keywords and
    subscriptions, and leaves it untouched.
    """

    def test_parseUidlist(self):
        self.assertEqual(parseUidlist("3 V7 N10\n2 W5 S4 :a.b,S=4:2,S\n4 :c\n"), (7, 10, {"a.b,S=4": 2, "c": 4}))
        self.assertEqual(parseUidlist("1 8 20\n3 x.y\n"), (8, 20, {"x.y": 3}))

    @defer.inlineCallbacks
    def test_dovecotImport(self):
        root = os.path.abspath(self.mktemp())
        writeDovecotMaildir(root)
        before = sorted((d, sorted(f), os.stat(d).st_mtime_ns) for d, _, f in os.walk(root))
        source = ForeignMaildirStore(root, "dovecot", ALICE)
        target = self.store("sqlite")
        reports = yield Migration(source, target).run([ALICE])
        self.assertEqual(reports[0].mismatches, [])
        account = yield target.getAccount(ALICE)
        inbox = yield account.getMailbox("INBOX")
        status = yield inbox.status()
        self.assertEqual((status.uidValidity, status.uidNext), (1234567890, 18))
        infos = yield inbox.listMessages()
        self.assertEqual([(i.uid, i.flags, i.internalDate) for i in infos], [
            (5, frozenset(["\\Seen", "$Forwarded"]), 1400000000.0),
            (9, frozenset(["\\Flagged", "\\Answered", "Important"]), 1400000100.0),
            (17, frozenset(), 1400000200.0),
        ])
        self.assertEqual(readFile((yield inbox.openMessage(9))), b"Subject: two\r\n\r\nsecond\r\n")
        self.assertTrue(all(i.modseq > UNKNOWN_MODSEQ_FLOOR for i in infos), infos)
        work = yield account.getMailbox("Work/Projects")
        self.assertEqual(work.uidValidity, 1234567999)
        self.assertEqual([(i.uid, i.flags) for i in (yield work.listMessages())], [(2, frozenset(["\\Deleted"]))])
        yield account.getMailbox("Entw\u00fcrfe")
        self.assertEqual((yield account.listSubscriptions()), ["INBOX", "Work/Projects"])
        after = sorted((d, sorted(f), os.stat(d).st_mtime_ns) for d, _, f in os.walk(root))
        self.assertEqual(after, before)

    def test_courierKeywords(self):
        """
        Courier's keyword list and update files give each message its
        keywords: the newest update replaces the list, an empty one clears
        it, scratch files and names that are no keyword are left out.
        """
        root = os.path.abspath(self.mktemp())
        writeCourierMaildir(root)
        self.assertEqual(readCourierKeywords(root), {
            "1500000000.M1P1.host": frozenset(["$Forwarded", "Important"]),
            "1500000100.M2P1.host": frozenset(["NonJunk"]),
            "1500000300.M4P1.host": frozenset(["$Label1"]),
        })
        self.assertEqual(readCourierKeywords(os.path.join(root, ".Work")),
                         {"1400000000.M5P1.host": frozenset(["Later"])})
        self.assertEqual(readCourierKeywords(os.path.join(root, "cur")), {})

    @defer.inlineCallbacks
    def test_courierImport(self):
        """
        A Courier Maildir is imported with its UIDs, UIDVALIDITY, flags,
        keywords and subscriptions, and left untouched; its messages get
        new modseqs (Courier keeps none).
        """
        root = os.path.abspath(self.mktemp())
        writeCourierMaildir(root)
        before = sorted((d, sorted(f), os.stat(d).st_mtime_ns) for d, _, f in os.walk(root))
        source = ForeignMaildirStore(root, "courier", ALICE)
        target = self.store("maildir")
        reports = yield Migration(source, target).run([ALICE])
        self.assertEqual(reports[0].mismatches, [])
        account = yield target.getAccount(ALICE)
        inbox = yield account.getMailbox("INBOX")
        status = yield inbox.status()
        self.assertEqual((status.uidValidity, status.uidNext), (987654321, 9))
        infos = yield inbox.listMessages()
        self.assertEqual([(i.uid, i.flags, i.internalDate) for i in infos], [
            (3, frozenset(["\\Seen", "$Forwarded", "Important"]), 1500000000.0),
            (4, frozenset(["NonJunk"]), 1500000100.0),
            (7, frozenset(["\\Flagged"]), 1500000200.0),
            (8, frozenset(["$Label1"]), 1500000300.0),
        ])
        # New modseqs, above any a client of Courier (or Dovecot) may hold.
        self.assertEqual(len({i.modseq for i in infos}), 4)
        self.assertTrue(all(i.modseq > UNKNOWN_MODSEQ_FLOOR for i in infos), infos)
        self.assertGreaterEqual(status.highestModseq, max(i.modseq for i in infos))
        work = yield account.getMailbox("Work")
        self.assertEqual(work.uidValidity, 55555)
        self.assertEqual([(i.uid, i.flags) for i in (yield work.listMessages())],
                         [(2, frozenset(["\\Answered", "\\Seen", "Later"]))])
        self.assertEqual((yield account.listSubscriptions()), ["INBOX", "Work"])
        after = sorted((d, sorted(f), os.stat(d).st_mtime_ns) for d, _, f in os.walk(root))
        self.assertEqual(after, before)

    def test_notAMaildir(self):
        self.assertRaises(ConfigError, ForeignMaildirStore, self.mktemp(), "dovecot", ALICE)


class CommandTests(StoresMixin, unittest.TestCase):
    """
    C{mailplat migrate} end to end on store specs.
    """

    def config(self) -> Any:
        class Config:
            dataDir = os.path.abspath(self.mktemp())

        os.makedirs(Config.dataDir)
        return Config()

    def options(self, *argv: str) -> migrate_cmd.MigrateOptions:
        options = migrate_cmd.MigrateOptions()
        options.parseOptions(list(argv))
        return options

    @defer.inlineCallbacks
    def test_command(self):
        """
        Plain lines off a terminal, a summary, and the copy is there.
        """
        src = os.path.abspath(self.mktemp())
        dst = os.path.abspath(self.mktemp())
        os.makedirs(src)
        source = MaildirStore(src)
        yield self.populate(source)
        yield source.close()
        out = StringIO()
        yield migrate_cmd.run(self.options("--from", f"maildir:{src}", "--to", f"mbox:{dst}"), self.config(), out)
        text = out.getvalue()
        self.assertIn(f"{ALICE} Work/Projects: 2 message(s)\n", text)
        self.assertIn("migrated 2 account(s)", text)
        self.assertNotIn("\r", text)
        check = MboxStore(dst)
        self.addCleanup(check.close)
        again = MaildirStore(src)
        self.addCleanup(again.close)
        self.assertEqual((yield self.snapshot(check)), (yield self.snapshot(again)))

    @defer.inlineCallbacks
    def test_commandMismatch(self):
        """
        A difference fails the command with a clear line.
        """
        root = os.path.abspath(self.mktemp())
        writeDovecotMaildir(root)
        dst = os.path.abspath(self.mktemp())
        options = self.options("--from", f"dovecot-maildir:{root}", "--to", f"maildir:{dst}", "--user", ALICE)
        out = StringIO()
        yield migrate_cmd.run(options, self.config(), out)
        self.assertIn("verified", out.getvalue())
        # Damage the copy and run again: the verification fails.
        copy = MaildirStore(dst)
        self.addCleanup(copy.close)
        inbox = yield (yield copy.getAccount(ALICE)).getMailbox("INBOX")
        entry = inbox._entries[9]
        with open(os.path.join(inbox.path, entry.subdir, entry.filename), "r+b") as f:
            f.write(b"X")
        out = StringIO()
        failure = yield self.assertFailure(migrate_cmd.run(options, self.config(), out), ConfigError)
        self.assertIn("verification found 1 difference", str(failure))
        self.assertIn("MISMATCH alice@example.test INBOX: UID 9 content differs (sha256)", out.getvalue())

    def test_options(self):
        from twisted.python import usage

        self.assertRaises(usage.UsageError, self.options, "--from", "memory")
        self.assertRaises(usage.UsageError, self.options, "--from", "memory", "--to", "memory")

    def test_foreignNeedsUser(self):
        root = os.path.abspath(self.mktemp())
        writeDovecotMaildir(root)
        d = migrate_cmd.run(self.options("--from", f"dovecot-maildir:{root}", "--to", "memory"), self.config(), StringIO())
        return self.assertFailure(d, ConfigError)

    def test_progressBar(self):
        out = StringIO()
        progress = migrate_cmd.TextProgress(out, tty=True)
        progress.begin(ALICE, 4)
        progress.mailbox(ALICE, "INBOX", 4)
        progress.advance(1, 1)
        progress.end(ALICE)
        self.assertIn("\r[###############---------------] 2/4 alice@example.test INBOX", out.getvalue())
        self.assertTrue(out.getvalue().endswith("\n"))
        self.assertIsInstance(progress, Progress)
