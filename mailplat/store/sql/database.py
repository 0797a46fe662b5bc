"""
Running SQL off the reactor thread, for SQLite and PostgreSQL alike.

A L{Database} runs a function inside one transaction on a worker thread
and hands back a L{Deferred} that fires, on the reactor thread, once the
transaction has committed.  The function gets a L{Transaction}: a cursor
that takes C{?} markers in either dialect and can send a change
notification.

  - L{SQLiteDatabase}: one connection used by one dedicated worker thread
    (SQLite allows one writer anyway), WAL mode, C{synchronous=FULL}; a
    writing transaction starts with C{BEGIN IMMEDIATE}, so it takes the
    database's write lock up front and waits (C{busy_timeout}) for another
    process's writer instead of failing half way.  Writes that queue up
    while one commits share the next commit (group commit, one fsync).  Exclusive mailbox locks
    are C{flock}s on files in a directory beside the database.
  - L{PostgresDatabase}: a C{psycopg_pool} pool used from a bounded thread
    pool of the same size; C{LISTEN} on a dedicated connection read by its
    own thread; exclusive mailbox locks are C{pg_try_advisory_lock} on a
    dedicated connection held until release.

Opening either runs the schema migrations (L{mailplat.store.sql.schema})
synchronously: it happens once, at start, before anything is served.
"""

import fcntl
import hashlib
import os
import queue
import sqlite3
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mailplat.errors import MailplatError, StoreError
from mailplat.store.sql.schema import (
    POSTGRESQL,
    SQLITE,
    VERSION_TABLE,
    Dialect,
    checkVersion,
    pendingMigrations,
)

log = Logger()

# Seconds a SQLite statement waits for another process's write lock.
SQLITE_BUSY_TIMEOUT = 30.0

# How often a transaction that hit a PostgreSQL deadlock or serialization
# failure is tried again before the error is reported.
RETRIES = 3


