"""
The persistent message index: the second level behind
L{MessageCache <mailplat.imap.cache.MessageCache>}, and the full-text
index SEARCH TEXT and BODY are answered from.

One SQLite file per account, C{<data-dir>/index/<hash of the address>.sqlite},
in WAL mode so that several worker processes share it, holds:

  - C{mailboxes}: each mailbox name with the UIDVALIDITY its rows belong
    to; a new UIDVALIDITY drops the mailbox's rows.
  - C{messages}: per C{(mailbox, UID)}, the L{MessageSummary} (JSON, in
    the format of L{SCHEMA_VERSION}) and whether its text is indexed.
  - C{fulltext}: per message of C{messages} with its text indexed, its
    L{SearchText} (decoded header fields; decoded text parts), already
    case-folded by Python.
  - C{texts}: a contentless FTS5 table (C{content=''}) with the
    C{trigram} tokenizer (C{case_sensitive 1}: the text and the needles
    are folded by Python already; C{detail=none}) over the L{indexed
    form <indexedForm>} of that text: each distinct line once.  A
    trigram that lies within a line is in it; one across a line break
    may not be, so no query asks for one (L{matchQuery}).  Feeding the
    tokenizer each line once is what makes indexing a message with
    repeated lines (quoted replies, markup, generated text) cheap: the
    tokenizer costs about 15 ns a character.

A message's content never changes under one C{(mailbox, UIDVALIDITY,
UID)}, so rows never go stale; UIDs expunged since are pruned when a
search sees them.  The rows of a mailbox deleted or renamed through IMAP
are dropped with it (L{MessageIndex.dropMailbox}), and an account's file
when the account is deleted (L{removeIndex}): the text of mail that is
gone is not kept.  Mailboxes deleted otherwise (another program, an
older version) lose their rows when a LIST next shows the account's
mailboxes (L{MessageIndex.keepOnly}, at most hourly per account).  The index is a cache: a file that is missing, from an
older format, or corrupt is rebuilt (and the log says so), never an error
for the user; whatever it does not hold is read from the store.

Trigram matching: an FTS5 table with C{detail=none} answers a query made
of single trigrams, so a needle is looked up as the AND of (some of) its
trigrams within a line, and the candidates are then checked with C{instr}
on the stored text (all of the mailbox's, for a needle with no such
trigram): the answer is the exact case-insensitive substring test of the scan
(RFC 3501 6.4.4), because both sides are case-folded by Python the same
way the scan folds them.

Every SQLite call runs in the index's own bounded thread pool, never on
the reactor thread; writes are queued and committed in batches, one
transaction per account per batch.  Delivered messages wait in the queue
while deliveries keep coming (at most L{DEFER_LIMIT} seconds, and within
L{DEFER_MESSAGES} and L{DEFER_BYTES}): in a burst, the CPU goes to
answering the senders first.  A text search commits what is queued
before it asks the index, and a FETCH of a message still queued reads it
from the store, so neither ever misses one.
"""

import functools
import hashlib
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mailplat.imap.cache import CacheKey, MessageSummary, summarize
from mailplat.imap.indexworker import Analyser, AnalysisFailed
from mailplat.imap.search import SearchText, searchText
from mailplat.imap.structure import parseMessage

__all__ = ["MessageIndex", "SCHEMA_VERSION", "indexPath", "indexedForm", "indexedTexts", "removeIndex"]

log = Logger()

#: The format of the file and of the serialized summaries; a file of
#: another version is dropped and rebuilt, never read.
SCHEMA_VERSION = 2
#: Writes queued before they are committed without waiting for the timer.
BATCH = 500
#: Seconds a queued write waits for company before it is committed.
FLUSH_DELAY = 0.2
#: Delivered messages are analysed and written once deliveries have paused
#: for L{FLUSH_DELAY}, so that in a burst the index's work (about a fifth
#: of a small message's CPU) waits for the senders to be answered; but
#: none waits longer than this many seconds after the first of them...
DEFER_LIMIT = 10.0
#: ... nor while more than this many delivered messages...
DEFER_MESSAGES = 10000
#: ... or octets of them are held.
DEFER_BYTES = 64 * 1024 * 1024
#: Characters of searchable text kept per message; a message with more is
#: searched by reading it.
TEXT_LIMIT = 4 * 1024 * 1024
#: Largest delivered message indexed at delivery (larger ones are indexed
#: when a search first needs them).
DELIVERY_LIMIT = 1024 * 1024
#: Trigrams of a needle asked of the FTS table (spread over the needle);
#: C{instr} checks the rest.
QUERY_TRIGRAMS = 8

