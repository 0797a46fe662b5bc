"""
The outbound queue in PostgreSQL, shared by several mailplat nodes.

It has the API of the file queue (L{mailplat.queue.Queue}) so that a
L{mailplat.relay.runner.QueueRunner}, the delivery pipeline and the admin
command use either unchanged; L{queueFor} picks one from the store's
configuration.

Tables (in the store's database and schema, versioned apart from the
store's tables in C{queue_schema_version}):

  - C{queue_messages}: one row per entry: envelope, C{held}, the wire
    bytes (C{body}), C{next_attempt} (the earliest next attempt of an
    active recipient, L{None} when none is active: what the claim query
    reads) and the lease: C{claimed_by} (a node id) and C{claimed_until}.
  - C{queue_recipients}: one row per recipient and its
    L{RecipientStatus}, removed with the entry.

Claims.  A node's runner asks for work with L{SQLQueue.due}.  That answers
at once from the entries this node holds (its I{claimed} entries, kept in
memory with their message in a private spool directory) and starts a
I{pass} in the background: one transaction that renews this node's leases
(and reads its entries again, so a hold or flush made elsewhere is seen),
claims due entries nobody holds (or whose lease ran out: the holder
crashed) with C{SELECT ... FOR UPDATE SKIP LOCKED}, and gives back the
entries this node is done with (nothing due, untouched for
C{releaseDelay}, or put on hold).  When a pass claims something the
observers are told, so the runner comes back for it.  When it stopped for
want of room with due entries left, L{SQLQueue.nextWakeup} says "now", so
the runner claims again right after its batch.  When it claimed nothing
but saw an entry nobody holds that is due (another node was claiming it
at that moment) or will be, the queue runs a pass at that time by itself
(not sooner than a second later), for a node whose runner watches it.
The runner's poll is only a fallback.  A node that never calls
L{SQLQueue.due} (a worker process that only enqueues) never claims
anything.  While it holds entries a node renews its leases every
C{lease / 3} seconds; a node that stops (crash, network) loses them
C{lease} seconds later and another node takes them; one that closes
cleanly gives them back and tells the others at once.  Lease times are
the nodes' clocks: keep them in step (NTP), well within C{lease}.

Delivery stays at-least-once, as with the file queue: a lease that runs
out while its holder is still talking to the remote server (a partition
longer than the lease) can make a recipient be sent twice; two live nodes
never send the same entry otherwise.

Wake-ups.  An enqueue, a release and a flush commit, then C{NOTIFY} the
schema's queue channel (C{mailplat_queue[_<schema>]}); every other node's
listener thread hears it and tells its observers, so its runner looks at
once.

Blocking.  Everything the runner and the delivery pipeline call runs off
the reactor thread, except L{SQLQueue.get}, L{SQLQueue.openMessage} and
L{SQLQueue.list} for an entry this node does not hold: those read the
database synchronously (the admin command and tests use them that way;
the runner only asks about entries it holds).
"""

import io
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from typing import Any, BinaryIO, Callable, Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mailplat.errors import StoreError
from mailplat.queue import (
    DELIVERED,
    DEFERRED,
    FAILED,
    PENDING,
    NoSuchEntry,
    Queue,
    QueueEntry,
    RecipientStatus,
    recordAttempt,
)

__all__ = ["SQLQueue", "OutboundQueue", "queueFor", "QUEUE_LATEST_VERSION", "PENDING", "DELIVERED", "DEFERRED", "FAILED"]

_ID = re.compile(r"^[0-9a-f]{8,40}$")
_CHUNK = 65536