def _describe(e: BaseException) -> str:
    """
    A database error in one line.
    """
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class Transaction:
    """
    The cursor a function run by L{Database.run} works with.

    @ivar dialect: the database's L{Dialect}.
    """

    def __init__(self, cursor: Any, dialect: Dialect, notifier: Optional[Callable[[Any, int], None]] = None) -> None:
        self._cursor = cursor
        self.dialect = dialect
        self._notifier = notifier

    def execute(self, sql: str, params: Sequence[Any] = ()) -> "Transaction":
        """
        Run one statement written with C{?} markers.
        """
        self._cursor.execute(self.dialect.sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """
        Run one statement for each row of parameters.
        """
        rows = [tuple(r) for r in rows]
        if rows:
            self._cursor.executemany(self.dialect.sql(sql), rows)

    def fetchone(self) -> Optional[tuple]:
        """
        The next row of the last statement, or L{None}.
        """
        return self._cursor.fetchone()

    def fetchrow(self) -> tuple:
        """
        The row of a statement that always gives one (an aggregate such as
        C{COUNT(*)}, an C{INSERT ... RETURNING}).
        """
        row = self._cursor.fetchone()
        assert row is not None, "the statement gave no row"
        return row

    def fetchall(self) -> List[tuple]:
        """
        The remaining rows of the last statement.
        """
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        """
        Rows changed by the last statement.
        """
        return self._cursor.rowcount

    def notify(self, mailboxId: int) -> None:
        """
        Tell other processes, once this transaction commits, that mailbox
        C{mailboxId} changed (PostgreSQL C{NOTIFY}; nothing on SQLite,
        whose readers compare state instead).
        """
        if self._notifier is not None:
            self._notifier(self, mailboxId)


def inClause(count: int) -> str:
    """
    C{(?, ?, ...)} with C{count} markers.
    """
    return "(" + ", ".join(["?"] * count) + ")"


def chunks(values: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    """
    C{values} in slices of at most C{size}, to keep C{IN} lists bounded.
    """
    for start in range(0, len(values), size):
        yield values[start:start + size]


class Database:
    """
    What L{mailplat.store.sql.store.SQLStore} needs of a database.

    @ivar dialect: the SQL dialect.
    @ivar description: names the database in messages (no password).
    @ivar polls: whether listeners must poll for changes made by other
        processes (no push notification).
    """

    dialect: Dialect
    description: str
    polls: bool

    def run(self, fn: Callable[..., Any], *args: Any, write: bool = False) -> defer.Deferred:
        """
        Run C{fn(transaction, *args)} in one transaction on a worker thread.

        @param write: the transaction writes (SQLite takes the write lock
            at its start).
        @return: a Deferred firing with C{fn}'s result once committed; a
            database error fails it with L{StoreError}.
        """
        raise NotImplementedError()

    def runBlocking(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """
        Run blocking work that needs no transaction (reading a message
        source) on a worker thread.
        """
        raise NotImplementedError()

    def startListening(self, callback: Callable[[int], None]) -> None:
        """
        Call C{callback(mailboxId)} on the reactor thread when another
        store changes a mailbox (where the database can push that).
        """

    def tryLock(self, mailboxId: int) -> defer.Deferred:
        """
        Take the exclusive lock of a mailbox without waiting.

        @return: a Deferred firing with a blocking release function, or
            with L{None} when another holder has the lock.
        """
        raise NotImplementedError()

    def close(self) -> defer.Deferred:
        """
        Close connections and stop threads.
        """
        raise NotImplementedError()


class TablesOnFirstUse:
    """
    Writes to tables of a L{Database} that are not part of the store's
    schema (soft state another module keeps there: greylisting, failed
    logins), made with C{CREATE ... IF NOT EXISTS} statements in the first
    transaction that runs, and not again once one has committed.  On
    PostgreSQL those first transactions take an advisory lock of the
    schema first: two nodes making the same table at once would otherwise
    collide in the catalog (C{IF NOT EXISTS} does not see a table another
    transaction has not committed yet), and one of them would fail.
    """

    def __init__(self, database: Database, statements: Sequence[str]) -> None:
        self.database = database
        self.statements = list(statements)
        self._made = False

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """
        C{fn(transaction, *args)} in one writing transaction (see
        L{Database.run}), after the statements while none has committed.
        """
        def inTransaction(txn: Transaction) -> Any:
            if not self._made:
                if txn.dialect is POSTGRESQL:
                    txn.execute("SELECT pg_advisory_xact_lock(?)", (firstUseLockKey(self.database),))
                for statement in self.statements:
                    txn.execute(statement)
            return fn(txn, *args)

        def made(result: Any) -> Any:
            self._made = True
            return result

        return self.database.run(inTransaction, write=True).addCallback(made)


def firstUseLockKey(database: Database) -> int:
    """
    The advisory lock key that L{TablesOnFirstUse} takes on C{database}'s
    schema (a PostgreSQL database).
    """
    return _advisoryKey("first-use:" + (getattr(database, "schema", None) or ""), -1)


def _mapErrors(f: Callable[[], Any], errorTypes: tuple, description: str) -> Any:
    try:
        return f()
    except MailplatError:
        raise
    except errorTypes as e:
        raise StoreError(f"Database error on {description}: {_describe(e)}") from e


def _sqliteVersion(conn: sqlite3.Connection) -> int:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone() is None:
        return 0
    return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]


def _sqliteSetUp(conn: sqlite3.Connection, description: str) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
    # Refuse a newer database before anything (journal mode included) is
    # changed in it.
    checkVersion(_sqliteVersion(conn), description)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _sqliteVersion(conn)
        checkVersion(current, description)
        if current == 0:
            conn.execute(SQLITE.render(VERSION_TABLE))
        for version, statements in pendingMigrations(current):
            for statement in statements:
                conn.execute(SQLITE.render(statement))
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, time.time()))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def openSQLite(path: str) -> sqlite3.Connection:
    """
    Open the SQLite database at C{path} (made if missing) the way the store
    uses it (autocommit mode, WAL, C{synchronous=FULL}, foreign keys) and
    bring its schema up to date.  Blocking.

    @raise StoreError: it cannot be opened, is not a database, or is newer
        than this code (L{mailplat.store.sql.schema.SchemaTooNew}).
    """
    description = f"SQLite database {path}"
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT)
    except sqlite3.Error as e:
        raise StoreError(f"Cannot open {description}: {_describe(e)}") from e
    try:
        _mapErrors(lambda: _sqliteSetUp(conn, description), (sqlite3.Error,), description)
    except BaseException:
        conn.close()
        raise
    return conn


_STOP = object()


