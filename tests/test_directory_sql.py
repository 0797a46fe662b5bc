"""
Tests for L{mailplat.delivery.sqldirectory}: the directory (virtual domains,
aliases, catch-alls, moved addresses) kept in the SQL store's database, on
SQLite and on PostgreSQL.

The behaviours of C{tests.test_directory} are run again on the tables.  The
PostgreSQL tests run when C{MAILPLAT_TEST_POSTGRES} holds a DSN; each test
works in a schema of its own, dropped afterwards.
"""

import io
import os
import sqlite3
import uuid
from types import SimpleNamespace
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from mailplat.admin import directory_cmd
from mailplat.delivery.directory import DirectoryFile, StoreDirectory
from mailplat.delivery.sqldirectory import SQLDirectoryFile, directoryFor
from mailplat.errors import ConfigError, StoreError
from mailplat.store.memory import MemoryStore
from mailplat.store.sql.config import DatabaseSpec
from mailplat.store.sql.schema import DIRECTORY_LATEST_VERSION, LATEST_VERSION, MIGRATIONS, POSTGRESQL, SQLITE, VERSION_TABLE
from tests import test_directory

POSTGRES = os.environ.get("MAILPLAT_TEST_POSTGRES", "")
NO_POSTGRES = "MAILPLAT_TEST_POSTGRES is not set (e.g. postgresql://postgres@127.0.0.1:5432/test); PostgreSQL tests skipped"


class _SQLiteDatabase:
    """
    Each test gets a fresh SQLite file.
    """

    kind = "sqlite"

    def setUpDatabase(self) -> None:
        directory = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(directory)
        self.dataDir = directory
        self.dbPath = os.path.join(directory, "mailplat.sqlite3")

    def spec(self) -> DatabaseSpec:
        return DatabaseSpec("sqlite", path=self.dbPath)

    def storeSpec(self) -> str:
        return "sql:sqlite:" + self.dbPath

    def rawQuery(self, query: str) -> List[tuple]:
        conn = sqlite3.connect(self.dbPath)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    def rawExecute(self, query: str) -> None:
        conn = sqlite3.connect(self.dbPath)
        try:
            conn.execute(query)
            conn.commit()
        finally:
            conn.close()


class _PostgresDatabase:
    """
    Each test gets a fresh schema of the C{MAILPLAT_TEST_POSTGRES} database,
    dropped afterwards.
    """

    kind = "postgresql"
    if not POSTGRES:
        skip = NO_POSTGRES

    def setUpDatabase(self) -> None:
        self.dataDir = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(self.dataDir)
        self.schema = self.newSchema()

    def newSchema(self) -> str:
        """
        A fresh schema name, dropped at the end of the test (after the
        directories opened from then on are closed).
        """
        import psycopg
        from psycopg import sql

        schema = "mp_test_" + uuid.uuid4().hex[:16]

        def drop() -> None:
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

        self.addCleanup(drop)  # type: ignore[attr-defined]
        return schema

    def spec(self) -> DatabaseSpec:
        return DatabaseSpec("postgresql", dsn=POSTGRES, schema=self.schema)

    def storeSpec(self) -> str:
        return "sql:" + POSTGRES + ("&" if "?" in POSTGRES else "?") + "schema=" + self.schema

    def rawQuery(self, query: str) -> List[tuple]:
        import psycopg

        with psycopg.connect(POSTGRES, options=f"-c search_path={self.schema}") as conn:
            return conn.execute(query).fetchall()

    def rawExecute(self, query: str) -> None:
        import psycopg

        with psycopg.connect(POSTGRES, options=f"-c search_path={self.schema}", autocommit=True) as conn:
            conn.execute(query)


class _Opening:
    """
    Opens directories on the test's database, closed at the end.
    """

    def openDirectory(self) -> SQLDirectoryFile:
        directory = SQLDirectoryFile(self.spec())  # type: ignore[attr-defined]
        self.addCleanup(directory.close)  # type: ignore[attr-defined]
        return directory