#: The queue tables' migrations, applied in order; each one's version is
#: recorded in C{queue_schema_version}.
QUEUE_MIGRATIONS: List[Tuple[int, List[str]]] = [
    (
        1,
        [
            """CREATE TABLE queue_messages (
                id TEXT PRIMARY KEY,
                sender TEXT,
                created DOUBLE PRECISION NOT NULL,
                held BOOLEAN NOT NULL DEFAULT FALSE,
                envid TEXT,
                ret TEXT,
                smtputf8 BOOLEAN NOT NULL DEFAULT FALSE,
                body BYTEA NOT NULL,
                next_attempt DOUBLE PRECISION,
                claimed_by TEXT,
                claimed_until DOUBLE PRECISION NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX queue_messages_next ON queue_messages (next_attempt) WHERE next_attempt IS NOT NULL",
            "CREATE INDEX queue_messages_claimed ON queue_messages (claimed_by) WHERE claimed_by IS NOT NULL",
            """CREATE TABLE queue_recipients (
                entry_id TEXT NOT NULL REFERENCES queue_messages (id) ON DELETE CASCADE,
                position INTEGER NOT NULL,
                address TEXT NOT NULL,
                state TEXT NOT NULL,
                reply TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt DOUBLE PRECISION NOT NULL,
                last_attempt DOUBLE PRECISION,
                remote_mta TEXT,
                delay_warned BOOLEAN NOT NULL DEFAULT FALSE,
                notified BOOLEAN NOT NULL DEFAULT FALSE,
                orcpt TEXT,
                notify TEXT,
                PRIMARY KEY (entry_id, position)
            )""",
        ],
    ),
]

QUEUE_LATEST_VERSION = QUEUE_MIGRATIONS[-1][0]

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS queue_schema_version (
    version INTEGER PRIMARY KEY,
    applied DOUBLE PRECISION NOT NULL
)"""

# The advisory lock key (any fixed 64-bit number, per schema through the
# schema's name) taken while the queue tables are migrated.
_MIGRATION_LOCK = 0x6D706C7100000000

_ENTRY_COLUMNS = "id, sender, created, held, envid, ret, smtputf8"
_RECIPIENT_COLUMNS = (
    "entry_id, address, state, reply, attempts, next_attempt, last_attempt, remote_mta,"
    " delay_warned, notified, orcpt, notify"
)


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _checkId(entryId: str) -> None:
    if not isinstance(entryId, str) or not _ID.match(entryId):
        raise NoSuchEntry(entryId)


def _copy(entry: QueueEntry) -> QueueEntry:
    return QueueEntry.fromJSON(entry.toJSON())


def _nextAttempt(entry: QueueEntry) -> Optional[float]:
    times = [r.nextAttempt for r in entry.active()]
    return min(times) if times else None


def _migrate(conn: Any, schema: Optional[str], description: str) -> None:
    """
    Bring the queue tables up to L{QUEUE_LATEST_VERSION} (blocking; one
    migrating process at a time per schema).

    @raise StoreError: the tables are newer than this code.
    """
    import zlib

    key = _MIGRATION_LOCK + zlib.crc32((schema or "").encode())
    key = key - (1 << 64) if key >= 1 << 63 else key
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        conn.execute(_VERSION_TABLE)
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM queue_schema_version").fetchone()[0]
        if current > QUEUE_LATEST_VERSION:
            raise StoreError(
                f"{description} has queue schema version {current}, newer than the {QUEUE_LATEST_VERSION}"
                " this mailplat knows; run a newer mailplat (the database was left unchanged)"
            )
        for version, statements in QUEUE_MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO queue_schema_version (version, applied) VALUES (%s, %s)", (version, time.time()))


def _loadEntries(cur: Any, ids: Sequence[str], lock: bool = False) -> Dict[str, QueueEntry]:
    """
    Read entries (without their messages); missing ids are left out.

    @param lock: lock the entries' rows until the transaction ends.
    """
    if not ids:
        return {}
    cur.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM queue_messages WHERE id = ANY(%s)" + (" FOR UPDATE" if lock else ""),
        (list(ids),),
    )
    entries: Dict[str, QueueEntry] = {}
    for entryId, sender, created, held, envid, ret, smtputf8 in cur.fetchall():
        entries[entryId] = QueueEntry(
            id=entryId, sender=sender, created=created, recipients=[], held=held, envid=envid, ret=ret, smtputf8=smtputf8
        )
    if entries:
        cur.execute(
            f"SELECT {_RECIPIENT_COLUMNS} FROM queue_recipients WHERE entry_id = ANY(%s) ORDER BY entry_id, position",
            (list(entries),),
        )
        for row in cur.fetchall():
            entryId, address, state, reply, attempts, nextAttempt, lastAttempt, remoteMTA, warned, notified, orcpt, notify = row
            entries[entryId].recipients.append(
                RecipientStatus(
                    address=address,
                    state=state,
                    reply=reply,
                    attempts=attempts,
                    nextAttempt=nextAttempt,
                    lastAttempt=lastAttempt,
                    remoteMTA=remoteMTA,
                    delayWarned=warned,
                    notified=notified,
                    orcpt=orcpt,
                    notify=json.loads(notify) if notify is not None else None,
                )
            )
    return entries


def _recipientRow(entryId: str, position: int, r: RecipientStatus) -> tuple:
    return (
        r.state,
        r.reply,
        r.attempts,
        r.nextAttempt,
        r.lastAttempt,
        r.remoteMTA,
        r.delayWarned,
        r.notified,
        r.orcpt,
        json.dumps(r.notify) if r.notify is not None else None,
        entryId,
        position,
    )


def _storeEntry(cur: Any, entry: QueueEntry) -> None:
    """
    Write back an entry read with L{_loadEntries} and changed.
    """
    cur.execute(
        "UPDATE queue_messages SET held = %s, next_attempt = %s WHERE id = %s",
        (entry.held, _nextAttempt(entry), entry.id),
    )
    cur.executemany(
        "UPDATE queue_recipients SET state = %s, reply = %s, attempts = %s, next_attempt = %s, last_attempt = %s,"
        " remote_mta = %s, delay_warned = %s, notified = %s, orcpt = %s, notify = %s"
        " WHERE entry_id = %s AND position = %s",
        [_recipientRow(entry.id, i, r) for i, r in enumerate(entry.recipients)],
    )


class _PassResult:
    """
    What one claim pass found (see L{SQLQueue._passWork}).
    """

    def __init__(self) -> None:
        self.kept: Dict[str, QueueEntry] = {}
        self.lost: Set[str] = set()
        self.claimed: Dict[str, QueueEntry] = {}
        self.nextDue: Optional[float] = None
        self.depth = 0
        self.oldest: Optional[float] = None
        self.stamp = 0


class SQLQueue:
    """
    The outbound queue in a PostgreSQL schema (see the module docstring).

    @ivar clock: the L{IReactorTime} giving the time (attempt times and
        leases).
    @ivar node: this queue object's node id (host, process, random part),
        written into C{claimed_by}.
    @ivar lease: seconds a claim lasts unless renewed.
    @ivar releaseDelay: seconds an entry with nothing due stays claimed
        after its last change here (the runner's clean-up of the entry
        comes right after its last change).
    @ivar maxClaimed: the most entries this node holds at once.
    @ivar description: names the database in messages.
    @ivar channel: the C{LISTEN}/C{NOTIFY} channel.
    """

    _log = Logger()

    def __init__(
        self,
        dsn: str,
        schema: Optional[str],
        clock: IReactorTime,
        reactor: Any = None,
        poolSize: int = 4,
        lease: float = 300.0,
        releaseDelay: float = 30.0,
        maxClaimed: int = 200,
        claimBatch: int = 50,
        spoolDir: Optional[str] = None,
    ) -> None:
        """
        Connect, make or migrate the queue tables, open the pool.

        @param dsn: a libpq connection string or URL.
        @param schema: the schema (made if missing), or L{None}.
        @param reactor: runs the database threads' results; the global
            reactor by default.
        @param spoolDir: where the messages of claimed entries are kept
            while this node holds them; a new private temporary directory
            by default.  Removed by L{close}.
        @raise StoreError: the database cannot be reached or its queue
            tables are newer than this code.
        """
        import psycopg
        from psycopg_pool import ConnectionPool

        from mailplat.store.sql.database import preparePostgres

        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._psycopg = psycopg
        self.clock = clock
        self.schema = schema
        self.lease = lease
        self.releaseDelay = releaseDelay
        self.maxClaimed = maxClaimed
        self.claimBatch = claimBatch
        self.conninfo, self.description = preparePostgres(dsn, schema)
        try:
            with psycopg.connect(self.conninfo, connect_timeout=10) as conn:
                _migrate(conn, schema, self.description)
        except psycopg.Error as e:
            raise StoreError(f"Cannot prepare the queue tables on {self.description}: {_describe(e)}") from e
        self.channel = f"mailplat_queue_{schema}" if schema else "mailplat_queue"
        self._token = secrets.token_hex(6)
        self.node = f"{socket.gethostname()}:{os.getpid()}:{self._token}"
        self._pool = ConnectionPool(self.conninfo, min_size=1, max_size=poolSize, open=True, name="mailplat-queue", timeout=30.0)
        self._threads = ThreadPool(minthreads=0, maxthreads=poolSize, name="mailplat-queue")
        self._threads.start()
        self._spool = spoolDir if spoolDir is not None else tempfile.mkdtemp(prefix="mailplat-queue-")
        os.makedirs(self._spool, mode=0o700, exist_ok=True)
        self._observers: List[Callable[[], None]] = []
        self._claimed: Dict[str, QueueEntry] = {}
        self._touched: Dict[str, float] = {}
        self._generation: Dict[str, int] = {}
        # The order, among this node's transactions on an entry, of the one
        # whose reading of it is in memory (see _keep).
        self._stamps = itertools.count(1)
        self._stampOf: Dict[str, int] = {}
        self._counter = 0
        self._passing: Optional[defer.Deferred] = None
        self._again = False
        self._lastPass = float("-inf")
        self._nextDue: Optional[float] = None
        self._backlog = False
        self._renewal: Optional[IDelayedCall] = None
        self._claimTimer: Optional[IDelayedCall] = None
        self._listener: Optional[_Listener] = None
        self._closed = False
        self.depth = 0
        """Entries in the whole queue, as of the last pass."""
        self.oldest: Optional[float] = None
        """When the oldest entry of the whole queue was queued, as of the last pass."""

    # Database plumbing.

    def _interact(self, fn: Callable[..., Any], args: tuple) -> Any:
        psycopg = self._psycopg
        retryable = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
        for tries in range(3):
            try:
                with self._pool.connection() as conn:
                    with conn.cursor() as cur:
                        return fn(cur, *args)
            except retryable:
                if tries == 2:
                    raise StoreError(f"Database error on {self.description}: gave up after 3 conflicts") from None
            except psycopg.Error as e:
                raise StoreError(f"Database error on {self.description}: {_describe(e)}") from e
        raise AssertionError("unreachable")

    def _run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError(f"the queue on {self.description} is closed"))
        return threads.deferToThreadPool(self._reactor, self._threads, self._interact, fn, args)

    def _notifyOthers(self, cur: Any) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (self.channel, self._token))

    # Observers.

    def addObserver(self, observer: Callable[[], None]) -> None:
        """
        Call C{observer()} whenever new work may be due: an enqueue, flush
        or release here or on another node, or a pass that claimed entries.
        The first observer starts listening for the other nodes.
        """
        self._observers.append(observer)
        if self._listener is None and not self._closed:
            self._listener = _Listener(self)
            self._listener.start()

    def removeObserver(self, observer: Callable[[], None]) -> None:
        """
        Stop calling C{observer}; unknown observers are ignored.
        """
        if observer in self._observers:
            self._observers.remove(observer)

    def _notify(self) -> None:
        for observer in list(self._observers):
            try:
                observer()
            except Exception:
                self._log.failure("queue observer failed")

    def _heard(self, payload: str) -> None:
        """
        Another node (or the admin command) changed the queue.
        """
        if payload != self._token and not self._closed:
            self._notify()

    # Public API: as L{mailplat.queue.Queue}.

    def enqueue(
        self,
        sender: Optional[str],
        recipients: Iterable[str],
        messageFile: BinaryIO,
        envid: Optional[str] = None,
        ret: Optional[str] = None,
        parameters: Optional[Mapping[str, Any]] = None,
        smtputf8: bool = False,
    ) -> "defer.Deferred[str]":
        """
        Queue a message for C{recipients} (each once, in order); see
        L{mailplat.queue.Queue.enqueue}.

        @return: a Deferred firing with the new queue id once the entry is
            committed (the other nodes are told then).
        """
        params = dict(parameters or {})
        addresses: List[str] = []
        for r in recipients:
            if r not in addresses:
                addresses.append(r)
        if not addresses:
            return defer.fail(ValueError("a queue entry needs at least one recipient"))
        now = self.clock.seconds()
        entryId = f"{int(now):010x}{secrets.token_hex(6)}"
        rows = [
            (
                entryId,
                i,
                a,
                PENDING,
                now,
                getattr(params.get(a), "orcpt", None),
                json.dumps(list(getattr(params.get(a), "notify"))) if getattr(params.get(a), "notify", None) is not None else None,
            )
            for i, a in enumerate(addresses)
        ]

        def insert(cur: Any, body: bytes) -> str:
            cur.execute(
                "INSERT INTO queue_messages (id, sender, created, envid, ret, smtputf8, body, next_attempt)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (entryId, sender, now, envid, ret, smtputf8, body, now),
            )
            cur.executemany(
                "INSERT INTO queue_recipients (entry_id, position, address, state, next_attempt, orcpt, notify)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
            self._notifyOthers(cur)
            return entryId

        def work(cur: Any) -> str:
            if messageFile.seekable():
                messageFile.seek(0)
            return insert(cur, messageFile.read())

        d = self._run(work)

        def committed(result: str) -> str:
            self._notify()
            return result

        return d.addCallback(committed)

    def get(self, entryId: str) -> QueueEntry:
        """
        The current state of an entry (a copy).  An entry this node holds
        is answered from memory; another is read from the database
        synchronously.

        @raise NoSuchEntry: no such entry.
        """
        _checkId(entryId)
        if entryId in self._claimed:
            return _copy(self._claimed[entryId])
        entry = self._interact(lambda cur: _loadEntries(cur, [entryId]), ()).get(entryId)
        if entry is None:
            raise NoSuchEntry(entryId)
        return entry

    def list(self) -> List[QueueEntry]:
        """
        Every entry, oldest first (a synchronous read of the whole queue:
        for the admin command).
        """
        return self._interact(_listAll, ())

    def listAsync(self) -> "defer.Deferred[List[QueueEntry]]":
        """
        L{list}, off the reactor thread.
        """
        return self._run(_listAll)

    def due(self, now: Optional[float] = None) -> List[QueueEntry]:
        """
        The entries this node holds, oldest first, that are not held and
        have a recipient due by C{now}; and start a pass that claims more
        (the observers are told when it claimed some).
        """
        if now is None:
            now = self.clock.seconds()
        self._kick()
        entries = [
            e for e in self._claimed.values() if not e.held and any(r.nextAttempt <= now for r in e.active())
        ]
        entries.sort(key=lambda e: (e.created, e.id))
        return [_copy(e) for e in entries]

    def nextWakeup(self, exclude: Collection[str] = ()) -> Optional[float]:
        """
        The earliest time something may be due: the next attempt of an
        entry held here (but those in C{exclude}: the ones the runner is
        delivering), or of one in the database that no node holds, as of
        the last pass:

          - at once when that pass stopped because it had no more room
            (C{claimBatch} or C{maxClaimed}) and this node has room now:
            more work is waiting, claim it (the runner asks after each
            batch, so a backlog moves without waiting for a timer);
          - else not sooner than a second after that pass, so an entry
            that could not be claimed (another node was claiming it) is
            not asked for in a loop;
          - and while a pass is under way, not sooner than a second from
            now: that pass tells the observers if it claims something.
        """
        times = [
            r.nextAttempt for i, e in self._claimed.items() if not e.held and i not in exclude for r in e.active()
        ]
        if self._nextDue is not None:
            if self._passing is not None:
                times.append(max(self._nextDue, self.clock.seconds() + 1.0))
            elif self._backlog and len(self._claimed) < self.maxClaimed:
                times.append(self._nextDue)
            else:
                times.append(max(self._nextDue, self._lastPass + 1.0))
        return min(times) if times else None

    def openMessage(self, entryId: str) -> BinaryIO:
        """
        Open an entry's message for reading (the caller closes it): from
        the spool for an entry this node holds, else read synchronously.

        @raise NoSuchEntry: no such entry.
        """
        _checkId(entryId)
        if entryId in self._claimed:
            try:
                return open(self._spoolPath(entryId), "rb")
            except FileNotFoundError:
                pass

        def read(cur: Any) -> Optional[bytes]:
            cur.execute("SELECT body FROM queue_messages WHERE id = %s", (entryId,))
            row = cur.fetchone()
            return bytes(row[0]) if row is not None else None

        body = self._interact(read, ())
        if body is None:
            raise NoSuchEntry(entryId)
        return io.BytesIO(body)

    def markDelivered(
        self, entryId: str, recipients: Iterable[str], reply: str, remoteMTA: Optional[str] = None
    ) -> "defer.Deferred[Optional[QueueEntry]]":
        """
        Record that the recipients were delivered.

        @return: a Deferred firing with the updated entry, or L{None} when
            the entry was deleted meanwhile.
        """
        return self._mark(entryId, recipients, DELIVERED, reply, remoteMTA, None)

    def markFailed(
        self, entryId: str, recipients: Iterable[str], reply: str, remoteMTA: Optional[str] = None
    ) -> "defer.Deferred[Optional[QueueEntry]]":
        """
        Record a permanent failure for the recipients.
        """
        return self._mark(entryId, recipients, FAILED, reply, remoteMTA, None)

    def markDeferred(
        self, entryId: str, recipients: Iterable[str], reply: str, nextAttempt: float, remoteMTA: Optional[str] = None
    ) -> "defer.Deferred[Optional[QueueEntry]]":
        """
        Record a temporary failure; the recipients are tried again at
        C{nextAttempt}.
        """
        return self._mark(entryId, recipients, DEFERRED, reply, remoteMTA, nextAttempt)

    def markNotified(self, entryId: str, recipients: Iterable[str], kind: str) -> "defer.Deferred[Optional[QueueEntry]]":
        """
        Record that a DSN of C{kind} (C{"failed"} or C{"delayed"}) was
        queued for the recipients.
        """
        addresses = set(recipients)

        def change(entry: QueueEntry) -> None:
            for r in entry.recipients:
                if r.address in addresses:
                    if kind == "delayed":
                        r.delayWarned = True
                    else:
                        r.notified = True

        return self._update(entryId, change, missingOk=True)

    def delete(self, entryId: str) -> "defer.Deferred[None]":
        """
        Remove an entry for good.

        @raise NoSuchEntry: (as a failure) no such entry.
        """
        try:
            _checkId(entryId)
        except NoSuchEntry:
            return defer.fail()

        def remove(cur: Any) -> None:
            cur.execute("DELETE FROM queue_messages WHERE id = %s", (entryId,))
            if cur.rowcount == 0:
                raise NoSuchEntry(entryId)

        self._touch(entryId)
        d = self._run(remove)

        def forget(result: object) -> object:
            self._forget(entryId)
            return result

        return d.addBoth(forget)

    def hold(self, entryId: str) -> "defer.Deferred[QueueEntry]":
        """
        Put an entry on hold: it is not delivered until released.
        """
        return self._update(entryId, lambda e: setattr(e, "held", True))

    def release(self, entryId: str) -> "defer.Deferred[QueueEntry]":
        """
        Release a held entry; it is tried at once (on any node).
        """
        now = self.clock.seconds()
        return self._update(entryId, lambda entry: entry.makeDue(now, release=True), wake=True)

    def flush(self, entryId: Optional[str] = None) -> "defer.Deferred[List[str]]":
        """
        Make every waiting recipient (of C{entryId}, or of every entry not
        held) due now.

        @return: a Deferred firing with the ids flushed.
        """
        now = self.clock.seconds()

        def change(entry: QueueEntry) -> None:
            entry.makeDue(now)

        if entryId is not None:
            return self._update(entryId, change, wake=True).addCallback(lambda _: [entryId])

        def work(cur: Any) -> Tuple[Dict[str, QueueEntry], int]:
            cur.execute(
                "SELECT id FROM queue_messages WHERE NOT held AND next_attempt IS NOT NULL ORDER BY created, id"
            )
            ids = [row[0] for row in cur.fetchall()]
            entries = _loadEntries(cur, ids, lock=True)
            for entry in entries.values():
                change(entry)
                _storeEntry(cur, entry)
            self._notifyOthers(cur)
            return entries, next(self._stamps)

        for held in self._claimed:
            self._touch(held)

        def done(result: Tuple[Dict[str, QueueEntry], int]) -> List[str]:
            entries, stamp = result
            for entry in entries.values():
                self._keep(entry.id, entry, stamp)
            self._notify()
            return sorted(entries, key=lambda i: (entries[i].created, i))

        return self._run(work).addCallback(done)

    # Claims.

    def claim(self) -> "defer.Deferred[List[str]]":
        """
        Run a pass now (renew this node's leases, give back what it is done
        with, claim due entries); L{due} starts one by itself.

        @return: a Deferred firing with the ids newly claimed.
        """
        return self._runPass()

    def claimedIds(self) -> List[str]:
        """
        The ids of the entries this node holds.
        """
        return sorted(self._claimed)

    def _kick(self) -> None:
        if self._closed:
            return
        if self._passing is not None:
            self._again = True
            return
        self._runPass().addErrback(lambda f: self._log.failure("queue claim pass failed", f))

    def _runPass(self) -> "defer.Deferred[List[str]]":
        if self._closed:
            return defer.succeed([])
        if self._passing is not None:
            # One pass at a time: chain behind the one under way.
            waiting: defer.Deferred = defer.Deferred()

            def after(_: object) -> None:
                self._runPass().chainDeferred(waiting)

            self._passing.addBoth(after)
            return waiting
        now = self.clock.seconds()
        held = list(self._claimed)
        release = [
            i
            for i, e in self._claimed.items()
            if (e.held or not any(r.nextAttempt <= now for r in e.active()))
            and now - self._touched.get(i, 0.0) >= self.releaseDelay
        ]
        keep = [i for i in held if i not in release]
        room = max(0, min(self.claimBatch, self.maxClaimed - len(keep)))
        generations = dict(self._generation)
        d = self._run(self._passWork, now, keep, release, room)
        passing: defer.Deferred = defer.Deferred()
        self._passing = passing

        def done(result: _PassResult) -> List[str]:
            self._lastPass = now
            self._nextDue = result.nextDue
            # Stopped for want of room, with due entries left: claim again.
            self._backlog = len(result.claimed) >= room and result.nextDue is not None and result.nextDue <= now
            self.depth = result.depth
            self.oldest = result.oldest
            for entryId in release:
                if self._generation.get(entryId) == generations.get(entryId):
                    self._forget(entryId)
            for entryId in result.lost:
                if entryId in self._claimed and self._generation.get(entryId) == generations.get(entryId):
                    # (A change made here meanwhile, such as the runner's
                    # delete, accounts for the row itself.)
                    self._log.warn(
                        "queue: lost the claim on {id} (deleted elsewhere, or taken by another node after"
                        " the lease ran out)",
                        id=entryId,
                    )
                    self._forget(entryId)
            for entryId, entry in result.kept.items():
                self._keep(entryId, entry, result.stamp)
            for entryId, entry in result.claimed.items():
                self._claimed[entryId] = entry
                self._stampOf[entryId] = result.stamp
                self._touched[entryId] = now
            self._scheduleRenewal()
            if result.claimed:
                self._notify()
            else:
                self._scheduleClaim()
            return sorted(result.claimed)

        def finished(result: object) -> object:
            self._passing = None
            passing.callback(None)
            if self._again:
                self._again = False
                self._kick()
            return result

        return d.addCallback(done).addBoth(finished)

    def _passWork(self, cur: Any, now: float, keep: List[str], release: List[str], room: int) -> _PassResult:
        """
        One pass, in one transaction on a worker thread.
        """
        result = _PassResult()
        until = now + self.lease
        if release:
            cur.execute(
                "UPDATE queue_messages SET claimed_by = NULL, claimed_until = 0 WHERE claimed_by = %s AND id = ANY(%s)",
                (self.node, release),
            )
        if keep:
            cur.execute(
                "UPDATE queue_messages SET claimed_until = %s WHERE claimed_by = %s AND id = ANY(%s) RETURNING id",
                (until, self.node, keep),
            )
            renewed = [row[0] for row in cur.fetchall()]
            result.lost = set(keep) - set(renewed)
            result.kept = _loadEntries(cur, renewed)
        if room:
            cur.execute(
                "SELECT id FROM queue_messages"
                " WHERE next_attempt <= %s AND NOT held AND (claimed_by IS NULL OR claimed_until < %s)"
                " AND NOT (id = ANY(%s))"
                " ORDER BY next_attempt, created LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, now, keep, room),
            )
            ids = [row[0] for row in cur.fetchall()]
            if ids:
                cur.execute(
                    "UPDATE queue_messages SET claimed_by = %s, claimed_until = %s WHERE id = ANY(%s)",
                    (self.node, until, ids),
                )
                result.claimed = _loadEntries(cur, ids)
                for entryId in ids:
                    self._spoolBody(cur, entryId)
        cur.execute(
            "SELECT MIN(next_attempt) FROM queue_messages"
            " WHERE next_attempt IS NOT NULL AND NOT held AND (claimed_by IS NULL OR claimed_until < %s)"
            " AND NOT (id = ANY(%s))",
            (now, keep + list(result.claimed)),
        )
        result.nextDue = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*), MIN(created) FROM queue_messages")
        result.depth, result.oldest = cur.fetchone()
        result.stamp = next(self._stamps)
        return result

    def _spoolBody(self, cur: Any, entryId: str) -> None:
        """
        Copy a claimed entry's message into the spool (worker thread).
        """
        cur.execute("SELECT body FROM queue_messages WHERE id = %s", (entryId,))
        body = cur.fetchone()[0]
        tmp = self._spoolPath(entryId) + ".tmp"
        with open(tmp, "wb") as out:
            view = memoryview(body)
            for start in range(0, len(view), _CHUNK):
                out.write(view[start:start + _CHUNK])
        os.rename(tmp, self._spoolPath(entryId))

    def _spoolPath(self, entryId: str) -> str:
        return os.path.join(self._spool, entryId + ".msg")

    def _scheduleRenewal(self) -> None:
        if self._closed or not self._claimed:
            return
        if self._renewal is not None and self._renewal.active():
            return
        self._renewal = self.clock.callLater(self.lease / 3.0, self._renew)

    def _scheduleClaim(self) -> None:
        """
        After a pass that claimed nothing but saw an entry nobody holds
        that is due, or will be, run a pass at that time (not sooner than
        a second after this one: an entry another node was claiming just
        then is not asked for in a loop), so it is claimed even if the
        runner, which planned its next look before this pass ended, sleeps
        longer.  Only for a node whose runner watches the queue.
        """
        if self._closed or not self._observers or self._nextDue is None:
            return
        when = max(self._nextDue, self._lastPass + 1.0)
        if self._claimTimer is not None and self._claimTimer.active():
            if self._claimTimer.getTime() <= when:
                return
            self._claimTimer.cancel()
        self._claimTimer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._claimNow)

    def _claimNow(self) -> None:
        self._claimTimer = None
        self._kick()

    def _renew(self) -> None:
        self._renewal = None
        self._kick()

    def _touch(self, entryId: str) -> None:
        self._counter += 1
        self._generation[entryId] = self._counter
        self._touched[entryId] = self.clock.seconds()

    def _keep(self, entryId: str, entry: QueueEntry, stamp: int) -> None:
        """
        Take C{entry}, as read by a transaction of this node stamped
        C{stamp}, as the state of an entry held here, unless what memory
        has is newer.

        Every transaction that reads an entry held here has its row locked
        (L{_update}, a flush, and a pass, which renews the lease first) and
        draws its stamp from one counter just before it commits, still
        holding the lock: so two of them on one entry draw their stamps in
        the order they had the row, which is the order of what they read.
        Their results come back to the reactor thread in any order (a
        worker thread can be held up between its commit and handing the
        result over), and an older reading put in memory after a newer one
        would make a delivered recipient look due again.
        """
        if entryId in self._claimed and stamp > self._stampOf.get(entryId, 0):
            self._claimed[entryId] = entry
            self._stampOf[entryId] = stamp

    def _forget(self, entryId: str) -> None:
        self._claimed.pop(entryId, None)
        self._touched.pop(entryId, None)
        self._generation.pop(entryId, None)
        self._stampOf.pop(entryId, None)
        try:
            os.unlink(self._spoolPath(entryId))
        except FileNotFoundError:
            pass

    # Private: state changes.

    def _update(
        self, entryId: str, change: Callable[[QueueEntry], None], missingOk: bool = False, wake: bool = False
    ) -> defer.Deferred:
        """
        Read-modify-write one entry in a transaction (its row locked).

        @return: a Deferred firing with the updated entry, or L{None} when
            it does not exist and C{missingOk}; else failing with
            L{NoSuchEntry}.
        """
        try:
            _checkId(entryId)
        except NoSuchEntry:
            return defer.fail()

        def work(cur: Any) -> Tuple[Optional[QueueEntry], int]:
            entry = _loadEntries(cur, [entryId], lock=True).get(entryId)
            if entry is None:
                if missingOk:
                    return None, 0
                raise NoSuchEntry(entryId)
            change(entry)
            _storeEntry(cur, entry)
            if wake:
                self._notifyOthers(cur)
            return entry, next(self._stamps)

        self._touch(entryId)

        def done(result: Tuple[Optional[QueueEntry], int]) -> Optional[QueueEntry]:
            entry, stamp = result
            if entry is None:
                self._forget(entryId)
                return None
            self._keep(entryId, entry, stamp)
            if wake:
                self._notify()
            return _copy(entry)

        return self._run(work).addCallback(done)

    def _mark(
        self,
        entryId: str,
        recipients: Iterable[str],
        state: str,
        reply: str,
        remoteMTA: Optional[str],
        nextAttempt: Optional[float],
    ) -> defer.Deferred:
        addresses = set(recipients)
        now = self.clock.seconds()

        def change(entry: QueueEntry) -> None:
            recordAttempt(entry, addresses, state, reply, remoteMTA, nextAttempt, now)

        return self._update(entryId, change, missingOk=True)

    # Shutting down.

    @defer.inlineCallbacks
    def close(self):
        """
        Give back every claim (so other nodes take the entries at once),
        stop listening, close the connections and remove the spool.
        """
        if self._closed:
            return None
        # Closed first: the pass under way neither starts another one nor
        # sets a timer when it ends.
        self._closed = True
        if self._passing is not None:
            yield self._passing
        for timer in (self._renewal, self._claimTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._renewal = self._claimTimer = None
        held = list(self._claimed)
        listener, self._listener = self._listener, None

        def giveBack(cur: Any) -> None:
            if held:
                cur.execute(
                    "UPDATE queue_messages SET claimed_by = NULL, claimed_until = 0"
                    " WHERE claimed_by = %s AND id = ANY(%s)",
                    (self.node, held),
                )
            # Other nodes take what was given back at once; and our own
            # listener, waiting for a notification, hears it and stops
            # without waiting out its timeout.
            self._notifyOthers(cur)

        def shutDown() -> None:
            if listener is not None:
                listener.stopping()
            if held or listener is not None:
                try:
                    self._interact(giveBack, ())
                except StoreError as e:
                    self._log.warn("queue: could not give back claims at close: {error}", error=str(e))
            if listener is not None:
                listener.stop()
            self._pool.close(timeout=5.0)

        try:
            yield threads.deferToThreadPool(self._reactor, self._threads, shutDown)
        finally:
            self._threads.stop()
            self._claimed.clear()
            shutil.rmtree(self._spool, ignore_errors=True)
        return None


def _listAll(cur: Any) -> List[QueueEntry]:
    cur.execute("SELECT id FROM queue_messages ORDER BY created, id")
    ids = [row[0] for row in cur.fetchall()]
    entries = _loadEntries(cur, ids)
    return [entries[i] for i in ids if i in entries]


class _Listener:
    """
    A thread holding a C{LISTEN} connection on the queue's channel; each
    notification is handed to L{SQLQueue._heard} on the reactor thread.
    It connects again after a lost connection.
    """

    def __init__(self, queue: SQLQueue) -> None:
        from psycopg import sql

        self._queue = queue
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(queue.channel))
        self._stopping = threading.Event()
        self._conn: Any = None
        try:
            # Connect now, so that what is queued from here on is heard.
            self._conn = self._open()
        except queue._psycopg.Error as e:
            queue._log.warn("queue LISTEN connection failed ({error}); trying again", error=_describe(e))
        self._thread = threading.Thread(target=self._loop, name="mailplat-queue-listen", daemon=True)

    def _open(self) -> Any:
        conn = self._queue._psycopg.connect(self._queue.conninfo, autocommit=True, connect_timeout=10)
        conn.execute(self._listen)
        return conn

    def start(self) -> None:
        """
        Start reading notifications.
        """
        self._thread.start()

    def _loop(self) -> None:
        psycopg = self._queue._psycopg
        reactor = self._queue._reactor
        while not self._stopping.is_set():
            try:
                if self._conn is None:
                    self._conn = self._open()
                    # Something may have been queued while deaf.
                    reactor.callFromThread(self._queue._heard, "")
                for notify in self._conn.notifies(timeout=1.0):
                    if self._stopping.is_set():
                        break
                    reactor.callFromThread(self._queue._heard, notify.payload)
            except psycopg.Error as e:
                if self._stopping.is_set():
                    break
                self._queue._log.warn("queue LISTEN connection lost ({error}); connecting again", error=_describe(e))
                if self._conn is not None:
                    try:
                        self._conn.close()
                    except psycopg.Error:
                        pass
                self._conn = None
                self._stopping.wait(1.0)
        if self._conn is not None:
            self._conn.close()

    def stopping(self) -> None:
        """
        Make the thread stop after the notification it waits for (or its
        one-second timeout): see L{stop}.
        """
        self._stopping.set()

    def stop(self) -> None:
        """
        Stop the thread and close its connection (blocking, at most a few
        seconds; at once when L{stopping} was called before a notification
        was sent on the channel).
        """
        self._stopping.set()
        self._thread.join(5.0)