class SQLiteDatabase(Database):
    """
    A SQLite database file used through one dedicated worker thread, with
    group commit: the writing transactions that queue up while one commits
    are run together, each in a savepoint of its own, under one C{BEGIN
    IMMEDIATE ... COMMIT} (one fsync for all of them).  A job that fails is
    rolled back to its savepoint alone; the Deferreds fire after the
    commit.

    @ivar path: the database file.
    @ivar writeCommits: how many writing transactions were committed (each
        may carry many jobs).
    @ivar maxBatch: the most jobs one commit carries.
    """

    dialect = SQLITE
    polls = True
    maxBatch = 256

    def __init__(self, path: str, reactor: Any = None) -> None:
        """
        Open (creating if need be) and migrate the database at C{path}.

        @raise StoreError: see L{openSQLite}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.path = os.path.abspath(path)
        self.description = f"SQLite database {self.path}"
        self._lockDir = self.path + ".locks"
        self._conn = openSQLite(self.path)
        self.writeCommits = 0
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._stopped: defer.Deferred = defer.Deferred()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="mailplat-sqlite", daemon=True)
        self._thread.start()

    # the worker thread

    def _work(self) -> None:
        held = None
        try:
            while True:
                job = held if held is not None else self._queue.get()
                held = None
                if job is _STOP:
                    break
                if not job[2]:
                    self._deliver([(job, self._runRead(job))])
                    continue
                batch = [job]
                while len(batch) < self.maxBatch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP or not more[2]:
                        held = more
                        break
                    batch.append(more)
                self._deliver(self._runWrites(batch))
        finally:
            self._conn.close()
            self._reactor.callFromThread(self._stopped.callback, None)

    def _failure(self) -> Failure:
        """
        The exception being handled as a Failure, a database error made a
        L{StoreError}.
        """
        e = sys.exc_info()[1]
        if isinstance(e, sqlite3.Error):
            return Failure(StoreError(f"Database error on {self.description}: {_describe(e)}"))
        return Failure()

    def _runRead(self, job: tuple) -> Tuple[bool, Any]:
        fn, args, _, _ = job
        conn = self._conn
        try:
            conn.execute("BEGIN")
            try:
                result = fn(Transaction(conn.cursor(), SQLITE), *args)
            finally:
                conn.execute("COMMIT")
        except BaseException:
            return False, self._failure()
        return True, result

    def _runWrites(self, batch: List[tuple]) -> List[Tuple[tuple, Tuple[bool, Any]]]:
        conn = self._conn
        outcomes: List[Tuple[tuple, Tuple[bool, Any]]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            failure = self._failure()
            return [(job, (False, failure)) for job in batch]
        try:
            for job in batch:
                fn, args, _, _ = job
                conn.execute("SAVEPOINT job")
                try:
                    result = fn(Transaction(conn.cursor(), SQLITE), *args)
                except BaseException:
                    outcomes.append((job, (False, self._failure())))
                    conn.execute("ROLLBACK TO job")
                else:
                    outcomes.append((job, (True, result)))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except BaseException:
            failure = self._failure()
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return [(job, (False, failure)) for job in batch]
        self.writeCommits += 1
        return outcomes

    def _deliver(self, outcomes: List[Tuple[tuple, Tuple[bool, Any]]]) -> None:
        def fire() -> None:
            for job, (ok, value) in outcomes:
                if ok:
                    job[3].callback(value)
                else:
                    job[3].errback(value)

        self._reactor.callFromThread(fire)

    # the reactor thread

    def run(self, fn: Callable[..., Any], *args: Any, write: bool = False) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError(f"{self.description} is closed"))
        d: defer.Deferred = defer.Deferred()
        self._queue.put((fn, args, write, d))
        return d

    def runBlocking(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    def tryLock(self, mailboxId: int) -> defer.Deferred:
        return self.runBlocking(self._tryLock, mailboxId)

    def _tryLock(self, mailboxId: int) -> Optional[Callable[[], None]]:
        os.makedirs(self._lockDir, exist_ok=True)
        fd = os.open(os.path.join(self._lockDir, f"{mailboxId}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise

        def release() -> None:
            os.close(fd)

        return release

    def forgetLock(self, mailboxId: int) -> None:
        """
        Remove the lock file of a deleted mailbox (ids are never reused).
        """
        try:
            os.unlink(os.path.join(self._lockDir, f"{mailboxId}.lock"))
        except OSError:
            pass

    @defer.inlineCallbacks
    def close(self):
        if self._closed:
            return None
        self._closed = True
        self._queue.put(_STOP)
        yield self._stopped
        self._thread.join()
        return None


def _advisoryKey(namespace: str, mailboxId: int) -> int:
    """
    The signed 64-bit advisory lock key of a mailbox; the schema is part of
    it because advisory locks are shared by the whole database.
    """
    digest = hashlib.sha256(f"mailplat-lock:{namespace}:{mailboxId}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _pgConnect(conninfo: str, description: str, autocommit: bool = False) -> Any:
    import psycopg

    try:
        return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=10)
    except psycopg.Error as e:
        raise StoreError(f"Cannot connect to {description}: {_describe(e)}") from e


def _pgVersion(conn: Any) -> int:
    if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return 0
    return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]


def _pgMigrate(conn: Any, schema: Optional[str], description: str) -> None:
    from psycopg import sql

    with conn.transaction():
        # One migrating process at a time per schema.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_advisoryKey(schema or "", -1),))
        current = _pgVersion(conn)
        checkVersion(current, description)
        if not pendingMigrations(current):
            return
        if schema:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        if current == 0:
            conn.execute(POSTGRESQL.render(VERSION_TABLE))
        for version, statements in pendingMigrations(current):
            for statement in statements:
                conn.execute(POSTGRESQL.render(statement))
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (%s, %s)", (version, time.time()))


def preparePostgres(dsn: str, schema: Optional[str] = None) -> Tuple[str, str]:
    """
    Connect to PostgreSQL once and bring the schema up to date (making
    C{schema} if missing).  Blocking.

    @param dsn: a libpq connection string or URL.
    @param schema: the schema to work in (put first in C{search_path} of
        every connection), or L{None}.
    @return: the libpq string every connection uses, and a description of
        the database for messages (host, port, database, schema; never the
        password).
    @raise StoreError: the string is bad, the server cannot be reached (the
        message names host and port), or the schema is newer than this code.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    extra: Dict[str, Any] = {}
    if schema:
        extra["options"] = f"-c search_path={schema}"
    try:
        conninfo = make_conninfo(dsn, **extra)
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as e:
        raise StoreError(f"Bad PostgreSQL connection string: {_describe(e)}") from e
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    description = f"PostgreSQL at {host}:{port} database {params.get('dbname') or params.get('user') or '(default)'}"
    if schema:
        description += f" schema {schema}"
    conn = _pgConnect(conninfo, description)
    try:
        _mapErrors(lambda: _pgMigrate(conn, schema, description), (psycopg.Error,), description)
    finally:
        conn.close()
    return conninfo, description