class _TableTests(_Opening):
    """
    L{SQLDirectoryFile}'s admin API and its tables; the tests of
    L{test_directory.DirectoryFileTests} that do not read the JSON file.
    """

    def setUp(self) -> None:
        self.setUpDatabase()  # type: ignore[attr-defined]
        self.file = self.openDirectory()

    test_missingFile = test_directory.DirectoryFileTests.test_missingFile
    test_domains = test_directory.DirectoryFileTests.test_domains
    test_aliases = test_directory.DirectoryFileTests.test_aliases

    def test_persistentAndReloaded(self) -> None:
        """
        Another instance (a running server) sees changes at once; they are
        rows of C{domains}, C{aliases} and C{moved}.
        """
        other = self.openDirectory()
        self.assertEqual(other.listDomains(), [])  # type: ignore[attr-defined]
        self.file.addDomain("example.test")
        self.file.addAlias("a@example.test", ["b@example.test"])
        self.file.setMoved("c@example.test", "c@new.test")
        self.assertEqual(other.listDomains(), ["example.test"])  # type: ignore[attr-defined]
        self.assertEqual(other.lookup("a@example.test"), ["b@example.test"])  # type: ignore[attr-defined]
        self.assertEqual(other.movedTo("c@example.test"), "c@new.test")  # type: ignore[attr-defined]
        self.file.removeAlias("a@example.test")
        self.assertIsNone(other.lookup("a@example.test"))  # type: ignore[attr-defined]
        rawQuery: Any = self.rawQuery  # type: ignore[attr-defined]
        self.assertEqual(rawQuery("SELECT name FROM domains"), [("example.test",)])  # type: ignore[attr-defined]
        self.assertEqual(rawQuery("SELECT address, target FROM moved"), [("c@example.test", "c@new.test")])  # type: ignore[attr-defined]

    def test_targetOrderKept(self) -> None:
        """
        Targets come back in the order they were added, not sorted.
        """
        self.file.addAlias("a@example.test", ["z@example.test"])
        self.file.addAlias("a@example.test", ["b@example.test", "z@example.test", "m@far.test"])
        other = self.openDirectory()
        self.assertEqual(other.lookup("a@example.test"), ["z@example.test", "b@example.test", "m@far.test"])  # type: ignore[attr-defined]

    def test_removeDomainKeepsOtherAliases(self) -> None:
        """
        Removing a domain removes its aliases and catch-all, not those of
        another domain.
        """
        self.file.addDomain("a.test")
        self.file.addDomain("b.test")
        self.file.addAlias("x@a.test", ["y@b.test"])
        self.file.addAlias("@a.test", ["y@b.test"])
        self.file.addAlias("x@b.test", ["y@a.test"])
        self.file.removeDomain("a.test")
        self.assertEqual(self.file.listAliases(), [("x@b.test", ["y@a.test"])])  # type: ignore[attr-defined]

    def test_handEditsWithSerial(self) -> None:
        """
        A row written by hand is seen once C{directory_serial} is increased.
        """
        self.assertEqual(self.file.listDomains(), [])  # type: ignore[attr-defined]
        self.rawExecute("INSERT INTO domains (name) VALUES ('hand.test')")  # type: ignore[attr-defined]
        self.rawExecute("UPDATE directory_serial SET serial = serial + 1 WHERE id = 1")  # type: ignore[attr-defined]
        self.assertEqual(self.file.listDomains(), ["hand.test"])  # type: ignore[attr-defined]

    def test_moved(self) -> None:
        """
        Moved addresses: set, replace, remove, errors.
        """
        self.assertEqual(self.file.setMoved("Carol@Example.test", "carol@new.example"), "carol@new.example")
        self.file.setMoved("carol@example.test", "carol@newer.example")
        self.assertEqual(self.file.listMoved(), [("carol@example.test", "carol@newer.example")])  # type: ignore[attr-defined]
        self.file.removeMoved("carol@example.test")
        self.assertIsNone(self.file.movedTo("carol@example.test"))  # type: ignore[attr-defined]
        self.assertRaises(ConfigError, self.file.removeMoved, "carol@example.test")  # type: ignore[attr-defined]
        self.assertRaises(ConfigError, self.file.setMoved, "carol@example.test", "not an address")  # type: ignore[attr-defined]
        self.assertRaises(ConfigError, self.file.setMoved, "carol@example.test", "Carol@example.test")  # type: ignore[attr-defined]
        self.assertEqual(self.file.listMoved(), [])  # type: ignore[attr-defined]

    def test_openedAgain(self) -> None:
        """
        Opening the database again applies nothing and keeps the data.
        """
        self.file.addDomain("a.test")
        other = self.openDirectory()
        self.assertEqual(other.listDomains(), ["a.test"])  # type: ignore[attr-defined]
        self.assertEqual(self.rawQuery("SELECT version FROM directory_schema_version"), [(DIRECTORY_LATEST_VERSION,)])  # type: ignore[attr-defined]

    def test_newerDirectoryRefused(self) -> None:
        """
        Directory tables written by a newer mailplat are refused.
        """
        self.rawExecute(f"INSERT INTO directory_schema_version (version, applied) VALUES ({DIRECTORY_LATEST_VERSION + 1}, 0)")  # type: ignore[attr-defined]
        error = self.assertRaises(StoreError, SQLDirectoryFile, self.spec())  # type: ignore[attr-defined]
        self.assertIn(f"directory schema version {DIRECTORY_LATEST_VERSION + 1}", str(error))  # type: ignore[attr-defined]

    def test_failedChangeLeavesNothing(self) -> None:
        """
        A refused change is rolled back whole (the serial included).
        """
        self.file.addDomain("a.test")
        before = self.rawQuery("SELECT serial FROM directory_serial")  # type: ignore[attr-defined]
        self.assertRaises(ConfigError, self.file.addDomain, "a.test")  # type: ignore[attr-defined]
        self.assertRaises(ConfigError, self.file.removeAlias, "x@a.test")  # type: ignore[attr-defined]
        self.assertEqual(self.rawQuery("SELECT serial FROM directory_serial"), before)  # type: ignore[attr-defined]