# messages.hastext
_TEXT = 1  # the text is in ``texts``
_NO_TEXT = 2  # too big or not storable: searched by reading the message

Prefix = Tuple[str, str, int]

_SCHEMA = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE mailboxes (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, uidvalidity INTEGER NOT NULL)",
    "CREATE TABLE messages (id INTEGER PRIMARY KEY, mailbox INTEGER NOT NULL, uid INTEGER NOT NULL,"
    " summary BLOB NOT NULL, hastext INTEGER NOT NULL, UNIQUE (mailbox, uid))",
    "CREATE TABLE fulltext (id INTEGER PRIMARY KEY, head TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE VIRTUAL TABLE texts USING fts5(head, body, tokenize='trigram case_sensitive 1', detail=none, content='')",
]
_TABLES = ["texts", "fulltext", "messages", "mailboxes", "meta"]


def indexedForm(text: str) -> str:
    """
    What the full-text table is given for C{text}: its lines (split at
    LF), each distinct one once, in order of first appearance.  Every
    trigram of C{text} that does not hold a line break is in it; the
    others may not be (L{matchQuery} never asks for one).  The same text
    always gives the same form (a row is deleted from the contentless
    table by giving its indexed values again).
    """
    if "\n" not in text:
        return text
    lines = text.split("\n")
    distinct = dict.fromkeys(lines)
    if len(distinct) == len(lines):
        return text
    return "\n".join(distinct)


def indexPath(directory: str, account: str) -> str:
    """
    The index file of C{account} in the index directory C{directory}.
    """
    digest = hashlib.sha256(account.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]
    return os.path.join(directory, digest + ".sqlite")


def _unlinkIndex(path: str) -> bool:
    """
    Delete the index file C{path} with its WAL, shared-memory and journal
    files; whether there was one.
    """
    found = False
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
            found = True
        except FileNotFoundError:
            pass
    return found


def removeIndex(directory: str, account: str) -> bool:
    """
    Delete the index file of C{account} (a deleted account: its summaries
    and the text of its mail go with it).  A process that has the file
    open sees it gone at its next use and starts a new one (the inode
    check of L{_Database.open}).

    @return: whether there was a file.
    @raise OSError: it is there but cannot be deleted.
    """
    return _unlinkIndex(indexPath(directory, account))


def _dropText(db: sqlite3.Connection, rowId: int) -> None:
    """
    Delete the text of the message row C{rowId} (from C{fulltext} and,
    with the values it was indexed with, from the contentless C{texts}).
    """
    row = db.execute("SELECT head, body FROM fulltext WHERE id = ?", (rowId,)).fetchone()
    if row is None:
        return
    head, body = row
    db.execute("INSERT INTO texts (texts, rowid, head, body) VALUES ('delete', ?, ?, ?)",
               (rowId, indexedForm(head), indexedForm(body)))
    db.execute("DELETE FROM fulltext WHERE id = ?", (rowId,))