class PostgresDatabase(Database):
    """
    A PostgreSQL database (optionally one schema of it) used through a
    connection pool from a bounded thread pool.

    @ivar conninfo: the libpq connection string used (search_path set).
    @ivar schema: the schema, or L{None} for the server's search_path.
    @ivar channel: the C{LISTEN}/C{NOTIFY} channel of this schema.
    """

    dialect = POSTGRESQL
    polls = False

    def __init__(self, dsn: str, schema: Optional[str] = None, poolSize: int = 8, reactor: Any = None) -> None:
        """
        Connect, migrate, and open the pool.

        @raise StoreError: the server cannot be reached (the message names
            host and port) or the schema is newer than this code.
        """
        import psycopg
        from psycopg_pool import ConnectionPool

        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._psycopg = psycopg
        self.schema = schema
        self.conninfo, self.description = preparePostgres(dsn, schema)
        self.channel = f"mailplat_{schema}" if schema else "mailplat"
        self._token = os.urandom(8).hex()
        self._closed = False
        self._listener: Optional[_NotifyListener] = None
        self._lockConnections: List[Any] = []
        self._pool = ConnectionPool(
            self.conninfo, min_size=1, max_size=poolSize, open=True, name="mailplat", timeout=30.0
        )
        self._threads = ThreadPool(minthreads=0, maxthreads=poolSize, name="mailplat-postgresql")
        self._threads.start()

    def _connect(self, autocommit: bool = False) -> Any:
        return _pgConnect(self.conninfo, self.description, autocommit)

    def _notify(self, txn: Transaction, mailboxId: int) -> None:
        txn.execute("SELECT pg_notify(?, ?)", (self.channel, f"{mailboxId} {self._token}"))

    def _interact(self, fn: Callable[..., Any], args: tuple, write: bool) -> Any:
        errors = self._psycopg.errors
        retryable = (errors.DeadlockDetected, errors.SerializationFailure)

        def attempt() -> Any:
            with self._pool.connection() as conn:
                with conn.cursor(binary=True) as cursor:
                    return fn(Transaction(cursor, POSTGRESQL, self._notify), *args)

        for tries in range(RETRIES):
            try:
                return _mapErrors(attempt, (self._psycopg.Error,), self.description)
            except StoreError as e:
                if tries + 1 < RETRIES and isinstance(e.__cause__, retryable):
                    continue
                raise

    def run(self, fn: Callable[..., Any], *args: Any, write: bool = False) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError(f"{self.description} is closed"))
        return threads.deferToThreadPool(self._reactor, self._threads, self._interact, fn, args, write)

    def runBlocking(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._threads, fn, *args)

    def startListening(self, callback: Callable[[int], None]) -> None:
        if self._listener is not None:
            return

        def deliver(payload: str) -> None:
            mailboxId, _, token = payload.partition(" ")
            if token != self._token and mailboxId.isdigit():
                callback(int(mailboxId))

        self._listener = _NotifyListener(self, lambda payload: self._reactor.callFromThread(deliver, payload))
        self._listener.start()

    def tryLock(self, mailboxId: int) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._threads, self._tryLock, mailboxId)

    def _tryLock(self, mailboxId: int) -> Optional[Callable[[], None]]:
        conn = self._connect(autocommit=True)
        key = _advisoryKey(self.schema or "", mailboxId)
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        except self._psycopg.Error as e:
            conn.close()
            raise StoreError(f"Database error on {self.description}: {_describe(e)}") from e
        if not got:
            conn.close()
            return None
        self._lockConnections.append(conn)

        def release() -> None:
            # Unlock explicitly, so the lock is free once this returns;
            # closing the session would end it too, but later.
            if conn in self._lockConnections:
                self._lockConnections.remove(conn)
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except self._psycopg.Error:
                pass
            finally:
                conn.close()

        return release

    @defer.inlineCallbacks
    def close(self):
        if self._closed:
            return None
        self._closed = True
        listener, self._listener = self._listener, None

        def shutDown() -> None:
            if listener is not None:
                listener.stopping.set()
                try:
                    # Wake the listening thread at once.
                    with self._pool.connection() as conn:
                        conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"stop {self._token}"))
                except self._psycopg.Error:
                    pass
                listener.stop()
            for conn in list(self._lockConnections):
                conn.close()
            self._pool.close(timeout=5.0)

        try:
            yield threads.deferToThreadPool(self._reactor, self._threads, shutDown)
        finally:
            self._threads.stop()
        return None