#: Either outbound queue: they answer the same methods (no interface says so).
OutboundQueue = Union[Queue, SQLQueue]


def queueFor(storeSpec: str, dataDir: str, clock: IReactorTime, threaded: bool = False) -> OutboundQueue:
    """
    The outbound queue for a server whose store is C{storeSpec}
    (C{NAME[:ARGS]}, as C{--store}): the store's PostgreSQL database and
    schema for C{sql:postgresql://...}, so every node shares one queue;
    else the file queue in C{<dataDir>/queue}, making its changes in
    the thread pool of C{clock} (a reactor) when C{threaded} (in a
    server; see L{Queue.inThreads}).

    @raise mailplat.errors.ConfigError: the store's arguments are bad, or
        the database cannot be reached.
    """
    from mailplat.errors import ConfigError
    from mailplat.store.sql.config import parseDatabaseSpec

    name, _, args = storeSpec.partition(":")
    if name == "sql" and args.startswith(("postgresql://", "postgres://")):
        spec = parseDatabaseSpec(args, dataDir)
        assert spec.dsn is not None
        try:
            return SQLQueue(spec.dsn, spec.schema, clock)
        except StoreError as e:
            raise ConfigError(f"queue on store 'sql': {e}") from None
    path = os.path.join(dataDir, "queue")
    return Queue.inThreads(path, clock) if threaded else Queue(path, clock)