class SQLiteTableTests(_SQLiteDatabase, _TableTests, SynchronousTestCase):
    """
    L{SQLDirectoryFile} on SQLite.
    """

    def test_olderDatabase(self) -> None:
        """
        A store database without the directory's tables gets them; its
        aliases (no order recorded) are kept, sorted by target.
        """
        self.dbPath = os.path.join(self.dataDir, "old.sqlite3")
        conn = sqlite3.connect(self.dbPath, isolation_level=None)
        conn.execute(SQLITE.render(VERSION_TABLE))
        for statement in MIGRATIONS[0][1]:
            conn.execute(SQLITE.render(statement))
        conn.execute("INSERT INTO schema_version (version, applied) VALUES (1, 0)")
        conn.execute("INSERT INTO domains (name) VALUES ('old.test')")
        conn.execute("INSERT INTO aliases (address, target) VALUES ('a@old.test', 'z@old.test'), ('a@old.test', 'b@old.test')")
        conn.close()
        directory = self.openDirectory()
        self.assertEqual(directory.listDomains(), ["old.test"])
        self.assertEqual(directory.lookup("a@old.test"), ["b@old.test", "z@old.test"])
        directory.addAlias("a@old.test", ["c@old.test"])
        self.assertEqual(directory.lookup("a@old.test"), ["b@old.test", "z@old.test", "c@old.test"])
        self.assertEqual(self.rawQuery("SELECT MAX(version) FROM schema_version"), [(LATEST_VERSION,)])
        self.assertEqual(self.rawQuery("SELECT version FROM directory_schema_version"), [(DIRECTORY_LATEST_VERSION,)])