def encodeSummary(summary: MessageSummary) -> bytes:
    """
    The stored form of a summary (JSON; octet strings as Latin-1).  Only
    whole summaries are stored, never a header-only one.
    """
    assert summary.bodyStructure is not None and summary.body is not None, "a header-only summary"
    return json.dumps(
        [
            summary.envelope.decode("latin-1"),
            summary.bodyStructure.decode("latin-1"),
            summary.body.decode("latin-1"),
            summary.baseSubject,
            summary.isReply,
            summary.sentDate,
            summary.fromMailbox,
            summary.toMailbox,
            summary.ccMailbox,
            summary.messageId,
            list(summary.references),
            [list(pair) for pair in summary.headers],
            summary.allHeaders,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8", errors="surrogatepass")


def storedText(text: Optional[SearchText]) -> Optional[Tuple[str, str, str, str]]:
    """
    What the index stores of a message's searchable text: its head and
    body and their L{indexed forms <indexedForm>}, or L{None} when the
    text is not stored (over L{TEXT_LIMIT}, or text SQLite cannot hold,
    such as lone surrogates): such a message is searched by reading it.
    """
    if text is None or len(text.head) + len(text.body) > TEXT_LIMIT:
        return None
    try:
        text.head.encode("utf-8")
        text.body.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text.head, text.body, indexedForm(text.head), indexedForm(text.body)


def analyse(content: bytes) -> Tuple[bytes, Optional[Tuple[str, str, str, str]]]:
    """
    What the index stores of a message (C{content}, with CRLF line ends):
    its encoded summary and its L{stored text <storedText>}.  The Python
    work of indexing a message, done for a delivered one by the
    L{parser process <mailplat.imap.indexworker>}.
    """
    parsed = parseMessage(content)
    return encodeSummary(summarize(parsed)), storedText(searchText(parsed))


def decodeSummary(blob: bytes) -> Optional[MessageSummary]:
    """
    The summary stored as C{blob}, or L{None} when it is not one.
    """
    try:
        (envelope, bodyStructure, body, base, isReply, sent, fromBox, toBox, ccBox,
         messageId, references, headers, allHeaders) = json.loads(bytes(blob).decode("utf-8", errors="surrogatepass"))
        return MessageSummary(
            envelope=envelope.encode("latin-1"),
            bodyStructure=bodyStructure.encode("latin-1"),
            body=body.encode("latin-1"),
            baseSubject=base,
            isReply=bool(isReply),
            sentDate=None if sent is None else float(sent),
            fromMailbox=fromBox,
            toMailbox=toBox,
            ccMailbox=ccBox,
            messageId=messageId,
            references=tuple(references),
            headers=tuple((str(n), str(v)) for n, v in headers),
            allHeaders=bool(allHeaders),
        )
    except (ValueError, TypeError, AttributeError, UnicodeError):
        return None


def matchQuery(needle: str) -> str:
    """
    The FTS5 query for the trigrams of C{needle} (three characters or
    more): at most L{QUERY_TRIGRAMS} of them, spread over the needle,
    ANDed; only trigrams without a line break (see L{indexedForm}), so
    C{""} when the needle has none (every indexed text is a candidate).
    """
    grams = list(OrderedDict.fromkeys(
        gram for gram in (needle[i : i + 3] for i in range(len(needle) - 2)) if "\n" not in gram))
    if len(grams) > QUERY_TRIGRAMS:
        step = (len(grams) - 1) / (QUERY_TRIGRAMS - 1)
        grams = [grams[round(i * step)] for i in range(QUERY_TRIGRAMS)]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


def _rebuildable(error: sqlite3.Error) -> bool:
    """
    Whether C{error} says the file is damaged or not ours (rebuild it),
    rather than busy, full or unwritable (try again later).
    """
    if not isinstance(error, sqlite3.OperationalError):
        return isinstance(error, sqlite3.DatabaseError)
    text = str(error).lower()
    return any(word in text for word in ("no such", "malformed", "corrupt", "not a database"))


def _daemonThread(*args: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(*args, **kwargs)
    thread.daemon = True
    return thread


class _Database:
    """
    One account's index file and its connection, used by one thread at a
    time (C{lock}).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.db: Optional[sqlite3.Connection] = None
        self.inode: Optional[Tuple[int, int]] = None

    def open(self) -> sqlite3.Connection:
        """
        The connection, (re)opened when the file was deleted or replaced.
        """
        try:
            st = os.stat(self.path)
            inode: Optional[Tuple[int, int]] = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            inode = None
        if self.db is not None and inode != self.inode:
            log.warn("message index {path} was removed or replaced; rebuilding it", path=self.path)
            self.close()
        if self.db is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            try:
                self._setUp(db)
                st = os.stat(self.path)
            except BaseException:
                db.close()
                raise
            self.db, self.inode = db, (st.st_dev, st.st_ino)
        return self.db

    def _setUp(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
                version = row[0] if row else None
            except sqlite3.OperationalError:
                version = None
            if version != SCHEMA_VERSION:
                if version is not None:
                    log.info("message index {path} is of format {old}, not {new}; rebuilding it",
                             path=self.path, old=version, new=SCHEMA_VERSION)
                for table in _TABLES:
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
        self.db, self.inode = None, None

    def destroy(self) -> None:
        """
        Close and delete the file (and its WAL), to be made again.
        """
        self.close()
        try:
            _unlinkIndex(self.path)
        except OSError:
            pass

    def mailboxId(self, db: sqlite3.Connection, name: str, uidValidity: int, create: bool) -> Optional[int]:
        """
        The id of mailbox C{name} under C{uidValidity}; with C{create}
        (inside a write transaction) made, or emptied of the rows of
        another UIDVALIDITY; else L{None} when it has no rows here.
        """
        row = db.execute("SELECT id, uidvalidity FROM mailboxes WHERE name = ?", (name,)).fetchone()
        if row is None:
            if not create:
                return None
            cursor = db.execute("INSERT INTO mailboxes (name, uidvalidity) VALUES (?, ?)", (name, uidValidity))
            return cursor.lastrowid
        mailboxId, old = row
        if old == uidValidity:
            return mailboxId
        if not create:
            return None
        # A new UIDVALIDITY: the old rows describe other messages.
        self._emptyMailbox(db, mailboxId)
        db.execute("UPDATE mailboxes SET uidvalidity = ? WHERE id = ?", (uidValidity, mailboxId))
        return mailboxId

    def dropMailbox(self, db: sqlite3.Connection, name: str, inferiors: bool) -> None:
        """
        (Inside a write transaction.)  Delete every row of mailbox C{name}
        and, with C{inferiors}, of the mailboxes below it (C{name/...}).
        """
        below = name + "/"
        found = db.execute("SELECT id FROM mailboxes WHERE name = ? OR (? AND substr(name, 1, ?) = ?)",
                           (name, inferiors, len(below), below)).fetchall()
        for (mailboxId,) in found:
            self._emptyMailbox(db, mailboxId)
            db.execute("DELETE FROM mailboxes WHERE id = ?", (mailboxId,))

    @staticmethod
    def _emptyMailbox(db: sqlite3.Connection, mailboxId: int) -> None:
        for (rowId,) in db.execute("SELECT id FROM messages WHERE mailbox = ? AND hastext = ?",
                                   (mailboxId, _TEXT)).fetchall():
            _dropText(db, rowId)
        db.execute("DELETE FROM messages WHERE mailbox = ?", (mailboxId,))


class MessageIndex:
    """
    The per-account SQLite index files under one directory, shared by
    every session of a process (and by the processes sharing the data
    directory).

    @ivar directory: where the files are.
    @ivar rebuilds: how many damaged files were dropped and made again.
    """

    def __init__(
        self,
        directory: str,
        reactor: Any = None,
        maxThreads: int = 2,
        maxOpen: int = 64,
        run: Optional[Callable[..., "defer.Deferred[Any]"]] = None,
        analyser: Optional[Analyser] = None,
    ) -> None:
        """
        @param directory: the directory of the index files (made when
            first needed), such as C{<data-dir>/index}.
        @param reactor: for the thread pool and the write timer; the
            global reactor if L{None}.
        @param maxThreads: the bound of the thread pool.
        @param maxOpen: how many account files are kept open.
        @param run: calls C{f(*args)} and returns a Deferred of its result;
            by default in the index's thread pool (tests give a
            synchronous one).
        @param analyser: analyses delivered messages (by default an
            L{Analyser} that sends the big ones to a parser process).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.directory = directory
        self.rebuilds = 0
        self._reactor = reactor
        self._maxThreads = maxThreads
        self._maxOpen = maxOpen
        self._pool: Optional[ThreadPool] = None
        self._run = run if run is not None else self._inPool
        self.analyser = analyser if analyser is not None else Analyser()
        self._pending: List[tuple] = []
        self._timer: Any = None
        # The delivered messages among the queued rows: how many, their
        # octets, when the first and the last came; and whether a row of
        # another kind waits (then nothing is held back).
        self._rawCount = 0
        self._rawBytes = 0
        self._firstRaw: Optional[float] = None
        self._lastRaw = 0.0
        self._prompt = False
        self._writing = defer.DeferredLock()
        self._databases: "OrderedDict[str, _Database]" = OrderedDict()
        self._databasesLock = threading.Lock()
        self._closed = False
        # Account -> when keepOnly last queued its pruning.
        self._kept: Dict[str, float] = {}

    # -- threads and files --------------------------------------------------

    def _inPool(self, f: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self._maxThreads, name="mailplat-index")
            # Daemon threads, and stopped with the reactor: a process never
            # waits on its index to exit (the files are a cache).
            self._pool.threadFactory = _daemonThread  # type: ignore[assignment]
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._stopPool)
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args)

    def pathFor(self, account: str) -> str:
        """
        The index file of C{account}.
        """
        return indexPath(self.directory, account)

    def _database(self, account: str) -> _Database:
        with self._databasesLock:
            database = self._databases.get(account)
            if database is None:
                database = self._databases[account] = _Database(self.pathFor(account))
            self._databases.move_to_end(account)
            while len(self._databases) > self._maxOpen:
                oldest = next(iter(self._databases.values()))
                if not oldest.lock.acquire(blocking=False):
                    break
                try:
                    oldest.close()
                finally:
                    oldest.lock.release()
                self._databases.popitem(last=False)
        return database

    def _with(self, account: str, op: Callable[[_Database, sqlite3.Connection], Any], fallback: Any) -> Any:
        """
        Run C{op} on the account's open file (in a pool thread); a damaged
        file is deleted and C{op} run once more on a new one; a busy or
        unwritable one gives C{fallback}.
        """
        for attempt in (1, 2):
            database = self._database(account)
            with database.lock:
                db = None
                try:
                    db = database.open()
                    return op(database, db)
                except sqlite3.Error as e:
                    if db is not None and db.in_transaction:
                        try:
                            db.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    if not _rebuildable(e):
                        log.warn("message index {path} not usable now ({error}); reading the messages instead",
                                 path=database.path, error=str(e))
                        return fallback
                    log.error("message index {path} is damaged ({error}); rebuilding it",
                              path=database.path, error=str(e))
                    database.destroy()
                    self.rebuilds += 1
                except OSError as e:
                    log.warn("message index {path} not usable ({error}); reading the messages instead",
                             path=database.path, error=str(e))
                    return fallback
        return fallback

    # -- writes -------------------------------------------------------------

    def _queue(self, row: tuple) -> None:
        """
        Queue a write: committed L{FLUSH_DELAY} seconds later, or at once
        when L{BATCH} rows wait; delivered messages (C{raw} rows) wait
        for the deliveries to pause (see L{DEFER_LIMIT}).  All rows are
        written in the order they came.
        """
        if self._closed:
            return
        self._pending.append(row)
        if row[0] == "raw":
            now = self._reactor.seconds()
            self._lastRaw = now
            if self._firstRaw is None:
                self._firstRaw = now
            self._rawCount += 1
            self._rawBytes += len(row[2])
            if self._rawCount >= DEFER_MESSAGES or self._rawBytes >= DEFER_BYTES:
                self.flush()
                return
        else:
            self._prompt = True
            if len(self._pending) - self._rawCount >= BATCH:
                self.flush()
                return
        if self._timer is None:
            self._timer = self._reactor.callLater(FLUSH_DELAY, self._timerFired)

    def _timerFired(self) -> None:
        self._timer = None
        if not self._prompt and self._firstRaw is not None:
            # Only delivered messages wait: not before the deliveries have
            # paused, unless the first has waited long enough.
            now = self._reactor.seconds()
            due = min(self._lastRaw + FLUSH_DELAY, self._firstRaw + DEFER_LIMIT)
            # (A millisecond early is on time: the timer's sum of floats
            # may fall a hair short of the same sum made here.)
            if now < due - 0.001:
                self._timer = self._reactor.callLater(due - now, self._timerFired)
                return
        self.flush()

    def add(self, key: CacheKey, summary: MessageSummary, text: Optional[SearchText]) -> None:
        """
        Queue a message's summary and searchable text for the index.
        """
        self._queue(("add", key, summary, text))

    def delivered(self, account: Any, mailbox: Any, uid: int, prefix: bytes, message: BinaryIO) -> None:
        """
        A message was just stored by local delivery as C{prefix} followed
        by C{message}: queue it to be parsed and indexed off the reactor
        thread once the deliveries pause (see L{DEFER_LIMIT}; a text
        search flushes it first).  Never raises and never waits (a
        message over L{DELIVERY_LIMIT} is left for the first search that
        needs it).
        """
        try:
            message.seek(0, os.SEEK_END)
            size = message.tell()
            if size + len(prefix) > DELIVERY_LIMIT:
                return
            message.seek(0)
            content = prefix + message.read()
            key = (getattr(account, "address", ""), mailbox.name, mailbox.uidValidity, uid)
            self._queue(("raw", key, content))
        except Exception:
            log.failure("could not queue a delivered message for the message index")

    def copy(self, source: Prefix, target: Prefix, pairs: Sequence[Tuple[int, int]]) -> None:
        """
        Queue: the messages C{pairs} (source UID, target UID) of mailbox
        C{source} were copied to C{target} (same account) and have the
        same entries.
        """
        self._queue(("copy", source, target, list(pairs)))

    def forget(self, prefix: Prefix, uids: Iterable[int]) -> None:
        """
        Queue: drop the rows of C{uids} (expunged) of the mailbox C{prefix}.
        """
        uids = list(uids)
        if uids:
            self._queue(("forget", prefix, uids))

    def dropMailbox(self, account: str, name: str, inferiors: bool = False) -> None:
        """
        Queue: mailbox C{name} of C{account} was deleted (or, with
        C{inferiors}, renamed along with the mailboxes below it), so drop
        its rows.  What is written for that name afterwards belongs to a
        mailbox made since.
        """
        self._queue(("drop", (account, name), inferiors))

    def keepOnly(self, account: str, names: Iterable[str]) -> None:
        """
        Queue: C{names} are all the mailboxes C{account} has (a LIST just
        read them), so drop the rows of any other mailbox of its file.  At
        most once an hour per account; a mailbox made meanwhile only loses
        rows that are made again when needed.
        """
        now = self._reactor.seconds()
        if now - self._kept.get(account, float("-inf")) < 3600:
            return
        if len(self._kept) > 10000:
            self._kept.clear()
        self._kept[account] = now
        self._queue(("keep", (account,), frozenset(names)))

    def flush(self) -> "defer.Deferred[None]":
        """
        Commit every queued write; fires once they are in the files (or
        failed, which is logged).
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        rows, self._pending = self._pending, []
        self._rawCount = self._rawBytes = 0
        self._firstRaw = None
        self._prompt = False
        if not rows:
            # Still wait for a batch being written.
            return self._writing.run(defer.succeed, None)

        def write() -> "defer.Deferred[None]":
            return self._run(self._write, rows)

        d = self._writing.run(write)
        d.addErrback(lambda f: log.failure("message index write failed", f))
        return d

    def _write(self, rows: List[tuple]) -> None:
        """
        (In a pool thread.)  Write C{rows}: one transaction per account.
        """
        byAccount: Dict[str, List[tuple]] = {}
        for row in rows:
            if row[0] == "raw":
                key, content = row[1], row[2]
                try:
                    blob, text = self.analyser.analyse(content)
                except AnalysisFailed as e:
                    log.warn("could not index a delivered message: {error}", error=str(e))
                    continue
                except Exception:
                    log.failure("could not index a delivered message")
                    continue
                row = ("analysed", key, blob, text)
            byAccount.setdefault(row[1][0], []).append(row)
        for account, accountRows in byAccount.items():
            self._with(account, functools.partial(self._writeRows, rows=accountRows), None)

    def _writeRows(self, database: _Database, db: sqlite3.Connection, rows: List[tuple]) -> None:
        db.execute("BEGIN IMMEDIATE")
        ids: Dict[Tuple[str, int], Optional[int]] = {}

        def mailboxId(name: str, uidValidity: int) -> int:
            if (name, uidValidity) not in ids:
                ids[(name, uidValidity)] = database.mailboxId(db, name, uidValidity, True)
            found = ids[(name, uidValidity)]
            assert found is not None
            return found

        for row in rows:
            kind = row[0]
            if kind == "add":
                _, (_, name, uidValidity, uid), summary, text = row
                self._insert(db, mailboxId(name, uidValidity), uid, encodeSummary(summary), storedText(text))
            elif kind == "analysed":
                _, (_, name, uidValidity, uid), blob, stored = row
                self._insert(db, mailboxId(name, uidValidity), uid, blob, stored)
            elif kind == "copy":
                _, (_, name, uidValidity), (_, targetName, targetValidity), pairs = row
                source = mailboxId(name, uidValidity)
                target = mailboxId(targetName, targetValidity)
                for old, new in pairs:
                    found = db.execute(
                        "SELECT m.summary, m.hastext, f.head, f.body FROM messages m LEFT JOIN fulltext f ON f.id = m.id"
                        " WHERE m.mailbox = ? AND m.uid = ?", (source, old),
                    ).fetchone()
                    if found is None:
                        continue
                    blob, hastext, head, body = found
                    text = SearchText(head, body) if hastext == _TEXT and head is not None else None
                    self._insert(db, target, new, blob, storedText(text))
            elif kind == "keep":
                _, _, names = row
                for (name,) in db.execute("SELECT name FROM mailboxes").fetchall():
                    if name not in names:
                        database.dropMailbox(db, name, False)
                ids.clear()
            elif kind == "drop":
                _, (_, name), inferiors = row
                database.dropMailbox(db, name, inferiors)
                # (The ids met so far in this batch may be gone.)
                ids.clear()
            elif kind == "forget":
                _, (_, name, uidValidity), uids = row
                mailbox = database.mailboxId(db, name, uidValidity, False)
                if mailbox is None:
                    continue
                for uid in uids:
                    found = db.execute("SELECT id, hastext FROM messages WHERE mailbox = ? AND uid = ?",
                                       (mailbox, uid)).fetchone()
                    if found is None:
                        continue
                    if found[1] == _TEXT:
                        _dropText(db, found[0])
                    db.execute("DELETE FROM messages WHERE id = ?", (found[0],))
        db.execute("COMMIT")

    @staticmethod
    def _insert(db: sqlite3.Connection, mailbox: int, uid: int, blob: bytes,
                stored: Optional[Tuple[str, str, str, str]]) -> None:
        """
        Add a message's rows: its encoded summary, and its L{stored text
        <storedText>} when there is one.
        """
        if db.execute("SELECT 1 FROM messages WHERE mailbox = ? AND uid = ?", (mailbox, uid)).fetchone():
            return  # the same content, already indexed (by another session or process)
        cursor = db.execute(
            "INSERT INTO messages (mailbox, uid, summary, hastext) VALUES (?, ?, ?, ?)",
            (mailbox, uid, blob, _NO_TEXT if stored is None else _TEXT),
        )
        if stored is not None:
            head, body, indexedHead, indexedBody = stored
            db.execute("INSERT INTO fulltext (id, head, body) VALUES (?, ?, ?)", (cursor.lastrowid, head, body))
            db.execute("INSERT INTO texts (rowid, head, body) VALUES (?, ?, ?)",
                       (cursor.lastrowid, indexedHead, indexedBody))

    # -- reads --------------------------------------------------------------

    def mayHold(self, account: str) -> bool:
        """
        Whether the index may hold anything of C{account}: writes are
        queued, or its file exists.  When not, asking it for summaries
        one key at a time would be wasted work (a first search of mail
        that never went through delivery, a hundred thousand keys).
        """
        return bool(self._pending) or os.path.exists(self.pathFor(account))

    def summaries(self, prefix: Prefix, uids: Iterable[int]) -> "defer.Deferred[Dict[int, MessageSummary]]":
        """
        The summaries the index holds for C{uids} of the mailbox C{prefix}
        (C{(account, mailbox, UIDVALIDITY)}), by UID.
        """
        wanted = set(uids)
        found: Dict[int, MessageSummary] = {}
        # (Only rows other than deliveries can be "add"s: a burst of held
        # deliveries is not scanned at every FETCH.)
        for row in self._pending if self._prompt else ():
            if row[0] == "add" and row[1][:3] == prefix and row[1][3] in wanted:
                found[row[1][3]] = row[2]
        rest = wanted.difference(found)
        if not rest or not os.path.exists(self.pathFor(prefix[0])):
            # (No file yet: nothing to read, and no reason to make one.)
            return defer.succeed(found)

        def op(database: _Database, db: sqlite3.Connection) -> Dict[int, MessageSummary]:
            out: Dict[int, MessageSummary] = {}
            mailbox = database.mailboxId(db, prefix[1], prefix[2], False)
            if mailbox is None:
                return out
            if len(rest) > 200:
                rows: Iterable[Tuple[int, bytes]] = db.execute(
                    "SELECT uid, summary FROM messages WHERE mailbox = ?", (mailbox,))
            else:
                rows = []
                ordered = sorted(rest)
                for n in range(0, len(ordered), 100):
                    chunk = ordered[n : n + 100]
                    rows.extend(db.execute(
                        "SELECT uid, summary FROM messages WHERE mailbox = ? AND uid IN (%s)" % ",".join("?" * len(chunk)),
                        [mailbox, *chunk],
                    ).fetchall())
            for uid, blob in rows:
                if uid in rest:
                    summary = decodeSummary(blob)
                    if summary is not None:
                        out[uid] = summary
            return out

        d = self._run(self._with, prefix[0], op, {})
        d.addCallback(lambda more: {**more, **found})
        return d

    def textState(self, prefix: Prefix) -> "defer.Deferred[Optional[Tuple[Set[int], Set[int]]]]":
        """
        After the queued writes: C{(indexed, unindexable)}, the UIDs of the
        mailbox C{prefix} whose text the index holds, and those it keeps
        no text for (searched by reading them); L{None} when the file
        cannot be read now.
        """

        def op(database: _Database, db: sqlite3.Connection) -> Tuple[Set[int], Set[int]]:
            indexed: Set[int] = set()
            unindexable: Set[int] = set()
            mailbox = database.mailboxId(db, prefix[1], prefix[2], False)
            if mailbox is not None:
                for uid, hastext in db.execute("SELECT uid, hastext FROM messages WHERE mailbox = ?", (mailbox,)):
                    (indexed if hastext == _TEXT else unindexable).add(uid)
            return indexed, unindexable

        d = self.flush()
        return d.addCallback(lambda _: self._run(self._with, prefix[0], op, None))

    def search(self, prefix: Prefix, needle: str, text: bool) -> "defer.Deferred[Optional[Set[int]]]":
        """
        The UIDs of the mailbox C{prefix} whose indexed text holds
        C{needle} (case-folded, three characters or more): in the body,
        or with C{text} in the header fields or the body.  L{None} when
        the index cannot answer.
        """
        where = "instr(f.body, ?) > 0"
        query = matchQuery(needle)
        params: List[Any] = [query, 0, needle] if query else [0, needle]
        if text:
            where = "(instr(f.head, ?) > 0 OR " + where + ")"
            params.append(needle)
        if query:
            # CROSS JOIN keeps the FTS lookup the outer loop (once, not per row).
            sql = ("SELECT m.uid FROM texts t CROSS JOIN messages m ON m.id = t.rowid CROSS JOIN fulltext f ON f.id = m.id"
                   " WHERE texts MATCH ? AND m.mailbox = ? AND " + where)
        else:
            # No trigram to look up (each holds a line break): every text
            # of the mailbox is checked.
            sql = "SELECT m.uid FROM messages m CROSS JOIN fulltext f ON f.id = m.id WHERE m.mailbox = ? AND " + where
        mailboxParam = 1 if query else 0

        def op(database: _Database, db: sqlite3.Connection) -> Optional[Set[int]]:
            mailbox = database.mailboxId(db, prefix[1], prefix[2], False)
            if mailbox is None:
                return set()
            params[mailboxParam] = mailbox
            return {uid for (uid,) in db.execute(sql, params)}

        return self._run(self._with, prefix[0], op, None)

    # -- life ---------------------------------------------------------------

    def _stopPool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()

    @defer.inlineCallbacks
    def close(self) -> Any:
        """
        Commit what is queued, stop the thread pool and close the files.
        """
        if self._closed:
            return
        yield self.flush()
        self._closed = True
        self._stopPool()
        self.analyser.close()
        with self._databasesLock:
            for database in self._databases.values():
                with database.lock:
                    database.close()
            self._databases.clear()


@defer.inlineCallbacks
def indexedTexts(
    cache: Any,
    prefix: Prefix,
    uids: Sequence[int],
    keys: Sequence[Any],
    read: Callable[[int], "defer.Deferred[Optional[bytes]]"],
) -> Any:
    """
    Answer the TEXT/BODY keys C{keys} (from L{SearchQuery.textKeys
    <mailplat.imap.search.SearchQuery.textKeys>}) for the messages C{uids}
    of the mailbox C{prefix} from the index of C{cache}: first index the
    messages it lacks (read with C{read}, which gives L{None} for a
    message gone), and drop the rows of UIDs below the highest of
    C{uids} that are no longer there.

    @return: a Deferred firing with C{(answers, scan)}: C{answers} maps
        each key to the set of UIDs it matches, C{scan} the UIDs the index
        cannot answer for (to be searched by reading them); or L{None}
        when the index cannot answer at all.
    """
    index = cache.index
    state = yield index.textState(prefix)
    if state is None:
        return None
    indexed, unindexable = state
    present = set(uids)
    top = max(uids, default=0)
    gone = [u for u in indexed | unindexable if u < top and u not in present]
    index.forget(prefix, gone)
    scan = set(unindexable & present)
    for u in uids:
        if u in indexed or u in unindexable:
            continue
        data = yield read(u)
        if data is None:
            scan.add(u)
            continue
        try:
            parsed = parseMessage(data)
            cache.remember(prefix + (u,), parsed)
        except Exception:
            log.failure("could not index message {uid} of {mailbox}", uid=u, mailbox=prefix[1])
            scan.add(u)
    state = yield index.textState(prefix)
    if state is None:
        return None
    indexed = state[0]
    scan |= present - indexed
    answers = {}
    for key in keys:
        hits = yield index.search(prefix, key.folded, key.text)
        if hits is None:
            return None
        answers[key] = hits
    return answers, scan
