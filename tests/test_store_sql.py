"""
The SQL store on SQLite and PostgreSQL: the conformance suite, and what
only a shared database has to get right (migrations, content stored once,
several stores and processes on one database, the plugins).

The PostgreSQL tests run when C{MAILPLAT_TEST_POSTGRES} holds a DSN
(C{postgresql://postgres@127.0.0.1:5432/test}); each test works in a
schema of its own, dropped afterwards, so runs never see each other.
"""

import hashlib
import os
import sqlite3
import sys
import uuid
from io import BytesIO
from typing import Any, List, Optional

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory
from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailplat.errors import ConfigError, MailboxLocked, NoSuchMailbox
from mailplat.interfaces import IMailboxListener, IStoreFactory
from mailplat.store.sql import SQLCheckerFactory, SQLStore, SQLStoreFactory
from mailplat.store.sql.config import parseDatabaseSpec
from mailplat.store.sql.schema import LATEST_VERSION, SchemaTooNew
from mailplat.store.sql.store import decodeFlags, encodeFlags
from tests.storetests import ALICE, BOB, StoreConformanceMixin, message, readFile

POSTGRES = os.environ.get("MAILPLAT_TEST_POSTGRES", "")
NO_POSTGRES = "MAILPLAT_TEST_POSTGRES is not set (e.g. postgresql://postgres@127.0.0.1:5432/test); PostgreSQL tests skipped"

# The longest any test waits for another thread or process.
WAIT = 15.0

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@implementer(IMailboxListener)
class WaitingListener:
    """
    A listener whose C{wait()} fires at its next notification (bounded by
    L{WAIT}).
    """

    def __init__(self) -> None:
        self.calls = 0
        self._waiting: List[defer.Deferred] = []

    def mailboxChanged(self, mailbox: Any) -> None:
        self.calls += 1
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(mailbox)

    def wait(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        d.addTimeout(WAIT, reactor)
        return d


# One database per test, for each backend.


class SQLiteDatabaseMixin:
    """
    Stores on one SQLite file in the test's temporary directory.
    """

    backend = "sqlite"

    def databasePath(self) -> str:
        if not hasattr(self, "_sqlitePath"):
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            self._sqlitePath = os.path.join(directory, "mail.sqlite3")
        return self._sqlitePath

    def makeStore(self) -> SQLStore:
        return SQLStore.sqlite(self.databasePath())

    def rawQuery(self, sql: str, params: tuple = ()) -> List[tuple]:
        conn = sqlite3.connect(self.databasePath())
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def storeArguments(self) -> List[str]:
        return ["sqlite", self.databasePath(), ""]


class PostgresDatabaseMixin:
    """
    Stores on a fresh schema of the PostgreSQL database named by
    C{MAILPLAT_TEST_POSTGRES}, dropped at the end of the test.
    """

    backend = "postgresql"

    if not POSTGRES:
        skip = NO_POSTGRES

    def setUp(self) -> Any:
        import psycopg
        from psycopg import sql

        self.schema = "mp_test_" + uuid.uuid4().hex[:16]
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))

        def drop() -> None:
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema)))

        self.addCleanup(drop)
        return super().setUp()

    def makeStore(self) -> SQLStore:
        return SQLStore.postgresql(POSTGRES, self.schema, poolSize=4)

    def rawQuery(self, sql: str, params: tuple = ()) -> List[tuple]:
        import psycopg

        with psycopg.connect(POSTGRES, options=f"-c search_path={self.schema}") as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()

    def storeArguments(self) -> List[str]:
        return ["postgresql", POSTGRES, self.schema]


class SQLiteConformanceTests(SQLiteDatabaseMixin, StoreConformanceMixin, unittest.TestCase):
    """
    L{SQLStore} on SQLite keeps the store contract, across restarts too.
    """

    persistent = True


class PostgresConformanceTests(PostgresDatabaseMixin, StoreConformanceMixin, unittest.TestCase):
    """
    L{SQLStore} on PostgreSQL keeps the store contract, across restarts too.
    """

    persistent = True


# A second process, to show what holds across processes.