class PostgresTableTests(_PostgresDatabase, _TableTests, SynchronousTestCase):
    """
    L{SQLDirectoryFile} on PostgreSQL.
    """

    def test_olderSchema(self) -> None:
        """
        A store schema without the directory's tables gets them; its
        aliases are kept.
        """
        import psycopg

        self.schema = self.newSchema()
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
        with psycopg.connect(POSTGRES, options=f"-c search_path={self.schema}") as conn:
            conn.execute(POSTGRESQL.render(VERSION_TABLE))
            for statement in MIGRATIONS[0][1]:
                conn.execute(POSTGRESQL.render(statement))
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (1, 0)")
            conn.execute("INSERT INTO domains (name) VALUES ('old.test')")
            conn.execute("INSERT INTO aliases (address, target) VALUES ('a@old.test', 'z@old.test'), ('a@old.test', 'b@old.test')")
        directory = self.openDirectory()
        self.assertEqual(directory.listDomains(), ["old.test"])
        self.assertEqual(directory.lookup("a@old.test"), ["b@old.test", "z@old.test"])
        directory.addAlias("a@old.test", ["c@old.test"])
        self.assertEqual(directory.lookup("a@old.test"), ["b@old.test", "z@old.test", "c@old.test"])
        self.assertEqual(self.rawQuery("SELECT MAX(version) FROM schema_version"), [(LATEST_VERSION,)])
        self.assertEqual(self.rawQuery("SELECT version FROM directory_schema_version"), [(DIRECTORY_LATEST_VERSION,)])

    def test_lostConnection(self) -> None:
        """
        A read after the connection was lost connects again.
        """
        self.file.addDomain("a.test")
        self.file._conn.close()
        self.assertEqual(self.file.listDomains(), ["a.test"])


class _ResolutionTests(_Opening):
    """
    L{StoreDirectory} over the tables: the tests of
    L{test_directory.ResolutionTests}, the server reading through an
    instance other than the one the changes are made with.
    """

    def setUp(self) -> None:
        self.setUpDatabase()  # type: ignore[attr-defined]
        self.store = MemoryStore()
        for a in ["alice@example.test", "bob@example.test", "carol@virtual.test"]:
            self.successResultOf(self.store.getAccount(a, create=True))  # type: ignore[attr-defined]
        self.file = self.openDirectory()
        self.file.addDomain("virtual.test")
        self.directory = StoreDirectory(self.store, file=self.openDirectory())

    expand = test_directory.ResolutionTests.expand

    def test_configuredDomainsAndVirtual(self) -> None:
        directory = StoreDirectory(self.store, ["example.test"], file=self.file)
        self.assertTrue(self.successResultOf(directory.isLocalDomain("virtual.test")))  # type: ignore[attr-defined]
        self.assertTrue(self.successResultOf(directory.isLocalDomain("example.test")))  # type: ignore[attr-defined]

    def test_plusOff(self) -> None:
        directory = StoreDirectory(self.store, file=self.file, plusDelimiter="")
        self.assertEqual(self.successResultOf(directory.resolve("alice+x@example.test")), [])  # type: ignore[attr-defined]

    def test_moved(self) -> None:
        """
        L{StoreDirectory.movedTo} reads the C{moved} table.
        """
        self.file.setMoved("Carol@Example.test", "carol@new.example")
        self.assertEqual(self.successResultOf(self.directory.movedTo("CAROL@example.test")), "carol@new.example")  # type: ignore[attr-defined]
        self.assertIsNone(self.successResultOf(self.directory.movedTo("alice@example.test")))  # type: ignore[attr-defined]


for _name in dir(test_directory.ResolutionTests):
    if _name.startswith("test_") and not hasattr(_ResolutionTests, _name):
        setattr(_ResolutionTests, _name, getattr(test_directory.ResolutionTests, _name))
del _name


class SQLiteResolutionTests(_SQLiteDatabase, _ResolutionTests, SynchronousTestCase):
    """
    Resolution with the directory in SQLite.
    """


class PostgresResolutionTests(_PostgresDatabase, _ResolutionTests, SynchronousTestCase):
    """
    Resolution with the directory in PostgreSQL.
    """