class _NotifyListener:
    """
    A thread that keeps a C{LISTEN} connection and hands each payload to a
    callback; it connects again after a lost connection.
    """

    def __init__(self, database: PostgresDatabase, callback: Callable[[str], None]) -> None:
        from psycopg import sql

        self._database = database
        self._callback = callback
        self.stopping = threading.Event()
        """Set to end the thread (see L{stop})."""
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(database.channel))
        # Connect now, so that changes made after the store opened are heard.
        self._conn: Any = self._open()
        self._thread = threading.Thread(target=self._loop, name="mailplat-listen", daemon=True)

    def _open(self) -> Any:
        conn = self._database._connect(autocommit=True)
        conn.execute(self._listen)
        return conn

    def start(self) -> None:
        """
        Start reading notifications.
        """
        self._thread.start()

    def _loop(self) -> None:
        psycopg = self._database._psycopg
        while not self.stopping.is_set():
            try:
                if self._conn is None:
                    self._conn = self._open()
                for notify in self._conn.notifies(timeout=1.0):
                    if self.stopping.is_set():
                        break
                    self._callback(notify.payload)
            except (psycopg.Error, StoreError) as e:
                if self.stopping.is_set():
                    break
                log.warn("LISTEN connection lost ({error}); connecting again", error=_describe(e))
                if self._conn is not None:
                    try:
                        self._conn.close()
                    except psycopg.Error:
                        pass
                self._conn = None
                self.stopping.wait(1.0)
        if self._conn is not None:
            self._conn.close()

    def stop(self) -> None:
        """
        Stop the thread and close its connection (blocking, briefly).
        """
        self.stopping.set()
        self._thread.join(5.0)