_OTHER_PROCESS = r"""
import sys
from io import BytesIO
from twisted.internet import defer, task
from mailplat.errors import MailboxLocked
from mailplat.store.sql import SQLStore

@defer.inlineCallbacks
def main(reactor, kind, target, schema, action):
    store = SQLStore.sqlite(target) if kind == "sqlite" else SQLStore.postgresql(target, schema or None, poolSize=1)
    try:
        account = yield store.getAccount("alice@example.test", create=True)
        inbox = yield account.getMailbox("INBOX")
        if action == "lock":
            try:
                release = yield inbox.lockExclusive()
            except MailboxLocked:
                print("locked")
            else:
                release()
                print("free")
        else:
            uids = []
            for i in range(int(action)):
                uids.append((yield inbox.append(BytesIO(b"Subject: other process\r\n\r\n%d\r\n" % i))))
            print(" ".join(map(str, uids)))
    finally:
        yield store.close()

task.react(main, sys.argv[1:])
"""


def otherProcess(arguments: List[str], action: str) -> defer.Deferred:
    """
    Run L{_OTHER_PROCESS} on the same database; fires with its output
    (str), bounded by L{WAIT}.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    d = utils.getProcessOutput(sys.executable, ["-c", _OTHER_PROCESS, *arguments, action], env=env, path=REPO, errortoo=True)
    d.addTimeout(WAIT, reactor)
    return d.addCallback(lambda out: out.decode("utf-8", "replace").strip())


class SharedDatabaseTestsMixin:
    """
    What a store on a shared database does beyond the contract; run on
    both backends.
    """

    def setUp(self) -> Any:
        self.store = self.openStore()

    def openStore(self) -> SQLStore:
        store = self.makeStore()
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def inbox(self, store: Optional[SQLStore] = None, name: str = "INBOX"):
        account = yield (store or self.store).getAccount(ALICE, create=True)
        mailbox = yield account.getMailbox(name)
        return mailbox

    def contentRows(self) -> List[tuple]:
        return self.rawQuery("SELECT m.hash, m.refcount, m.size FROM messages m JOIN blobs b ON b.hash = m.hash ORDER BY m.hash")

    # migrations

    def test_freshSchema(self) -> None:
        """
        A new database is at the latest version, once; opening it again
        applies nothing.
        """
        self.assertEqual(self.rawQuery("SELECT version FROM schema_version ORDER BY version"), [(v,) for v in range(1, LATEST_VERSION + 1)])
        other = self.openStore()
        self.assertIsNot(other, self.store)
        self.assertEqual(self.rawQuery("SELECT version FROM schema_version ORDER BY version"), [(v,) for v in range(1, LATEST_VERSION + 1)])
        tables = {"accounts", "mailboxes", "messages", "blobs", "mailbox_messages", "subscriptions", "users", "domains", "aliases", "mailbox_acl"}
        for table in tables:
            self.assertEqual(self.rawQuery(f"SELECT COUNT(*) FROM {table}"), [(0,)])

    # content stored once

    @defer.inlineCallbacks
    def test_dedup(self):
        """
        The same message in two mailboxes is stored once; its content goes
        when the last copy is expunged.
        """
        inbox = yield self.inbox()
        archive = yield self.inbox(name="Archive")
        data = message("twice", b"same body\r\n" * 100)
        a = yield inbox.append(BytesIO(data))
        b = yield archive.append(BytesIO(data), ["\\Seen"])
        other = yield inbox.append(BytesIO(message("other")))
        digest = hashlib.sha256(data).hexdigest()
        rows = self.contentRows()
        self.assertIn((digest, 2, len(data)), rows)
        self.assertEqual(len(rows), 2)
        self.assertEqual(readFile((yield archive.openMessage(b))), data)
        yield inbox.expunge([a], requireDeleted=False)
        self.assertIn((digest, 1, len(data)), self.contentRows())
        self.assertEqual(readFile((yield archive.openMessage(b))), data)
        yield archive.expunge([b], requireDeleted=False)
        self.assertEqual([r[0] for r in self.contentRows()], [hashlib.sha256(message("other")).hexdigest()])
        self.assertEqual(self.rawQuery("SELECT COUNT(*) FROM blobs"), [(1,)])
        yield inbox.expunge([other], requireDeleted=False)
        self.assertEqual(self.contentRows(), [])

    @defer.inlineCallbacks
    def test_copySharesContent(self):
        """
        A copy inside the store shares the content; deleting the mailbox
        and then the account frees it.
        """
        inbox = yield self.inbox()
        archive = yield self.inbox(name="Archive")
        uid = yield inbox.append(BytesIO(message("copied")), ["$Kw", "\\Flagged"], 1234567890.0)
        pairs = yield inbox.copyTo([uid, uid + 5], archive)
        self.assertEqual(len(pairs), 1)
        self.assertEqual([r[1] for r in self.contentRows()], [2])
        [info] = yield archive.listMessages()
        self.assertEqual((info.flags, info.internalDate), (frozenset(["$Kw", "\\Flagged"]), 1234567890.0))
        self.assertEqual((yield archive.claimRecent()), [pairs[0][1]])
        account = yield self.store.getAccount(ALICE)
        yield account.deleteMailbox("Archive")
        self.assertEqual([r[1] for r in self.contentRows()], [1])
        yield self.store.deleteAccount(ALICE)
        self.assertEqual(self.contentRows(), [])
        self.assertEqual(self.rawQuery("SELECT COUNT(*) FROM mailbox_messages"), [(0,)])

    # several stores on one database

    @defer.inlineCallbacks
    def test_otherStoreNotifies(self):
        """
        A listener hears appends, flag changes and expunges made through
        another store on the same database.
        """
        other = self.openStore()
        clock = task.Clock()
        other.clock = clock
        watched = yield self.inbox(other)
        listener = WaitingListener()
        watched.addListener(listener)
        inbox = yield self.inbox()

        waiting = listener.wait()
        uid = yield inbox.append(BytesIO(message()))
        clock.advance(other.pollInterval)
        yield waiting
        self.assertEqual([i.uid for i in (yield watched.listMessages())], [uid])
        waiting = listener.wait()
        yield inbox.setFlags([uid], ["\\Deleted"], "add")
        clock.advance(other.pollInterval)
        yield waiting
        waiting = listener.wait()
        yield inbox.expunge()
        clock.advance(other.pollInterval)
        yield waiting
        self.assertEqual((yield watched.listMessages()), [])
        watched.removeListener(listener)
        self.assertEqual(other._polling, set())

    @defer.inlineCallbacks
    def test_readNoticesOtherStore(self):
        """
        Reading a mailbox notices another store's change and tells the
        listeners, without waiting for a poll.
        """
        other = self.openStore()
        other.clock = task.Clock()
        watched = yield self.inbox(other)
        listener = WaitingListener()
        watched.addListener(listener)
        inbox = yield self.inbox()
        waiting = listener.wait()
        yield inbox.append(BytesIO(message()))
        status = yield watched.status()
        self.assertEqual(status.messages, 1)
        yield waiting

    @defer.inlineCallbacks
    def test_deletedElsewhere(self):
        """
        A mailbox deleted through another store refuses work, and its
        listeners hear of it.
        """
        other = self.openStore()
        other.clock = task.Clock()
        account = yield self.store.getAccount(ALICE, create=True)
        yield account.createMailbox("Temp")
        temp = yield self.inbox(other, "Temp")
        listener = WaitingListener()
        temp.addListener(listener)
        waiting = listener.wait()
        yield account.deleteMailbox("Temp")
        other.clock.advance(other.pollInterval)
        yield waiting
        yield self.assertFailure(temp.listMessages(), NoSuchMailbox)
        yield self.assertFailure(temp.append(BytesIO(message())), NoSuchMailbox)
        yield account.createMailbox("Temp")
        fresh = yield self.inbox(other, "Temp")
        self.assertNotEqual(fresh.mailboxId, temp.mailboxId)
        self.assertGreater(fresh.uidValidity, temp.uidValidity)

    @defer.inlineCallbacks
    def test_uidsInterleaved(self):
        """
        Two stores appending at once to one mailbox never hand out the same
        UID, and every message is there.
        """
        other = self.openStore()
        mine = yield self.inbox()
        theirs = yield self.inbox(other)
        appends = []
        for i in range(20):
            appends.append(mine.append(BytesIO(message(f"mine{i}"))))
            appends.append(theirs.append(BytesIO(message(f"theirs{i}"))))
        uids = yield defer.gatherResults(appends, consumeErrors=True)
        self.assertEqual(len(set(uids)), 40)
        infos = yield mine.listMessages()
        self.assertEqual(sorted(uids), [i.uid for i in infos])
        self.assertGreater((yield theirs.status()).uidNext, max(uids))

    @defer.inlineCallbacks
    def test_uidsOtherProcess(self):
        """
        Another process appending at the same time gets UIDs of its own.
        """
        mine = yield self.inbox()
        process = otherProcess(self.storeArguments(), "10")
        appends = [mine.append(BytesIO(message(f"mine{i}"))) for i in range(10)]
        output = yield process
        uids = yield defer.gatherResults(appends, consumeErrors=True)
        theirs = [int(u) for u in output.split()]
        self.assertEqual(len(theirs), 10, output)
        self.assertEqual(len(set(uids) | set(theirs)), 20)
        self.assertEqual(len((yield mine.listMessages())), 20)

    @defer.inlineCallbacks
    def test_lockAcrossStores(self):
        """
        The exclusive lock excludes a session of another store on the same
        database, and one in another process.
        """
        other = self.openStore()
        mine = yield self.inbox()
        theirs = yield self.inbox(other)
        release = yield mine.lockExclusive()
        yield self.assertFailure(theirs.lockExclusive(), MailboxLocked)
        self.assertEqual((yield otherProcess(self.storeArguments(), "lock")), "locked")
        release()
        release()
        again = yield theirs.lockExclusive()
        yield self.assertFailure(mine.lockExclusive(), MailboxLocked)
        again()
        self.assertEqual((yield otherProcess(self.storeArguments(), "lock")), "free")
        (yield mine.lockExclusive())()

    @defer.inlineCallbacks
    def test_renameFollowed(self):
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

    @defer.inlineCallbacks
    def test_manyUIDs(self):
        """
        Flag changes and expunges over more UIDs than one IN list holds.
        """
        inbox = yield self.inbox()
        uids = []
        for i in range(3):
            uids.append((yield inbox.append(BytesIO(message()))))
        wanted = list(range(1, 1200)) + uids
        infos = yield inbox.setFlags(wanted, ["\\Deleted"], "add")
        self.assertEqual([i.uid for i in infos], uids)
        self.assertEqual((yield inbox.expunge(wanted)), uids)


class SQLiteSharedDatabaseTests(SQLiteDatabaseMixin, SharedDatabaseTestsMixin, unittest.TestCase):
    """
    Several SQLite stores (and processes) on one file.
    """

    def test_pollStopsWithoutListeners(self) -> None:
        """
        The change poll runs only while a mailbox has listeners.
        """

        @defer.inlineCallbacks
        def run():
            self.store.clock = task.Clock()
            inbox = yield self.inbox()
            listener = WaitingListener()
            inbox.addListener(listener)
            self.assertEqual(len(self.store.clock.getDelayedCalls()), 1)
            inbox.removeListener(listener)
            self.assertEqual(self.store.clock.getDelayedCalls(), [])

        return run()

    @defer.inlineCallbacks
    def test_newerSchemaRefused(self):
        """
        A database at a newer schema version is refused, naming both
        versions, and left byte for byte as it was.
        """
        yield self.store.close()
        conn = sqlite3.connect(self.databasePath())
        conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, 0)", (LATEST_VERSION + 1,))
        conn.commit()
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.close()
        with open(self.databasePath(), "rb") as f:
            before = f.read()
        error = self.assertRaises(SchemaTooNew, SQLStore.sqlite, self.databasePath())
        self.assertIn(f"version {LATEST_VERSION + 1}", str(error))
        self.assertIn(self.databasePath(), str(error))
        with open(self.databasePath(), "rb") as f:
            self.assertEqual(f.read(), before)
        error = self.assertRaises(ConfigError, SQLStoreFactory().makeStore, "sqlite:" + self.databasePath(), "/nonexistent")
        self.assertIn("newer", str(error))

    @defer.inlineCallbacks
    def test_groupCommit(self):
        """
        Writes queued while the worker is busy share one commit; one that
        fails is rolled back alone.
        """
        import threading

        from mailplat.errors import MailboxError

        database = self.store.database
        go = threading.Event()

        def blocker(txn: Any) -> None:
            go.wait(WAIT)

        def write(txn: Any, n: int) -> int:
            txn.execute("INSERT INTO domains (name) VALUES (?)", (f"d{n}.test",))
            if n == 3:
                raise MailboxError("refused")
            return n

        blocked = database.run(blocker)
        before = database.writeCommits
        writes = [database.run(write, n, write=True) for n in range(8)]
        go.set()
        yield blocked
        results = yield defer.DeferredList(writes, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [n != 3 for n in range(8)])
        results[3][1].trap(MailboxError)
        self.assertEqual(database.writeCommits, before + 1)
        self.assertEqual(sorted(r[0] for r in self.rawQuery("SELECT name FROM domains")), [f"d{n}.test" for n in range(8) if n != 3])

    def test_walAndFull(self) -> None:
        """
        The database is in WAL mode.
        """
        self.assertEqual(self.rawQuery("PRAGMA journal_mode"), [("wal",)])

    def test_notADatabase(self) -> None:
        path = os.path.join(os.path.dirname(self.databasePath()), "junk")
        with open(path, "wb") as f:
            f.write(b"this is not a database" * 100)
        error = self.assertRaises(ConfigError, SQLStoreFactory().makeStore, "sqlite:" + path, "/nonexistent")
        self.assertIn(path, str(error))


class PostgresSharedDatabaseTests(PostgresDatabaseMixin, SharedDatabaseTestsMixin, unittest.TestCase):
    """
    Several PostgreSQL stores (and processes) on one schema.
    """

    @defer.inlineCallbacks
    def test_tablesOnFirstUseByTwoNodesAtOnce(self):
        """
        Two nodes whose first transactions make the same table at the same
        time (greylisting, failed logins) both succeed: the second waits
        for the first to commit, where PostgreSQL's C{CREATE TABLE IF NOT
        EXISTS} alone would fail it on the first's uncommitted table.
        """
        import threading

        import psycopg

        from mailplat.store.sql.database import PostgresDatabase, TablesOnFirstUse, firstUseLockKey

        nodes = [PostgresDatabase(POSTGRES, self.schema, poolSize=1) for _ in range(2)]
        for node in nodes:
            self.addCleanup(node.close)
        statements = ["CREATE TABLE IF NOT EXISTS first_use (k TEXT PRIMARY KEY)"]
        first, second = (TablesOnFirstUse(node, statements) for node in nodes)
        key = firstUseLockKey(nodes[0])
        xids: List[int] = []
        release = threading.Event()

        def holdUntilReleased(txn):
            # This transaction has made the table, not committed it: held
            # (in its pool thread) until the test has seen the other node
            # wait on it.
            xids.append(txn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])
            if not release.wait(30):
                raise AssertionError("never released")
            txn.execute("INSERT INTO first_use VALUES ('first')")

        @defer.inlineCallbacks
        def until(condition):
            # The databases' state is outside this process: asked again
            # each turn of the reactor, for at most 20 seconds.
            for _ in range(4000):
                if condition():
                    return
                yield task.deferLater(reactor, 0.005, lambda: None)
            raise AssertionError("never happened")

        def otherWaits():
            # On the advisory lock, or on the first transaction itself.
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                return conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND ((locktype = 'advisory'"
                    " AND ((classid::bigint << 32) | objid::bigint) = %s)"
                    " OR (locktype = 'transactionid' AND transactionid::text::bigint = %s))",
                    (key, xids[0])).fetchone()[0] > 0

        made = first.run(holdUntilReleased)
        made.addBoth(lambda result: (release.set(), result)[1])
        try:
            yield until(lambda: bool(xids))
            also = second.run(lambda txn: txn.execute("INSERT INTO first_use VALUES ('second')"))
            yield until(otherWaits)
        finally:
            release.set()
        yield defer.gatherResults([made, also], consumeErrors=True)
        self.assertEqual(self.rawQuery("SELECT k FROM first_use ORDER BY k"), [("first",), ("second",)])

    @defer.inlineCallbacks
    def test_notifyWithoutPolling(self):
        """
        On PostgreSQL another store's append is pushed (NOTIFY): no poll,
        no read needed.
        """
        other = self.openStore()
        other.clock = task.Clock()
        watched = yield self.inbox(other)
        listener = WaitingListener()
        watched.addListener(listener)
        self.assertEqual(other.clock.getDelayedCalls(), [])
        waiting = listener.wait()
        inbox = yield self.inbox()
        yield inbox.append(BytesIO(message()))
        yield waiting
        self.assertEqual(listener.calls, 1)

    @defer.inlineCallbacks
    def test_newerSchemaRefused(self):
        """
        A schema at a newer version is refused, naming it; nothing in it
        changes.
        """
        yield self.store.close()
        self.rawQueryCommit("INSERT INTO schema_version (version, applied) VALUES (%s, 0)", (LATEST_VERSION + 1,))
        before = self.rawQuery("SELECT version, applied FROM schema_version ORDER BY version")
        error = self.assertRaises(SchemaTooNew, SQLStore.postgresql, POSTGRES, self.schema)
        self.assertIn(f"version {LATEST_VERSION + 1}", str(error))
        self.assertIn(self.schema, str(error))
        self.assertEqual(self.rawQuery("SELECT version, applied FROM schema_version ORDER BY version"), before)

    def rawQueryCommit(self, sql: str, params: tuple) -> None:
        import psycopg

        with psycopg.connect(POSTGRES, options=f"-c search_path={self.schema}") as conn:
            conn.execute(sql, params)

    def test_factorySchema(self) -> None:
        """
        The factory takes the schema from the URL.
        """
        store = SQLStoreFactory().makeStore(f"{POSTGRES}?schema={self.schema}", "/nonexistent")
        self.addCleanup(store.close)
        self.assertIn(self.schema, store.database.description)
        self.assertEqual(store.database.schema, self.schema)


class FlagEncodingTests(unittest.TestCase):
    """
    System flags as bits, keywords as given.
    """

    def test_roundTrip(self) -> None:
        for flags in [frozenset(), frozenset(["\\Seen", "\\Draft"]), frozenset(["\\Deleted", "$Label1", "Entw\u00fcrfe"])]:
            self.assertEqual(decodeFlags(*encodeFlags(flags)), flags)
        self.assertEqual(encodeFlags(["\\Seen", "\\Flagged"]), (5, ""))


class FactoryTests(unittest.TestCase):
    """
    The C{sql} store plugin and its argument string.
    """

    def test_interface(self) -> None:
        factory = SQLStoreFactory()
        self.assertTrue(verifyObject(IStoreFactory, factory))
        self.assertEqual(factory.storeName, "sql")

    def test_defaultFile(self) -> None:
        dataDir = self.mktemp()
        store = SQLStoreFactory().makeStore("", dataDir)
        self.addCleanup(store.close)
        self.assertEqual(store.database.path, os.path.abspath(os.path.join(dataDir, "mailplat.sqlite3")))
        self.assertTrue(os.path.exists(store.database.path))

    def test_givenFile(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "x.db")
        store = SQLStoreFactory().makeStore("sqlite:" + path, "/nonexistent")
        self.addCleanup(store.close)
        self.assertEqual(store.database.path, path)

    def test_badArguments(self) -> None:
        factory = SQLStoreFactory()
        for bad, says in [
            ("mysql://x", "cannot read 'mysql://x'"),
            ("sqlite:", "needs the database file"),
            ("postgresql://h/db?schema=Bad-Name", "Bad-Name"),
            ("postgresql://h/db?schema=a&schema=b", "once"),
            ("sqlite:/nonexistent/dir/x.db", "/nonexistent/dir"),
        ]:
            error = self.assertRaises(ConfigError, factory.makeStore, bad, "/nonexistent")
            self.assertIn(says, str(error))

    def test_parse(self) -> None:
        spec = parseDatabaseSpec("postgresql://u:pw@db.example:6543/mail?schema=node_a&sslmode=require", "/d")
        self.assertEqual((spec.kind, spec.schema), ("postgresql", "node_a"))
        self.assertEqual(spec.dsn, "postgresql://u:pw@db.example:6543/mail?sslmode=require")
        self.assertEqual(parseDatabaseSpec("", "/d").path, "/d/mailplat.sqlite3")

    def test_unreachable(self) -> None:
        """
        An unreachable server is one clear line naming host and port (and
        not the password).
        """
        error = self.assertRaises(
            ConfigError, SQLStoreFactory().makeStore, "postgresql://u:secret@127.0.0.1:1/mail", "/nonexistent"
        )
        self.assertIn("127.0.0.1:1", str(error))
        self.assertNotIn("secret", str(error))
        self.assertNotIn("\n", str(error))


class CheckerTestsMixin:
    """
    The C{sql} checker against users written through the store.
    """

    def checkerArgument(self) -> str:
        raise NotImplementedError()

    def setUp(self) -> Any:
        result = super().setUp()
        self.store = self.makeStore()
        self.addCleanup(self.store.close)
        return result

    @defer.inlineCallbacks
    def test_checker(self):
        factory = SQLCheckerFactory()
        self.assertTrue(verifyObject(ICheckerFactory, factory))
        self.assertEqual(factory.authType, "sql")
        yield self.store.setUserPassword("Alice@Example.TEST", "right horse")
        checker = factory.generateChecker(self.checkerArgument())
        avatarId = yield checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"right horse"))
        self.assertEqual(avatarId, ALICE.encode())
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"wrong")), UnauthorizedLogin)
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(BOB.encode(), b"right horse")), UnauthorizedLogin)
        yield self.store.setUserPassword(ALICE, "new one")
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"right horse")), UnauthorizedLogin)
        self.assertEqual((yield checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"new one"))), ALICE.encode())
        self.assertTrue((yield self.store.deleteUser(ALICE)))
        self.assertFalse((yield self.store.deleteUser(ALICE)))
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"new one")), UnauthorizedLogin)

    def test_checkerArguments(self) -> None:
        self.assertRaises(ConfigError, SQLCheckerFactory().generateChecker, "")
        self.assertRaises(ConfigError, SQLCheckerFactory().generateChecker, "nonsense")


class SQLiteCheckerTests(SQLiteDatabaseMixin, CheckerTestsMixin, unittest.TestCase):
    def checkerArgument(self) -> str:
        return "sqlite:" + self.databasePath()


class PostgresCheckerTests(PostgresDatabaseMixin, CheckerTestsMixin, unittest.TestCase):
    def checkerArgument(self) -> str:
        return f"{POSTGRES}?schema={self.schema}"


class ACLMigrationTests(unittest.TestCase):
    """
    A database written before ACLs (schema version 1) gains the
    C{mailbox_acl} table when a store opens it, its mail untouched.
    """

    @defer.inlineCallbacks
    def test_upgradeFromVersion1(self):
        from mailplat.store.sql.schema import MIGRATIONS, SQLITE, VERSION_TABLE

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "old.sqlite3")
        conn = sqlite3.connect(path)
        conn.execute(SQLITE.render(VERSION_TABLE))
        for statement in MIGRATIONS[0][1]:
            conn.execute(SQLITE.render(statement))
        conn.execute("INSERT INTO schema_version (version, applied) VALUES (1, 0)")
        conn.execute("INSERT INTO accounts (address) VALUES (?)", (ALICE,))
        conn.execute("INSERT INTO mailboxes (account_id, name, uidvalidity) VALUES (1, 'INBOX', 7)")
        conn.commit()
        conn.close()
        store = SQLStore.sqlite(path)
        self.addCleanup(store.close)
        account = yield store.getAccount(ALICE)
        self.assertEqual((yield account.getACL("INBOX")), {})
        yield account.setACL("INBOX", BOB, "lr")
        self.assertEqual((yield store.sharedWith(BOB)), [(ALICE, "INBOX", "lr")])
        mailbox = yield account.getMailbox("INBOX")
        self.assertEqual(mailbox.uidValidity, 7)
        conn = sqlite3.connect(path)
        try:
            versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        finally:
            conn.close()
        self.assertEqual(versions, [(v,) for v in range(1, LATEST_VERSION + 1)])