class _CommandTests:
    """
    C{mailplat domain ...} and C{mailplat alias ...} with the C{sql} store.
    """

    def setUp(self) -> None:
        self.setUpDatabase()  # type: ignore[attr-defined]
        self.config = SimpleNamespace(dataDir=self.dataDir, store=self.storeSpec())  # type: ignore[attr-defined]

    def command(self, options: Any, *argv: str) -> str:
        options.parseOptions(list(argv))
        out = io.StringIO()
        self.successResultOf(directory_cmd.run(options, self.config, out))  # type: ignore[attr-defined]
        return out.getvalue()

    def serverDirectory(self) -> StoreDirectory:
        file = directoryFor(self.config.store, self.config.dataDir)
        self.addCleanup(file.close)  # type: ignore[attr-defined, union-attr]
        return StoreDirectory(MemoryStore(), file=file)

    def test_domainSeenByRunningServer(self) -> None:
        """
        A domain added by the admin command is local for a StoreDirectory
        already running on the same database, at once; removing it too.
        """
        directory = self.serverDirectory()
        self.assertFalse(self.successResultOf(directory.isLocalDomain("example.test")))  # type: ignore[attr-defined]
        self.assertEqual(self.command(directory_cmd.DomainOptions(), "add", "Example.test"), "added domain example.test\n")
        self.assertTrue(self.successResultOf(directory.isLocalDomain("example.test")))  # type: ignore[attr-defined]
        self.assertEqual(self.command(directory_cmd.DomainOptions(), "list"), "example.test\n")  # type: ignore[attr-defined]
        self.command(directory_cmd.DomainOptions(), "remove", "example.test")
        self.assertFalse(self.successResultOf(directory.isLocalDomain("example.test")))  # type: ignore[attr-defined]
        self.assertFalse(os.path.exists(os.path.join(self.config.dataDir, "directory.json")))  # type: ignore[attr-defined]

    def test_aliasSeenByRunningServer(self) -> None:
        directory = self.serverDirectory()
        self.command(directory_cmd.DomainOptions(), "add", "example.test")
        self.command(directory_cmd.AliasOptions(), "add", "team@example.test", "a@example.test", "b@far.test")
        self.assertEqual(self.command(directory_cmd.AliasOptions(), "list"), "team@example.test -> a@example.test, b@far.test\n")  # type: ignore[attr-defined]
        resolution = self.successResultOf(directory.expand("team@example.test"))  # type: ignore[attr-defined]
        self.assertEqual(resolution.remote, ["b@far.test"])  # type: ignore[attr-defined]
        self.command(directory_cmd.AliasOptions(), "remove", "team@example.test", "b@far.test")
        self.assertEqual(self.command(directory_cmd.AliasOptions(), "list"), "team@example.test -> a@example.test\n")  # type: ignore[attr-defined]

    def test_errors(self) -> None:
        options = directory_cmd.DomainOptions()
        options.parseOptions(["remove", "nothere.test"])
        self.failureResultOf(directory_cmd.run(options, self.config, io.StringIO()), ConfigError)  # type: ignore[attr-defined]


class SQLiteCommandTests(_SQLiteDatabase, _CommandTests, SynchronousTestCase):
    """
    The commands on SQLite.
    """


class PostgresCommandTests(_PostgresDatabase, _CommandTests, SynchronousTestCase):
    """
    The commands on PostgreSQL.
    """


class DirectoryForTests(SynchronousTestCase):
    """
    L{directoryFor} picks the directory from the store's spec.
    """

    def test_files(self) -> None:
        dataDir = self.mktemp()
        for spec in ["maildir", "mbox:whatever", "memory"]:
            directory = directoryFor(spec, dataDir)
            self.assertIsInstance(directory, DirectoryFile)
            self.assertEqual(directory.path, os.path.join(dataDir, "directory.json"))  # type: ignore[union-attr]

    def test_defaultSQLite(self) -> None:
        """
        C{sql} alone is the store's default SQLite file in the data
        directory.
        """
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        directory = directoryFor("sql", dataDir)
        self.addCleanup(directory.close)  # type: ignore[union-attr]
        self.assertIsInstance(directory, SQLDirectoryFile)
        directory.addDomain("example.test")
        self.assertTrue(os.path.exists(os.path.join(dataDir, "mailplat.sqlite3")))

    def test_badSpec(self) -> None:
        self.assertRaises(ConfigError, directoryFor, "sql:nonsense", self.mktemp())

    def test_unusableDatabase(self) -> None:
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        path = os.path.join(dataDir, "not-a-db")
        with open(path, "wb") as f:
            f.write(b"this is not a SQLite database" * 100)
        self.assertRaises(ConfigError, directoryFor, "sql:sqlite:" + path, dataDir)
