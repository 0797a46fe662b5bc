"""
A store that keeps mail in Maildir++ directories that mutt and Dovecot can
open too.

Layout, under the store's root directory::

    <root>/<domain>/<localpart>/Maildir/          the account's INBOX
        cur/ new/ tmp/                            Maildir proper
        .Sent/ .a.b/ ...                          folders (Maildir++), "a/b" is ".a.b"
        subscriptions                             Dovecot's version 2 format: a "V<tab>2"
                                                  line, a blank line, one name a line with
                                                  tabs between levels (version 1 is read too)
        mailplat-specialuse                       "<attribute> <name>" per line
        mailplat-acl                              ACLs: "<name><tab><identifier><tab><rights>"
        mailplat-uidlist, mailplat-uidlist.lock   UIDs (below), in every maildir
        dovecot-keywords                          "<index> <keyword>": letter a+index
        mailplat-pop3.lock                        flock()ed by lockExclusive
    <root>/mailplat-shared                        who shares with whom: "<identifier><tab><owner>"
                                                  (an index; the ACL files are the truth),
                                                  changed under flock of mailplat-shared.lock

Each folder level is encoded in modified UTF-7 (RFC 3501 5.1.3) as Dovecot
does on disk, and a literal C{.} inside a level is encoded too (C{&AC4-}),
so the hierarchy stays unambiguous.

Message files are named C{<time>.M<usec>P<pid>Q<n>.<host>,S=<disk>,W=<wire>}
with C{:2,<flags>} in C{cur/} (letters C{DFPRST}, keywords C{a}-C{z} through
C{dovecot-keywords}).  Files keep LF line ends on disk; L{openMessage
<MaildirMailbox.openMessage>} turns them back into CRLF (a foreign file that
already has CRLF is left as it is), and C{W=} is the size of that wire form.

C{mailplat-uidlist} holds, after a header line C{1 V<uidvalidity>
N<uidnext> M<highestmodseq> R<first recent uid>}, one line per message::

    <uid> <modseq> <internal date> <wire size> <subdir>/<file name>

where the internal date is C{-} until it is known: it is the file's mtime
(as in Dovecot), read only when a client first asks for it, so that the
first listing of a maildir another server filled costs no C{stat} per
file; dates learnt so go into the list the next time it is written whole.

It is rewritten atomically (temporary file, fsync, rename, fsync of the
directory) under an C{flock} of C{mailplat-uidlist.lock}, so two mailplat
processes can share a maildir.  Files that appear in C{new/} or C{cur/}
through another program get the next UIDs in the order of their names;
files that disappear are expunged; renamed files (flags changed by mutt)
get a new modseq.  Changes are appended to it as records (a message's line
again, C{X<uid>} expunged, C{R<uid>}, C{M<modseq>}) until they outnumber
the messages, then it is written whole again.

The directories are listed again only when their mtimes changed, and once
more after a listing made within two seconds of their mtime (a change in
the same clock tick leaves the mtime as it was).  A change made under the
lock (append batch, flags, expunge, claim) updates the entries itself and
is followed by a C{D<new> <cur> <new> <cur>} record with the directories'
mtimes before and after it: the process that made it, and any other whose
entries matched the mtimes before, take the ones after without a listing
(a program that does not take the lock could have changed the directories
during it, so they are listed once, two seconds after the last change).

A message is \\Recent while its UID is at least the first-recent UID of the
header (as in Dovecot's index); L{claimRecent <MaildirMailbox.claimRecent>}
moves the claimed messages from C{new/} to C{cur/} and raises it, without
an fsync (a claim lost in a crash shows the messages as \\Recent again).

Appends share their commits (group commit), run in a bounded thread pool
the store owns (started at the first append, stopped by
L{MaildirStore.close}).  On Linux the batch itself writes each message
file into C{tmp/}, in the pool, without an fsync of its own (elsewhere
each file is written and fsynced in the pool before it joins a batch);
the messages of a batch then enter the mailbox together:
one C{syncfs(2)} that makes the data of every file of the batch durable
(taken before the lock), then one C{flock}, one rename each into C{new/}
or C{cur/}, one fsync of each directory touched and one append to the
uidlist with one C{fdatasync}, for the whole batch.  While one batch
commits, the next one gathers, so under load a batch carries every append
that finished meanwhile.  An append's
Deferred fires only after its batch's fsyncs: no message is acknowledged
before it is durable.  A mailbox's in-memory state is guarded by a
C{threading.RLock}, taken by the batch thread and by the other operations.
Flag changes, expunges and claims of \\Recent messages run in the same pool
too (their renames and fsyncs would hold up the reactor); reads run on the
calling thread and hand back an already-fired Deferred.
"""

import bisect
import fcntl
import io
import itertools
import os
import shutil
import stat
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailplat import mutf7
from mailplat.errors import (
    ConfigError,
    InvalidMailboxName,
    MailboxError,
    MailboxExists,
    MailboxLocked,
    NoSuchAccount,
    NoSuchMailbox,
    NoSuchMessage,
    StoreError,
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
    IStoreFactory,
)
from mailplat.mailbox import (
    bulkObjects,
    DEFAULT_MAILBOXES,
    MailboxStatus,
    MessageInfo,
    applyFlags,
    buildListing,
    parentNames,
    renamedName,
    validateMailboxName,
)
from mailplat.store.memory import (
    ANYONE,
    ListenerSet,
    canonicalACLRights,
    checkACLIdentifier,
    renamedACLs,
    sharedEntries,
    checkImportedModseq,
    checkImportedUID,
    checkImportedUIDValidity,
    checkUnchangedSince,
)
from mailplat.uidvalidity import newUIDValidity

CHUNK = 65536

UIDLIST = "mailplat-uidlist"
UIDLIST_LOCK = "mailplat-uidlist.lock"
KEYWORDS = "dovecot-keywords"
POP3_LOCK = "mailplat-pop3.lock"
SUBSCRIPTIONS = "subscriptions"
SPECIAL_USE = "mailplat-specialuse"
ACL_FILE = "mailplat-acl"
SHARED_INDEX = "mailplat-shared"
SHARED_LOCK = "mailplat-shared.lock"
FOLDER_MARKER = "maildirfolder"

# Maildir info letters of the IMAP system flags.
_FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
_LETTER_FLAGS = {v: k for k, v in _FLAG_LETTERS.items()}
_MAX_KEYWORDS = 26

# Seconds within which a directory's mtime may not yet show a change made
# in the same tick, so the directory is listed again regardless.
_MTIME_SLACK = 2.0

_counter = itertools.count()

#: Threads of a store's pool: message files written and fsynced at once.
POOL_SIZE = 16

#: Make a batch's message files durable with one C{syncfs(2)} (Linux)
#: rather than one C{fsync} per file.
SYNCFS = True

log = Logger()


def folderDirectory(name: str) -> str:
    """
    The Maildir++ directory name (C{.a.b}) of a validated folder name
    (C{a/b}); not meant for INBOX itself.
    """
    return "." + ".".join(mutf7.encode(level, alsoEncode=".").decode("ascii") for level in name.split("/"))


def folderName(directory: str) -> Optional[str]:
    """
    The validated mailbox name of a Maildir++ directory name, or L{None}
    when it is not one of ours (bad encoding, empty level, INBOX itself).
    """
    if not directory.startswith(".") or directory in (".", ".."):
        return None
    try:
        levels = [mutf7.decode(level, alsoEncoded=".") for level in directory[1:].split(".")]
        name = validateMailboxName("/".join(levels))
    except (ValueError, MailboxError):
        return None
    if name == "INBOX":
        return None
    return name


# Line ends: LF on disk, CRLF on the wire.


def _lfForm(data: bytes) -> bytes:
    """
    C{data} with every CR LF made LF (a bare CR stays).  Our own files have
    no CR: looking for one first is what keeps them from a pass that finds
    nothing; and a split and a join take half the time of C{replace()} on
    mail of short lines.
    """
    if b"\r" not in data:
        return data
    return b"\n".join(data.split(b"\r\n"))


def _wireForm(data: bytes) -> bytes:
    """
    C{data} in the wire form: every LF not already preceded by CR becomes
    CR LF, so data with CR LF comes out unchanged.
    """
    return _lfForm(data).replace(b"\n", b"\r\n")


class _ToDisk:
    """
    Turn a CRLF stream into LF (L{_lfForm}), chunk by chunk (a CR that ends
    a chunk is held back until the next shows whether an LF follows).
    """

    _convert = staticmethod(_lfForm)

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        data = self._held + data
        if data.endswith(b"\r"):
            data, self._held = data[:-1], b"\r"
        else:
            self._held = b""
        return self._convert(data)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


class _ToWire(_ToDisk):
    """
    Turn a file's bytes into the wire form (L{_wireForm}), chunk by chunk.
    """

    _convert = staticmethod(_wireForm)


class _WireReader(io.RawIOBase):
    """
    A read-only file giving the wire (CRLF) form of a file on disk, read in
    L{CHUNK}-sized pieces.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._file = f
        self._convert = _ToWire()
        self._buffer = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buffer and not self._eof:
            chunk = self._file.read(CHUNK)
            if chunk:
                self._buffer = self._convert.feed(chunk)
            else:
                self._buffer = self._convert.flush()
                self._eof = True
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _wireSize(path: str) -> int:
    """
    The size of the wire form of the file at C{path}.
    """
    convert = _ToWire()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            size += len(convert.feed(chunk))
    return size + len(convert.flush())


# Small file helpers.


def _fsyncDirectory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _loadSyncfs() -> Optional[Callable[[int], int]]:
    """
    Linux's C{syncfs(2)}, which makes every file of one filesystem durable
    in one call, or L{None} where there is none.
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


_syncfs = _loadSyncfs()


def _syncFilesystem(path: str) -> None:
    """
    Make everything written to the filesystem holding C{path} durable
    (C{syncfs(2)}, which reports writeback errors since Linux 5.8).
    """
    import ctypes

    assert _syncfs is not None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), path)
    finally:
        os.close(fd)


class LazyThreadPool:
    """
    A store's own thread pool: started at its first use, stopped by
    L{stop} or when the reactor shuts down.

    @ivar size: most threads (0: no pool, L{get} gives L{None}).
    """

    def __init__(self, size: int, name: str, reactor: Any = None) -> None:
        """
        @param reactor: whose shutdown stops the pool; the global reactor
            when L{None}.
        """
        self.size = size
        self.name = name
        self._reactor = reactor
        self._pool: Optional[ThreadPool] = None
        self._trigger: Any = None

    def _theReactor(self) -> Any:
        if self._reactor is not None:
            return self._reactor
        from twisted.internet import reactor

        return reactor

    def get(self) -> Optional[ThreadPool]:
        """
        The pool, started now if it was not.
        """
        if self._pool is None and self.size > 0:
            pool = ThreadPool(minthreads=0, maxthreads=self.size, name=self.name)
            pool.start()
            self._pool = pool
            trigger = getattr(self._theReactor(), "addSystemEventTrigger", None)
            if trigger is not None:
                self._trigger = trigger("during", "shutdown", self._stopped)
        return self._pool

    def _stopped(self) -> None:
        pool, self._pool = self._pool, None
        self._trigger = None
        if pool is not None:
            pool.stop()

    def stop(self) -> None:
        """
        Stop the pool (after the work under way) and forget the shutdown
        trigger; a later L{get} starts a new one.
        """
        if self._trigger is not None:
            self._theReactor().removeSystemEventTrigger(self._trigger)
        self._stopped()


def _writeAtomically(path: str, data: bytes) -> None:
    """
    Replace the file at C{path} with C{data}, durably: write a temporary
    file beside it, fsync, rename, fsync the directory.
    """
    directory = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.{next(_counter)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    _fsyncDirectory(directory)


def _readText(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


_hostnameCache: List[Tuple[int, str]] = []


def _hostname() -> str:
    """
    The host name for unique file names (C{/} and C{:} escaped, as
    Maildir asks), read once per process, as Dovecot does: a system call
    per delivered message otherwise, in the pool thread that commits.
    """
    pid = os.getpid()
    if not _hostnameCache or _hostnameCache[0][0] != pid:
        name = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
        _hostnameCache[:] = [(pid, name)]
    return _hostnameCache[0][1]


def _makeMaildir(path: str) -> None:
    """
    Make a Maildir's directories; C{cur} comes last, so a maildir whose
    C{cur} exists is complete.
    """
    os.makedirs(path, exist_ok=True)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    _fsyncDirectory(path)
    _fsyncDirectory(os.path.dirname(path))


def _isRealDirectory(path: str) -> bool:
    """
    Whether C{path} is a directory and not a symbolic link to one.
    """
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _isMaildir(path: str) -> bool:
    """
    Whether C{path} is a Maildir we may use: it and its C{cur} are real
    directories, not symbolic links, which could lead out of the account
    (another user's mail) however they got there.
    """
    return _isRealDirectory(path) and _isRealDirectory(os.path.join(path, "cur"))


def _refuseLink(path: str, name: str) -> None:
    """
    Refuse to work on a folder whose directory is a symbolic link.
    """
    if os.path.islink(path):
        raise MailboxError(f"Mailbox {name} is a symbolic link on disk; it is left alone")


def _storeError(e: OSError, what: str) -> StoreError:
    detail = e.strerror or str(e)
    where = f" ({e.filename})" if e.filename else ""
    return StoreError(f"Could not {what}: {detail}{where}")


def _run(what: str, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
    """
    Run blocking file work and hand back its outcome as a Deferred;
    C{OSError} becomes L{StoreError}.  The one place to move file work to a
    thread pool.
    """
    try:
        return defer.succeed(f(*args, **kwargs))
    except StoreError as e:
        return defer.fail(e)
    except OSError as e:
        return defer.fail(_storeError(e, what))
    except Exception:
        return defer.fail()


def _guarded(what: str, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """
    Call C{f} (in a pool thread); C{OSError} becomes L{StoreError}.
    """
    try:
        return f(*args, **kwargs)
    except StoreError:
        raise
    except OSError as e:
        raise _storeError(e, what) from None


@dataclass
class _Pending:
    """
    One append waiting for its batch: either its message file is written
    (and fsynced) in C{tmp/} already, or the batch writes it from
    C{source}.
    """

    flags: FrozenSet[str]
    done: defer.Deferred
    tmp: str = ""
    base: str = ""
    wire: int = 0
    source: Optional[BinaryIO] = None
    internalDate: Optional[float] = None


# Messages.


class _Entry(NamedTuple):
    """
    What a maildir knows about one message file (a tuple: ten thousand of
    them are made at each reading of a uidlist).

    C{internalDate} is L{None} while not known: the file's mtime, read
    when first asked for (L{MaildirMailbox._dateOf}), as Dovecot does.
    """

    uid: int
    modseq: int
    internalDate: Optional[float]
    size: int
    subdir: str
    filename: str

    @property
    def base(self) -> str:
        return self.filename.partition(":")[0]

    @property
    def relpath(self) -> str:
        return self.subdir + "/" + self.filename


#: Makes an L{_Entry} from a tuple of its fields, without the keyword
#: handling of its constructor (half the cost, in the loops that make one
#: per message).
_newEntry = tuple.__new__


def _entryLine(entry: _Entry) -> str:
    """
    The uidlist line of one message (C{-} for an internal date not known
    yet).
    """
    date = entry.internalDate
    return f"{entry.uid} {entry.modseq} {'-' if date is None else repr(date)} {entry.size} {entry.subdir}/{entry.filename}\n"


def _parseEntry(line: str) -> Optional[_Entry]:
    """
    The entry a uidlist line of a message gives, or L{None} when it is
    not one.
    """
    parts = line.split(" ", 4)
    if len(parts) != 5:
        return None
    uid, modseq, date, size, rel = parts
    subdir, _, filename = rel.partition("/")
    if subdir != "cur" and subdir != "new":
        return None
    try:
        return _newEntry(_Entry, (int(uid), int(modseq), None if date == "-" else float(date), int(size), subdir,
                                  filename))
    except ValueError:
        return None


def _infoLetters(filename: str) -> str:
    _, sep, info = filename.partition(":2,")
    return info if sep else ""


def _sizeFromName(filename: str, field: str) -> Optional[int]:
    """
    The size a message file's name gives in its C{S=} (on disk) or C{W=}
    (wire form) field (C{field} is C{"S"} or C{"W"}), or L{None} when it
    gives none.
    """
    base = filename.partition(":")[0]
    at = base.find("," + field + "=")
    if at < 0:
        return None
    digits = base[at + 3:].partition(",")[0]
    if digits.isdigit():
        return int(digits)
    for part in base.split(",")[1:]:
        if part.startswith(field + "=") and part[2:].isdigit():
            return int(part[2:])
    return None


def _wireSizeFromName(filename: str) -> Optional[int]:
    return _sizeFromName(filename, "W")


@dataclass
class _Listing:
    """
    A mailbox's listing as last made: its infos and their UIDs in order,
    the unseen count and total size, and what it was made from.
    """

    version: Tuple[int, ...]
    infos: List[MessageInfo]
    uids: List[int]
    uidNext: int
    keywords: int
    uidValidity: int
    unseen: int
    size: int


@implementer(IMailbox, IMailboxImport, IMessageReader)
class MaildirMailbox:
    """
    One Maildir (INBOX or a Maildir++ folder).  The store keeps one object
    per directory, so that listeners hear every change made in the
    process; changes by other processes are found by re-listing the
    directories.
    """

    def __init__(self, name: str, path: str, pool: Optional[Callable[[], Optional[ThreadPool]]] = None) -> None:
        """
        @param pool: gives the running thread pool appends are written and
            committed in; without one, an append is written and committed
            on the calling thread, alone.
        """
        self.name = name
        self.path = path
        self._pool = pool
        self._mutex = threading.RLock()
        self._pending: List[_Pending] = []
        self._committing = False
        self._writing = 0
        self._idle: List[defer.Deferred] = []
        self._inFlight: Set[defer.Deferred] = set()
        self._rechecking = False
        self._listeners = ListenerSet()
        self._entries: Dict[int, _Entry] = {}
        self._byBase: Dict[str, int] = {}
        self._keywords: List[str] = []
        self._keywordsVersion = 0
        self._keywordsStamp: Optional[Tuple[int, int, int]] = None
        # The flags of each distinct info letters, at a keywords version
        # (see _flagsOf).
        self._flagSets: Dict[str, FrozenSet[str]] = {}
        self._flagSetsVersion = -1
        # Internal dates (file mtimes) read since the entries were, by
        # UID (at this UIDVALIDITY): they go into the entries and the
        # uidlist when it is written whole.
        self._dates: Dict[int, float] = {}
        # The MessageInfo last handed out per UID, with the entry and the
        # keyword table it was made from: a listing reuses it while both
        # are unchanged, so sessions that keep a listing (every selected
        # IMAP session) share one object per message rather than each
        # holding its own (about 380 octets per message per session).
        self._infos: Dict[int, Tuple[_Entry, int, MessageInfo]] = {}
        # The last listing, with the _version it was made at (see _current).
        self._changes = 0
        self._listingCache: Optional[_Listing] = None
        # The UIDs whose entries changed since that listing was made (None:
        # too many to tell); appended UIDs are those from its UIDNEXT on.
        self._touched: Optional[Set[int]] = None
        self._uidlistStamp: Optional[Tuple[int, int, int]] = None
        # The mtimes of new/ and cur/ that the entries match, and when the
        # directories must be listed again even though those mtimes did not
        # change (None: not before they change; see _scan and _adopt).
        self._dirStamp: Optional[Tuple[int, int]] = None
        self._recheckAt: Optional[float] = None
        # The directories' stamp when the change under the lock began (see
        # _locked and _logChanges).
        self._changeFrom: Optional[Tuple[int, int]] = None
        # The files the directories hold, as far as the store knows: the
        # last listing, with its own changes and other processes' records
        # applied (base name -> subdir, file name).
        self._listing: Dict[str, Tuple[str, str]] = {}
        # What _listing held before the last listing replaced it.
        self._listedBefore: Dict[str, Tuple[str, str]] = {}
        self._deleted = False
        self._loaded = False
        # The uidlist must be written whole (_dirty), or these records
        # appended to it (_unlogged: what a listing found, see _reconcile),
        # under the lock, before the state is used for a change.
        self._dirty = False
        self._unlogged: List[str] = []
        self._logLines = 0
        self.uidValidity = 0
        self._uidNext = 1
        self._highestModseq = 1
        self._firstRecent = 1
        self._refreshSync()

    # -- state on disk

    def _join(self, *parts: str) -> str:
        # Not os.path.join: the parts are names of ours, never absolute,
        # and this costs a third of it.
        return "/".join((self.path,) + parts)

    def _stamp(self, path: str) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _lock(self) -> int:
        fd = os.open(self._join(UIDLIST_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _unlock(self, fd: int) -> None:
        os.close(fd)

    def _loadKeywords(self) -> None:
        path = self._join(KEYWORDS)
        stamp = self._stamp(path)
        if stamp == self._keywordsStamp:
            return
        keywords: List[str] = []
        for line in (_readText(path) or "").splitlines():
            index, _, keyword = line.partition(" ")
            if index.isdigit() and keyword and int(index) < _MAX_KEYWORDS:
                while len(keywords) <= int(index):
                    keywords.append("")
                keywords[int(index)] = keyword
        self._keywords = keywords
        self._keywordsVersion += 1
        self._keywordsStamp = stamp

    def _keywordLetter(self, keyword: str) -> str:
        """
        The letter of C{keyword}, adding it to C{dovecot-keywords} when new.
        Called with the uidlist lock held.
        """
        if not keyword or any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in keyword):
            raise StoreError(f"Keyword {keyword!r} cannot be stored: it is empty or holds spaces or control characters")
        lowered = keyword.lower()
        for index, known in enumerate(self._keywords):
            if known.lower() == lowered:
                return chr(ord("a") + index)
        if "" in self._keywords:
            index = self._keywords.index("")
            self._keywords[index] = keyword
        elif len(self._keywords) < _MAX_KEYWORDS:
            index = len(self._keywords)
            self._keywords.append(keyword)
        else:
            raise StoreError(f"Mailbox {self.name} has {_MAX_KEYWORDS} keywords already; cannot add {keyword!r}")
        self._keywordsVersion += 1
        data = "".join(f"{i} {k}\n" for i, k in enumerate(self._keywords) if k)
        _writeAtomically(self._join(KEYWORDS), data.encode("utf-8"))
        self._keywordsStamp = self._stamp(self._join(KEYWORDS))
        return chr(ord("a") + index)

    def _flagsOf(self, filename: str) -> FrozenSet[str]:
        """
        The flags the info letters of C{filename} stand for: one shared
        set per distinct letters (a mailbox has few), made again when the
        keyword table changes.
        """
        at = filename.find(":2,")
        letters = filename[at + 3:] if at >= 0 else ""
        if self._flagSetsVersion != self._keywordsVersion or len(self._flagSets) > 4096:
            self._flagSets = {}
            self._flagSetsVersion = self._keywordsVersion
        flags = self._flagSets.get(letters)
        if flags is None:
            flags = self._flagSets[letters] = self._lettersToFlags(letters)
        return flags

    def _lettersToFlags(self, letters: str) -> FrozenSet[str]:
        flags = set()
        for letter in letters:
            if letter in _LETTER_FLAGS:
                flags.add(_LETTER_FLAGS[letter])
            elif "a" <= letter <= "z":
                index = ord(letter) - ord("a")
                if index < len(self._keywords) and self._keywords[index]:
                    flags.add(self._keywords[index])
        return frozenset(flags)

    def _lettersFor(self, flags: FrozenSet[str], keep: str = "") -> str:
        """
        The info letters for C{flags}, keeping the letters of C{keep} this
        store does not interpret (such as C{P}, or unknown keywords).
        """
        letters = set()
        for flag in flags:
            if flag in _FLAG_LETTERS:
                letters.add(_FLAG_LETTERS[flag])
            else:
                letters.add(self._keywordLetter(flag))
        for letter in keep:
            if letter in _LETTER_FLAGS:
                continue
            if "a" <= letter <= "z":
                index = ord(letter) - ord("a")
                if index < len(self._keywords) and self._keywords[index]:
                    continue
            letters.add(letter)
        return "".join(sorted(letters))

    def _readUidlist(self) -> None:
        """
        Load C{mailplat-uidlist}, or start one (new UIDVALIDITY) when there
        is none.
        """
        path = self._join(UIDLIST)
        text = _readText(path)
        entries: Dict[int, _Entry] = {}
        torn = False
        lines = text.split("\n", 1)[:1] if text else []
        header = dict((f[0], f[1:]) for f in lines[0].split()[1:] if f[1:].isdigit()) if lines else {}
        if text is not None and ("V" not in header or "N" not in header):
            # Start again, as Dovecot does with a broken uidlist: a new
            # UIDVALIDITY tells clients to forget what they cached.
            log.warn("{path} is damaged (header {header!r}); giving the messages new UIDs", path=path, header=lines[:1])
            text = None
        if text is None or int(header["V"]) != self.uidValidity:
            # The UIDs name other messages now.
            self._dates = {}
        if text is None:
            self.uidValidity = newUIDValidity()
            self._uidNext = self._firstRecent = self._highestModseq = 1
        else:
            self.uidValidity = int(header["V"])
            self._uidNext = int(header["N"])
            self._highestModseq = int(header.get("M", "1"))
            self._firstRecent = int(header.get("R", "1"))
            body = text.split("\n")[1:]
            # A last line without its newline was torn by a crash: drop it
            # and have the file written whole again.
            torn = body.pop() != "" if body else True
            uidNext, modseq = self._uidNext, self._highestModseq
            for line in body:
                if line[:1].isdigit():
                    # A message's line (most of them), read here without
                    # a call per line.
                    entry = _parseEntry(line)
                    if entry is not None:
                        entries[entry[0]] = entry
                        if entry[0] >= uidNext:
                            uidNext = entry[0] + 1
                        if entry[1] > modseq:
                            modseq = entry[1]
                        continue
                self._uidNext, self._highestModseq = max(self._uidNext, uidNext), max(self._highestModseq, modseq)
                self._readRecord(line, entries)
                uidNext, modseq = self._uidNext, self._highestModseq
            self._uidNext, self._highestModseq = max(self._uidNext, uidNext), max(self._highestModseq, modseq)
            self._logLines = len(body)
        self._entries = entries
        self._touchAll()
        # The files the entries name: a listing that finds just these
        # needs no pass over the entries (see _scan).
        byBase: Dict[str, int] = {}
        listing: Dict[str, Tuple[str, str]] = {}
        for uid, e in entries.items():
            base = e[5].partition(":")[0]
            byBase[base] = uid
            listing[base] = (e[4], e[5])
        self._byBase, self._listing = byBase, listing
        self._uidlistStamp = self._stamp(path)
        self._loaded = True
        self._dirty = text is None or torn
        self._unlogged = []

    def _readTail(self, stamp: Tuple[int, int, int]) -> bool:
        """
        Apply only the records another process appended to the uidlist
        since it was last read (same file, grown, whole lines); return
        whether that was possible, else the whole file must be read.
        """
        last = self._uidlistStamp
        if not self._loaded or last is None or stamp[0] != last[0] or stamp[2] <= last[2]:
            return False
        try:
            with open(self._join(UIDLIST), "rb") as f:
                st = os.fstat(f.fileno())
                f.seek(last[2])
                data = f.read()
                size = f.tell()
        except FileNotFoundError:
            return False
        if not data.endswith(b"\n"):
            return False
        lines = data.decode("utf-8", "replace").split("\n")[:-1]
        for line in lines:
            key = line.split(" ", 1)[0]
            if key[:1] == "D":
                # The directories' stamps around the change just read: when
                # ours matched the first, the entries now match the second.
                stamps = line[1:].split(" ")
                if len(stamps) == 4 and all(x.isdigit() for x in stamps):
                    if (int(stamps[0]), int(stamps[1])) == self._dirStamp:
                        self._adopt((int(stamps[2]), int(stamps[3])))
                continue
            if key[:1] == "X" and key[1:].isdigit():
                gone = self._entries.get(int(key[1:]))
                if gone is not None:
                    self._byBase.pop(gone.base, None)
                    self._listing.pop(gone.base, None)
            if key.isdigit():
                self._touch(int(key))
            elif key[:1] == "X" and key[1:].isdigit():
                self._touch(int(key[1:]))
            before = self._entries.get(int(key)) if key.isdigit() else None
            self._readRecord(line, self._entries)
            after = self._entries.get(int(key)) if key.isdigit() else None
            if before is not None and (after is None or after.base != before.base):
                self._byBase.pop(before.base, None)
                self._listing.pop(before.base, None)
            if after is not None:
                self._byBase[after.base] = after.uid
                self._listing[after.base] = (after.subdir, after.filename)
        self._logLines += len(lines)
        # The stamp of what was read: a record appended meanwhile shows as
        # a larger size (or, at the same size, as another mtime) next time.
        self._uidlistStamp = (stamp[0], st.st_mtime_ns if size == st.st_size else 0, size)
        return True

    def _readRecord(self, line: str, entries: Dict[int, _Entry]) -> None:
        """
        Apply one line of the uidlist after its header: a message's entry
        (the last line for a UID wins), C{X<uid>} (expunged), C{R<uid>}
        (first recent UID) or C{M<modseq>} (highest modseq); C{D} records
        (directory stamps) only matter to L{_readTail}.  A line that
        cannot be read is dropped: its file, if any, gets a new UID when the
        directories are listed.
        """
        if line[:1] == "D":
            return
        if line[:1] in ("X", "R", "M"):
            if line[1:].isdigit():
                value = int(line[1:])
                if line[0] == "X":
                    entries.pop(value, None)
                elif line[0] == "R":
                    self._firstRecent = value
                else:
                    self._highestModseq = max(self._highestModseq, value)
            return
        entry = _parseEntry(line)
        if entry is None:
            return
        entries[entry.uid] = entry
        self._uidNext = max(self._uidNext, entry.uid + 1)
        self._highestModseq = max(self._highestModseq, entry.modseq)

    def _writeUidlist(self) -> None:
        """
        Write the whole uidlist again, atomically.
        """
        lines = [f"1 V{self.uidValidity} N{self._uidNext} M{self._highestModseq} R{self._firstRecent}\n"]
        entries, dates = self._entries, self._dates
        if dates:
            # The dates read since go into the entries (and the list).
            infos = self._infos
            for uid, date in dates.items():
                entry = entries.get(uid)
                if entry is not None and entry[2] is None:
                    entries[uid] = dated = _newEntry(_Entry, (uid, entry[1], date, entry[3], entry[4], entry[5]))
                    cached = infos.get(uid)
                    if cached is not None and cached[0] is entry:
                        # The info handed out stays right (same date).
                        infos[uid] = (dated, cached[1], cached[2])
            self._dates = {}
        # _entryLine, inlined.
        lines.extend(f"{uid} {e[1]} {'-' if e[2] is None else repr(e[2])} {e[3]} {e[4]}/{e[5]}\n"
                     for uid, e in sorted(entries.items()))
        _writeAtomically(self._join(UIDLIST), "".join(lines).encode("utf-8"))
        self._uidlistStamp = self._stamp(self._join(UIDLIST))
        self._logLines = len(self._entries)
        self._dirty = False
        self._unlogged = []

    def _logChanges(self, lines: List[str], durable: bool = True) -> None:
        """
        Record changes durably by appending C{lines} to the uidlist (one
        fdatasync, no copy of the whole list; without C{durable}, none),
        or write the list again once the appended lines outnumber the
        messages.

        Called under the lock after the directory changes that C{lines}
        describe: when the directories changed, their stamps before and
        after go into a C{D<new> <cur> <new> <cur>} record, so another
        process whose entries matched the first stamp takes the second
        without listing them (L{_readTail}); this process does the same
        when its entries matched the stamp before the change.
        """
        before, after = self._changeFrom, self._dirStamps()
        if before is not None and after is not None and after != before:
            lines = lines + [f"D{before[0]} {before[1]} {after[0]} {after[1]}\n"]
            if before == self._dirStamp:
                self._adopt(after)
            self._changeFrom = after
        if self._dirty or self._logLines + len(lines) > 2 * len(self._entries) + 1000:
            self._writeUidlist()
            return
        # os.open and os.write: none of the fstat, ioctl and lseeks a
        # buffered open() in append mode adds.
        fd = os.open(self._join(UIDLIST), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            data = memoryview("".join(lines).encode("utf-8"))
            while data:
                data = data[os.write(fd, data):]
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        self._uidlistStamp = self._stamp(self._join(UIDLIST))
        self._logLines += len(lines)

    def _scan(self, force: bool = False, recheck: bool = True) -> bool:
        """
        List C{new/} and C{cur/} when they may have changed (or always,
        with C{force}); return whether the entries must be reconciled with
        the listing: when the files listed are not those the store expects
        (L{_listing}: those the uidlist named when it was read whole, kept
        up to date by the store's own changes and the records of other
        processes), so that a listing that finds nothing new costs no pass
        over the entries, and one that finds a few costs a pass over those
        (L{_changedBases}).  Without C{recheck}, a recheck alone (the
        mtimes the same) does not list them: the caller has it made
        elsewhere.

        They may have changed when their mtimes differ from the stamp the
        entries match, or, with the same mtimes, once the recheck time has
        come: a listing made within L{_MTIME_SLACK} of a directory's mtime
        could miss a change made later in the same clock tick, so it is
        followed by one more listing once the slack has passed (as
        Dovecot's C{MAILDIR_SYNC_SECS}).  Changes in another tick are seen
        at once; one in the same tick within the slack.
        """
        stamp = self._dirStamps()
        if stamp is None:
            self._deleted = True
            raise NoSuchMailbox(f"Mailbox {self.name} does not exist any more")
        now = time.time()
        if not force and stamp == self._dirStamp and (not recheck or self._recheckAt is None
                                                       or now <= self._recheckAt):
            return False
        listing: Dict[str, Tuple[str, str]] = {}
        for sub in ("new", "cur"):
            with os.scandir(self._join(sub)) as entries:
                for entry in entries:
                    # A message is a regular file of ours: a symbolic link
                    # could name any file the server can read.
                    name = entry.name
                    if name[:1] != "." and entry.is_file(follow_symlinks=False):
                        listing[name.partition(":")[0]] = (sub, name)
        expected, self._listing = self._listing, listing
        self._listedBefore = expected
        self._dirStamp = stamp
        settled = max(stamp) / 1e9 + _MTIME_SLACK
        self._recheckAt = settled if now <= settled else None
        return listing != expected

    def _changedBases(self) -> Set[str]:
        """
        The base names of the files the last listing (L{_scan}) found
        otherwise than the store expected: appeared, gone or renamed.
        """
        before, now = self._listedBefore, self._listing
        changed = before.keys() ^ now.keys()
        changed.update(base for base, found in now.items() if before.get(base, found) != found)
        return changed

    def _reconcile(self, bases: Optional[Set[str]] = None) -> None:
        """
        Bring the entries in line with the files listed; mark the uidlist
        dirty when anything changed.

        @param bases: the files that may differ from the entries (the
            rest are as the store expects them: see L{_listing}); L{None},
            any of them.  With C{bases}, the changes are kept as records
            to append to the uidlist (L{_unlogged}), else it is to be
            written whole.
        """
        lines: List[str] = []
        uidNext = self._uidNext
        try:
            self._reconcileInto(bases, lines)
        finally:
            if lines or self._uidNext != uidNext:
                if bases is None:
                    self._dirty = True
                else:
                    self._unlogged.extend(lines)
                    self._unlogged.append(f"M{self._highestModseq}\n")

    def _reconcileInto(self, bases: Optional[Set[str]], lines: List[str]) -> None:
        """
        L{_reconcile}, adding to C{lines} a record of each change (but, with
        C{bases} L{None}, none for the files new to it, which raise UIDNEXT:
        the list is then written whole, which formats their lines anyway; a
        first listing of a big maildir would make each twice).
        """
        if bases is None:
            items = list(self._entries.items())
        else:
            byBase, entries = self._byBase, self._entries
            items = [(byBase[b], entries[byBase[b]]) for b in bases if byBase.get(b) in entries]
        for uid, entry in items:
            found = self._listing.get(entry.base)
            if found is None:
                del self._entries[uid]
                self._byBase.pop(entry.base, None)
                self._highestModseq += 1
                lines.append(f"X{uid}\n")
                self._touch(uid)
            elif found != (entry.subdir, entry.filename):
                modseq = entry.modseq
                if self._flagsOf(found[1]) != self._flagsOf(entry.filename):
                    self._highestModseq += 1
                    modseq = self._highestModseq
                self._entries[uid] = entry._replace(subdir=found[0], filename=found[1], modseq=modseq)
                lines.append(_entryLine(self._entries[uid]))
                self._touch(uid)
        new = (self._listing.keys() if bases is None else bases) - self._byBase.keys()
        if not new:
            return
        record = bases is not None
        # New files, in the order of their names: the next UIDs.  Their
        # internal dates (the files' mtimes) are read when asked for.
        listing, entries, byBase = self._listing, self._entries, self._byBase
        uid, modseq = self._uidNext, self._highestModseq
        added: List[int] = []
        try:
            for base in sorted(new):
                found = listing.get(base)
                if found is None:
                    continue
                subdir, filename = found
                size = _sizeFromName(filename, "W")
                if size is None:
                    try:
                        size = _wireSize(f"{self.path}/{subdir}/{filename}")
                    except FileNotFoundError:
                        continue
                modseq += 1
                entries[uid] = _newEntry(_Entry, (uid, modseq, None, size, subdir, filename))
                byBase[base] = uid
                added.append(uid)
                if record:
                    lines.append(f"{uid} {modseq} - {size} {subdir}/{filename}\n")
                uid += 1
        finally:
            # (Also when a file could not be read: the entries made so far
            # keep their UIDs.)
            self._uidNext, self._highestModseq = uid, modseq
        if added:
            if len(added) > 64 + len(entries) // 8:
                # More than a patch of the last listing would take.
                self._touchAll()
            else:
                for uid in added:
                    self._touch(uid)

    def _catchUp(self, scan: bool, recheck: bool = True) -> None:
        """
        Read what other processes and programs changed: the keywords, the
        uidlist when its file changed (the directories are then listed
        again), and the directories when C{scan} and they may have changed
        (without C{recheck}, not for a due recheck alone: see L{_scan}).
        """
        self._loadKeywords()
        stamp = self._stamp(self._join(UIDLIST))
        reread = not self._loaded or stamp != self._uidlistStamp
        # With changes of its own not yet written (UIDs given to new files
        # before the lock was taken), the store reads the uidlist whole:
        # another process may have given those files UIDs meanwhile, and
        # the files are then reconciled again, under the lock.
        if reread and stamp is not None and not (self._dirty or self._unlogged) and self._readTail(stamp):
            # Another process appended records: they name the files, so
            # the directories need not be listed for them.
            reread = False
        elif reread:
            with bulkObjects():
                self._readUidlist()
        if scan or reread:
            with bulkObjects():
                if self._scan(force=reread, recheck=recheck):
                    self._reconcile(self._changedBases())

    def _refreshSync(self, recheck: bool = True) -> bool:
        """
        See changes made on disk by other processes and programs, writing
        the uidlist under its lock when new files got UIDs; return whether
        anything changed.  Without C{recheck}, a due recheck of the
        directories is left to L{_recheckLater}.
        """
        with self._mutex:
            if self._deleted:
                raise NoSuchMailbox(f"Mailbox {self.name} does not exist any more")
            before = (self._uidNext, self._highestModseq, len(self._entries), self._firstRecent)
            self._catchUp(scan=True, recheck=recheck)
            if self._dirty or self._unlogged:
                self._locked(lambda: None)
            return before != (self._uidNext, self._highestModseq, len(self._entries), self._firstRecent)

    def _locked(self, work: Callable[[], Any], scan: bool = True) -> Any:
        """
        Run C{work} with the uidlist lock held and the state caught up with
        the disk (the directories are listed only with C{scan}, or when
        another process rewrote the uidlist); the uidlist is written first
        if catching up changed it.  C{work} logs what it changed in the
        directories with L{_logChanges}, which then takes their new stamp
        as matching the entries (see L{_adopt}).
        """
        with self._mutex:
            if self._deleted:
                raise NoSuchMailbox(f"Mailbox {self.name} does not exist any more")
            fd = self._lock()
            try:
                self._catchUp(scan)
                if self._dirty:
                    self._writeUidlist()
                elif self._unlogged:
                    lines, self._unlogged = self._unlogged, []
                    self._logChanges(lines)
                self._changeFrom = self._dirStamps()
                try:
                    return work()
                finally:
                    self._changeFrom = None
            finally:
                self._unlock(fd)

    def _dirStamps(self) -> Optional[Tuple[int, int]]:
        try:
            return (os.stat(self._join("new")).st_mtime_ns, os.stat(self._join("cur")).st_mtime_ns)
        except FileNotFoundError:
            return None

    def _adopt(self, stamp: Tuple[int, int]) -> None:
        """
        Take C{stamp}, the directories' mtimes after a change made under the
        lock (by this process, or by another that logged it with a C{D}
        record), as matching the entries, which already hold that change:
        the directories need no listing for it.  A program that does not
        take the lock (mutt, Dovecot, an MDA) may have changed them during
        that change, unseen in the mtimes, so they are listed once the
        slack after it has passed, however many changes follow.
        """
        self._dirStamp = stamp
        due = max(stamp) / 1e9 + _MTIME_SLACK
        if self._recheckAt is None or due < self._recheckAt:
            self._recheckAt = due

    def _hasRecent(self) -> bool:
        """
        Whether any message is \\Recent (UID at least the first recent UID).
        """
        return self._uidNext > self._firstRecent and bool(self._entries) and max(self._entries) >= self._firstRecent

    def _refreshAndNotify(self) -> None:
        """
        Catch up with the disk before a read (on the reactor thread), and
        tell the listeners when anything changed; a due recheck listing is
        made in the pool, not here.
        """
        pool = self._pool() if self._pool is not None else None
        if self._refreshSync(recheck=pool is None):
            self._listeners.notify(self)
        if pool is not None:
            self._recheckLater()

    def _recheckLater(self) -> None:
        """
        When the directories are due for a recheck listing (see L{_scan}),
        make it in the pool: the read that found it due answers at once
        from the entries (a change the recheck can find is one that the
        mtimes did not show, which it finds a moment later than a listing
        here would, without holding up the reactor for a listing of every
        file).  The listeners hear of what it finds.
        """
        if self._rechecking or self._recheckAt is None or time.time() <= self._recheckAt:
            return
        self._rechecking = True

        def done(changed: Any) -> None:
            self._rechecking = False
            if isinstance(changed, Failure):
                if not changed.check(NoSuchMailbox):
                    log.failure("Rechecking mailbox {name} failed", changed, name=self.name)
            elif changed:
                self._listeners.notify(self)

        self._offload(f"read mailbox {self.name}", self._refreshSync).addBoth(done)

    def _info(self, entry: _Entry) -> MessageInfo:
        """
        The L{MessageInfo} of C{entry}: the one handed out before when
        neither the entry nor the keyword table changed since.  Called with
        C{_mutex} held.
        """
        cached = self._infos.get(entry.uid)
        if cached is not None and cached[1] == self._keywordsVersion and (cached[0] is entry or cached[0] == entry):
            return cached[2]
        date = entry.internalDate
        if date is None and self._dates:
            date = self._dates.get(entry.uid)
        info = MessageInfo(entry.uid, self._flagsOf(entry.filename), date, entry.size, entry.modseq,
                           None if date is not None else self._dateOf)
        self._infos[entry.uid] = (entry, self._keywordsVersion, info)
        return info

    #: Undated messages whose dates one read of an internal date reads too
    #: (those that follow it in UID order), for a FETCH of many.
    DATES_AHEAD = 256

    def _datesAhead(self, uid: int) -> bool:
        """
        Read the internal dates of C{uid} and of the undated messages that
        follow it (L{DATES_AHEAD} in all), with one pass under the mutex;
        return whether any was read.
        """
        with self._mutex:
            cache = self._listingCache
            if cache is None:
                return False
            uids, entries, dates = cache.uids, self._entries, self._dates
            at = bisect.bisect_left(uids, uid)
            wanted = []
            for other in uids[at:at + self.DATES_AHEAD]:
                entry = entries.get(other)
                if entry is not None and entry[2] is None and other not in dates:
                    wanted.append(entry)
        found = []
        for entry in wanted:
            try:
                found.append((entry, os.stat(f"{self.path}/{entry[4]}/{entry[5]}").st_mtime))
            except FileNotFoundError:
                pass
        with self._mutex:
            for entry, date in found:
                if entries.get(entry[0]) is entry:
                    dates[entry[0]] = date
        return bool(found)

    def _dateOf(self, info: MessageInfo) -> float:
        """
        The internal date of a message whose entry does not hold it yet
        (found by another program, or in a maildir mailplat had not seen):
        its file's mtime, as Dovecot answers, read at the first need and
        kept.  Called on any thread, from L{MessageInfo.internalDate}.

        A file renamed by another program since it was listed is looked
        for again once; one that is gone (expunged meanwhile) is dated by
        the time at the head of its name, when there is one.
        """
        name = ""
        known = self._dates.get(info.uid)
        if known is None and self._datesAhead(info.uid):
            known = self._dates.get(info.uid)
        if known is not None:
            return known
        for attempt in (1, 2):
            with self._mutex:
                entry = self._entries.get(info.uid)
                if entry is None:
                    # Expunged: its last entry may still be in _infos.
                    kept = self._infos.get(info.uid)
                    if not name and kept is not None:
                        name = kept[0].filename
                    break
                name = entry.filename
                if entry.internalDate is not None:
                    return entry.internalDate
                known = self._dates.get(entry.uid)
                if known is not None:
                    return known
            try:
                date = os.stat(f"{self.path}/{entry.subdir}/{entry.filename}").st_mtime
            except FileNotFoundError:
                if attempt == 1:
                    try:
                        self._refreshSync()
                    except NoSuchMailbox:
                        break
                continue
            with self._mutex:
                if self._entries.get(info.uid) is entry:
                    self._dates[info.uid] = date
            return date
        head = name.partition(".")[0]
        return float(head) if head.isdigit() else 0.0

    # -- IMailbox

    def _version(self) -> Tuple[int, ...]:
        """
        What a listing depends on: it changes whenever an entry or the
        keyword table does (every change of flags, every expunge, append
        or claim moves a counter or a modseq, and L{_changes} counts the
        rest).  Called with C{_mutex} held.
        """
        return (self._changes, len(self._entries), self._uidNext, self._highestModseq, self._keywordsVersion,
                self.uidValidity)

    def _touch(self, uid: int) -> None:
        """
        The entry of C{uid} changed, appeared or went (with C{_mutex} held).
        """
        self._changes += 1
        if self._touched is not None:
            self._touched.add(uid)
            if len(self._touched) > 64 + len(self._entries) // 8:
                # More than a patch would take: the next listing is whole.
                self._touched = None

    def _touchAll(self) -> None:
        """
        Any entry may have changed: the next listing is made whole.
        """
        self._changes += 1
        self._touched = None

    def _current(self) -> "_Listing":
        """
        The listing of the entries as they are: the last one when nothing
        changed since, else that one patched with the entries touched and
        appended since (a few), else a new one.  Called with C{_mutex}
        held.
        """
        version = self._version()
        cache = self._listingCache
        if cache is not None and cache.version == version:
            return cache
        entries, touched = self._entries, self._touched
        if (cache is not None and touched is not None and cache.keywords == self._keywordsVersion
                and cache.uidValidity == self.uidValidity
                and 0 <= self._uidNext - cache.uidNext <= 64 + len(entries) // 8
                and len(touched) <= 64 + len(entries) // 8):
            if self._patch(cache, sorted(touched.union(range(cache.uidNext, self._uidNext)))):
                cache.version, cache.uidNext = version, self._uidNext
                self._touched = set()
                return cache
        with bulkObjects():
            return self._whole(version, entries)

    def _whole(self, version: Tuple[int, ...], entries: Dict[int, _Entry]) -> "_Listing":
        """
        A new listing of C{entries} at C{version} (see L{_current}), with
        the work of L{_info} inlined: a first listing makes one info per
        message.
        """
        infoCache, keywords = self._infos, self._keywordsVersion
        infos: List[MessageInfo] = []
        unseen = size = 0
        self._flagsOf("")
        flagSets, lettersToFlags, dates, dateOf = self._flagSets, self._lettersToFlags, self._dates, self._dateOf
        for uid in sorted(entries):
            entry = entries[uid]
            cached = infoCache.get(uid)
            if cached is not None and cached[0] is entry and cached[1] == keywords:
                info = cached[2]
            else:
                filename = entry.filename
                at = filename.find(":2,")
                letters = filename[at + 3:] if at >= 0 else ""
                flags = flagSets.get(letters)
                if flags is None:
                    flags = flagSets[letters] = lettersToFlags(letters)
                date = entry.internalDate
                if date is None and dates:
                    date = dates.get(uid)
                info = MessageInfo(uid, flags, date, entry.size, entry.modseq, None if date is not None else dateOf)
                infoCache[uid] = (entry, keywords, info)
            infos.append(info)
            size += info.size
            if "\\Seen" not in info.flags:
                unseen += 1
        if len(self._infos) > len(entries) + 64:
            # Expunged messages' infos go once they are a few.
            self._infos = {uid: v for uid, v in self._infos.items() if uid in entries}
        cache = self._listingCache = _Listing(version, infos, [i.uid for i in infos], self._uidNext,
                                              keywords, self.uidValidity, unseen, size)
        self._touched = set()
        return cache

    def _patch(self, cache: "_Listing", uids: List[int]) -> bool:
        """
        Bring C{cache} in line with the entries of C{uids} (the others
        unchanged); return whether it then has as many messages as the
        mailbox (if not, something changed untold, and it is made anew).
        """
        entries, infos, listed = self._entries, cache.infos, cache.uids
        for uid in uids:
            i = bisect.bisect_left(listed, uid)
            entry = entries.get(uid)
            if i < len(listed) and listed[i] == uid:
                old = infos[i]
                cache.size -= old.size
                cache.unseen -= "\\Seen" not in old.flags
                if entry is None:
                    del infos[i], listed[i]
                    self._infos.pop(uid, None)
                    continue
                info = infos[i] = self._info(entry)
            elif entry is not None:
                info = self._info(entry)
                infos.insert(i, info)
                listed.insert(i, uid)
            else:
                continue
            cache.size += info.size
            cache.unseen += "\\Seen" not in info.flags
        return len(infos) == len(entries)

    def status(self) -> defer.Deferred:
        """
        Counts of the mailbox (see L{IMailbox.status}), from the listing
        kept up to date by L{_current}.
        """
        d = _run(f"read mailbox {self.name}", self._refreshAndNotify)

        def counts(_: None) -> MailboxStatus:
            with self._mutex:
                listing = self._current()
                return MailboxStatus(
                    messages=len(listing.uids),
                    recent=len(listing.uids) - bisect.bisect_left(listing.uids, self._firstRecent),
                    unseen=listing.unseen,
                    uidNext=self._uidNext,
                    uidValidity=self.uidValidity,
                    highestModseq=self._highestModseq,
                    size=listing.size,
                )

        return d.addCallback(counts)

    def listMessages(self) -> defer.Deferred:
        """
        Every message, in UID order (see L{IMailbox.listMessages}): a copy
        of the listing L{_current} keeps.
        """
        d = _run(f"read mailbox {self.name}", self._refreshAndNotify)

        def infos(_: None) -> List[MessageInfo]:
            with self._mutex:
                return list(self._current().infos)

        return d.addCallback(infos)

    def _nothingToClaim(self) -> bool:
        """
        Whether, caught up with the disk, no message is \\Recent (as at
        most SELECTs), so that no lock need be taken.  A message arriving
        just after is claimed by the next call, as if it came after this
        one.
        """
        pool = self._pool() if self._pool is not None else None
        with self._mutex:
            if self._deleted:
                raise NoSuchMailbox(f"Mailbox {self.name} does not exist any more")
            self._catchUp(scan=True, recheck=pool is None)
            nothing = not self._dirty and not self._unlogged and not self._hasRecent()
        if pool is not None:
            self._recheckLater()
        return nothing

    def _claimRecentSync(self) -> List[int]:
        def work() -> List[int]:
            claimed = sorted(uid for uid in self._entries if uid >= self._firstRecent)
            moved: List[str] = []
            for uid in claimed:
                entry = self._entries[uid]
                if entry.subdir != "new":
                    continue
                filename = entry.base + ":2," + _infoLetters(entry.filename)
                try:
                    os.rename(self._join("new", entry.filename), self._join("cur", filename))
                except FileNotFoundError:
                    continue
                self._entries[uid] = entry._replace(subdir="cur", filename=filename)
                self._touch(uid)
                self._listing[entry.base] = ("cur", filename)
                moved.append(_entryLine(self._entries[uid]))
            if claimed:
                # Not made durable here (no fsync): a claim lost in a crash
                # only shows the messages as \Recent once more, and the
                # next durable change of the mailbox carries it to disk.
                self._firstRecent = self._uidNext
                self._logChanges(moved + [f"R{self._firstRecent}\n"], durable=False)
            return claimed

        return self._locked(work)

    def claimRecent(self) -> defer.Deferred:
        """
        Claim the \\Recent messages (see L{IMailbox.claimRecent}): at once
        when there are none, else in the pool (renames and fsyncs).
        """
        what = f"claim new messages in {self.name}"
        d = _run(what, self._nothingToClaim)
        return d.addCallback(lambda nothing: [] if nothing else self._offload(what, self._claimRecentSync))

    def _openFile(self, uid: int) -> Tuple[int, _Entry]:
        """
        A descriptor open on message C{uid}'s file, and its entry; when the
        file was renamed by another program since the last scan, the
        directories are listed again and the open tried once more.
        """
        for attempt in (1, 2):
            with self._mutex:
                entry = self._entries.get(uid)
            if entry is None:
                break
            try:
                # O_NOFOLLOW: a message file swapped for a link since the
                # scan is not followed out of the account.  (Not _join: it
                # costs a microsecond, a fifth of a POP3 RETR's read.)
                return os.open(f"{self.path}/{entry.subdir}/{entry.filename}", os.O_RDONLY | os.O_NOFOLLOW), entry
            except FileNotFoundError:
                if attempt == 1:
                    self._refreshSync()
                    continue
                break
        raise NoSuchMessage(f"No message with UID {uid} in {self.name}")

    def _openSync(self, uid: int) -> BinaryIO:
        fd, _ = self._openFile(uid)
        return io.BufferedReader(_WireReader(os.fdopen(fd, "rb")), CHUNK)

    def openMessage(self, uid: int) -> defer.Deferred:
        """
        Open a message in its wire form (see L{IMailbox.openMessage}).
        """
        return _run(f"open message {uid} in {self.name}", self._openSync, uid)

    def readMessage(self, uid: int, limit: int) -> Optional[bytes]:
        """
        A small message's wire form, read whole on the calling thread (see
        L{IMessageReader}); L{None} when it is longer than C{limit}, or its
        file longer than its recorded size (L{openMessage} then streams it).
        """
        try:
            fd, entry = self._openFile(uid)
            try:
                if entry.size > limit:
                    return None
                # The file (LF ends) is at most its wire size: read to the
                # end, but never more than one octet past that.  When its
                # name gives its size on disk (S=) and that much came,
                # that is the end: no second read to find it.
                room = entry.size + 1
                disk = _sizeFromName(entry.filename, "S")
                parts = []
                while room > 0:
                    part = os.read(fd, room)
                    if not part:
                        break
                    parts.append(part)
                    room -= len(part)
                    if len(part) == disk and len(parts) == 1:
                        break
            finally:
                os.close(fd)
        except OSError as e:
            raise _storeError(e, f"read message {uid} in {self.name}")
        if room <= 0:
            return None
        return _wireForm(b"".join(parts))

    def _writeTmp(self, source: BinaryIO, internalDate: Optional[float], sync: bool = True) -> Tuple[str, str, int]:
        """
        Copy C{source} into C{tmp/} with LF line ends, durably (or, without
        C{sync}, leaving the durability to the batch's C{syncfs}).

        @return: the temporary path, the file's base name and its wire size.
        """
        now = time.time()
        seconds = int(now)
        unique = f"{seconds}.M{int((now - seconds) * 1e6)}P{os.getpid()}Q{next(_counter)}.{_hostname()}"
        tmp = self._join("tmp", unique)
        toDisk = _ToDisk()
        # The wire form (see _ToWire) has a CR before every LF that has
        # none on disk: counted, not made.
        disk = added = 0
        afterCR = False
        try:
            # os.open and os.write: one system call each, none of the
            # fstat, ioctl and lseek a buffered open() adds.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                while True:
                    chunk = source.read(CHUNK)
                    data = toDisk.feed(chunk) if chunk else toDisk.flush()
                    if data:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view):]
                        disk += len(data)
                        # (Mail from SMTP has no CR left on disk: the two-octet
                        # count, several times slower, only when one is there.)
                        lf = data.count(b"\n")
                        added += (lf - data.count(b"\r\n") if b"\r" in data else lf) - (afterCR and data[0] == 0x0A)
                        afterCR = data[-1] == 0x0D
                    if not chunk:
                        break
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            wire = disk + added
            if internalDate is not None:
                os.utime(tmp, (internalDate, internalDate))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return tmp, f"{unique},S={disk},W={wire}", wire

    def _appendSync(self, source: BinaryIO, flags: Iterable[str], internalDate: Optional[float],
                    forcedUID: Optional[int] = None, forcedModseq: Optional[int] = None) -> int:
        """
        Add one message alone: written, fsynced and committed on the calling
        thread.

        @param forcedUID: the UID to give it (an import), which must be at
            least UIDNEXT; the next free UID otherwise.
        @param forcedModseq: the modseq to give it (an import);
            HIGHESTMODSEQ is raised to it.  A new modseq otherwise.
        """
        if self._deleted:
            raise NoSuchMailbox(f"Mailbox {self.name} does not exist any more")
        wanted = applyFlags(frozenset(), flags, "set")
        if forcedModseq is not None:
            checkImportedModseq(self.name, forcedModseq)
        if forcedUID is not None:
            with self._mutex:
                checkImportedUID(self.name, forcedUID, self._uidNext)
        tmp, base, wire = self._writeTmp(source, internalDate)

        def work() -> int:
            if forcedUID is not None:
                checkImportedUID(self.name, forcedUID, self._uidNext)
                self._uidNext = forcedUID
            if wanted:
                subdir, filename = "cur", base + ":2," + self._lettersFor(wanted)
            else:
                subdir, filename = "new", base
            target = self._join(subdir, filename)
            os.rename(tmp, target)
            _fsyncDirectory(self._join(subdir))
            mtime = os.stat(target).st_mtime
            uid = self._uidNext
            self._uidNext += 1
            if forcedModseq is None:
                self._highestModseq += 1
                modseq = self._highestModseq
            else:
                modseq = forcedModseq
                self._highestModseq = max(self._highestModseq, modseq)
            self._entries[uid] = _Entry(uid, modseq, mtime, wire, subdir, filename)
            self._byBase[base] = uid
            self._listing[base] = (subdir, filename)
            lines = [_entryLine(self._entries[uid])]
            if modseq < self._highestModseq:
                # Read back, the entry alone would not say HIGHESTMODSEQ.
                lines.append(f"M{self._highestModseq}\n")
            self._logChanges(lines)
            return uid

        try:
            return self._locked(work, scan=False)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def append(self, source: BinaryIO, flags: Iterable[str] = (), internalDate: Optional[float] = None) -> defer.Deferred:
        """
        Add a message durably (see L{IMailbox.append}).  With a pool, the
        file is written in it and the message joins the next group commit;
        the Deferred fires once the batch's fsyncs are done.  C{source} is
        then read in the pool after this returns: the caller keeps it open,
        and leaves it alone, until the Deferred fires.
        """
        what = f"store a message in {self.name}"
        pool = self._pool() if self._pool is not None else None
        if pool is None:
            d = _run(what, self._appendSync, source, list(flags), internalDate)
            return d.addCallback(self._notified)
        from twisted.internet import reactor

        try:
            wanted = applyFlags(frozenset(), list(flags), "set")
        except Exception:
            return defer.fail()
        if self._deleted:
            return defer.fail(NoSuchMailbox(f"Mailbox {self.name} does not exist any more"))
        done: defer.Deferred = defer.Deferred()
        if _syncfs is not None and SYNCFS:
            # The batch writes the file in its pool thread, with no fsync of
            # its own (the batch's syncfs covers it): creating a file is the
            # costliest step of an append, and this keeps it off the
            # reactor thread without a trip through the pool of its own.
            self._pending.append(_Pending(wanted, done, source=source, internalDate=internalDate))
            self._commitNext()
            return done.addCallback(self._notified)
        self._writing += 1
        written = deferToThreadPool(reactor, pool, _guarded, what, self._writeTmp, source, internalDate)  # type: ignore[arg-type]

        def ready(result: Tuple[str, str, int]) -> None:
            tmp, base, wire = result
            self._pending.append(_Pending(wanted, done, tmp, base, wire))
            self._writing -= 1
            self._commitNext()

        def failed(failure: Failure) -> None:
            self._writing -= 1
            self._commitNext()
            done.errback(failure)

        written.addCallbacks(ready, failed)
        return done.addCallback(self._notified)

    def setUIDValidity(self, uidValidity: int) -> defer.Deferred:
        """
        Give the empty mailbox another UIDVALIDITY, written to the uidlist
        (see L{IMailboxImport.setUIDValidity}).
        """

        def work() -> None:
            checkImportedUIDValidity(self.name, uidValidity, len(self._entries))
            self.uidValidity = int(uidValidity)
            self._writeUidlist()

        d = self._settled()
        d.addCallback(lambda _: _run(f"set the UIDVALIDITY of {self.name}", self._locked, work))
        return d

    def importMessage(self, uid: int, source: BinaryIO, flags: Iterable[str] = (),
                      internalDate: Optional[float] = None, modseq: Optional[int] = None) -> defer.Deferred:
        """
        Add a message under a given UID, and modseq when given (see
        L{IMailboxImport.importMessage}): written and committed alone, on
        the calling thread, after the appends under way are committed.
        """
        flags = list(flags)
        d = self._settled()
        d.addCallback(lambda _: _run(f"import a message into {self.name}", self._appendSync, source, flags,
                                     internalDate, uid, modseq))
        return d.addCallback(self._notified)

    def raiseHighestModseq(self, modseq: int) -> defer.Deferred:
        """
        Raise HIGHESTMODSEQ to at least C{modseq}, recorded in the uidlist
        (see L{IMailboxImport.raiseHighestModseq}).
        """
        try:
            checkImportedModseq(self.name, modseq)
        except MailboxError as e:
            return defer.fail(e)

        def work() -> None:
            if modseq > self._highestModseq:
                self._highestModseq = int(modseq)
                self._logChanges([f"M{self._highestModseq}\n"])

        d = self._settled()
        d.addCallback(lambda _: _run(f"raise the HIGHESTMODSEQ of {self.name}", self._locked, work, False))
        return d

    def raiseUIDNext(self, uidNext: int) -> defer.Deferred:
        """
        Raise UIDNEXT to at least C{uidNext} (see L{IMailboxImport.raiseUIDNext}).
        """

        def work() -> None:
            if uidNext > self._uidNext:
                self._uidNext = int(uidNext)
                self._writeUidlist()

        d = self._settled()
        d.addCallback(lambda _: _run(f"raise the UIDNEXT of {self.name}", self._locked, work))
        return d

    def _commitNext(self) -> None:
        """
        Start committing the appends whose files are ready, unless a batch
        is committing already (it starts the next when it is done).
        """
        if self._committing:
            return
        if not self._pending:
            if not self._writing:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)
            return
        from twisted.internet import reactor

        pool = self._pool() if self._pool is not None else None
        batch, self._pending = self._pending, []
        self._committing = True
        if pool is None:
            d = _run(f"store messages in {self.name}", self._commitSync, batch)
        else:
            d = deferToThreadPool(reactor, pool, _guarded, f"store messages in {self.name}", self._commitSync, batch)  # type: ignore[arg-type]

        def finished(outcome: Any) -> None:
            self._committing = False
            for item, result in zip(batch, outcome if isinstance(outcome, list) else [outcome] * len(batch)):
                if isinstance(result, (Failure, BaseException)):
                    item.done.errback(result)
                else:
                    item.done.callback(result)
            self._commitNext()

        d.addBoth(finished)

    def _commitSync(self, batch: List[_Pending]) -> List[Any]:
        """
        Move a batch of messages into the mailbox under one lock: the files
        not written yet written into C{tmp/}, then one rename each, one
        fsync per directory, one uidlist append.

        @return: per message, its UID or the exception that kept it out;
            an error in the shared fsyncs fails them all.
        """
        results: List[Any] = [None] * len(batch)
        moved: List[Tuple[int, str, str]] = []
        renamed: Set[int] = set()
        try:
            for i, item in enumerate(batch):
                if item.source is None:
                    continue
                source, item.source = item.source, None
                try:
                    item.tmp, item.base, item.wire = self._writeTmp(source, item.internalDate, False)
                except OSError as e:
                    results[i] = _storeError(e, f"store a message in {self.name}")
                except Exception as e:
                    results[i] = e
            if _syncfs is not None and SYNCFS:
                # One flush for the data of every file of the batch, still
                # in tmp/, instead of one fsync per file; made before the
                # lock is taken, so a slow flush holds up no other call.
                _syncFilesystem(self.path)

            def work() -> None:
                dirs: Set[str] = set()
                lines: List[str] = []
                for i, item in enumerate(batch):
                    if results[i] is not None:
                        continue
                    try:
                        if item.base in self._byBase:
                            raise StoreError(f"Message file {item.base} is already in {self.name}")
                        if item.flags:
                            subdir, filename = "cur", item.base + ":2," + self._lettersFor(item.flags)
                        else:
                            subdir, filename = "new", item.base
                        target = self._join(subdir, filename)
                        os.rename(item.tmp, target)
                        renamed.add(i)
                        mtime = os.stat(target).st_mtime
                    except OSError as e:
                        results[i] = _storeError(e, f"store a message in {self.name}")
                        continue
                    except Exception as e:
                        results[i] = e
                        continue
                    dirs.add(subdir)
                    moved.append((self._uidNext, item.base, target))
                    uid = self._uidNext
                    self._uidNext += 1
                    self._highestModseq += 1
                    entry = _Entry(uid, self._highestModseq, mtime, item.wire, subdir, filename)
                    self._entries[uid] = entry
                    self._byBase[item.base] = uid
                    self._listing[item.base] = (subdir, filename)
                    lines.append(_entryLine(entry))
                    results[i] = uid
                for sub in sorted(dirs):
                    _fsyncDirectory(self._join(sub))
                if lines:
                    self._logChanges(lines)

            self._locked(work, scan=False)
        except Exception as e:
            # The shared part failed: none of the batch is acknowledged, so
            # none of it may stay in the mailbox (the sender will retry).
            with self._mutex:
                for uid, base, target in moved:
                    self._entries.pop(uid, None)
                    self._byBase.pop(base, None)
                    self._listing.pop(base, None)
                    try:
                        os.unlink(target)
                    except OSError:
                        pass
                if moved:
                    self._dirty = True
            error = _storeError(e, f"store messages in {self.name}") if isinstance(e, OSError) else e
            results = [error] * len(batch)
        finally:
            for i, item in enumerate(batch):
                if item.tmp and i not in renamed:
                    try:
                        os.unlink(item.tmp)
                    except OSError:
                        pass
        return results

    def _settled(self) -> defer.Deferred:
        """
        Fires when no append is writing, waiting or committing.
        """
        if not (self._committing or self._pending or self._writing):
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def _offload(self, what: str, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """
        Run C{f}, a change whose fsyncs would hold up the reactor (flags,
        expunge, claim), in the store's pool, or here without one; its
        Deferred fires on the reactor thread once it is durable.
        """
        pool = self._pool() if self._pool is not None else None
        if pool is None:
            return _run(what, f, *args)
        from twisted.internet import reactor

        d = deferToThreadPool(reactor, pool, _guarded, what, f, *args)  # type: ignore[arg-type]
        self._inFlight.add(d)

        def finished(result: Any) -> Any:
            self._inFlight.discard(d)
            return result

        return d.addBoth(finished)

    def _drained(self) -> defer.Deferred:
        """
        Fires when the changes L{_offload} started so far have finished,
        with the callbacks their callers added.
        """
        return defer.DeferredList(list(self._inFlight))

    def _notified(self, result: Any) -> Any:
        self._listeners.notify(self)
        return result

    def _setFlagsSync(self, uids: Iterable[int], flags: List[str], mode: str,
                      unchangedSince: Optional[int] = None) -> Tuple[List[MessageInfo], bool, List[int]]:
        """
        Change flags under the uidlist lock, caught up with the disk first,
        so the C{unchangedSince} test sees every other process's change
        and none can come between the test and the rename.

        @return: the new infos, whether any changed, and the UIDs that
            failed the C{unchangedSince} test.
        """
        modified: List[int] = []

        def change(entry: _Entry, dirs: Set[str]) -> Optional[_Entry]:
            if unchangedSince is not None and entry.modseq > unchangedSince:
                modified.append(entry.uid)
                return None
            return self._changeFlags(entry, flags, mode, dirs)

        def work() -> Tuple[List[MessageInfo], bool, List[int]]:
            result = []
            dirs: Set[str] = set()
            changed: List[str] = []
            try:
                for uid in sorted(set(uids)):
                    before = self._entries.get(uid)
                    entry = self._retrying(uid, lambda e: change(e, dirs))
                    if entry is not None:
                        result.append(self._info(entry))
                        if entry != before:
                            changed.append(_entryLine(entry))
            finally:
                for sub in sorted(dirs):
                    _fsyncDirectory(self._join(sub))
                if changed or self._dirty:
                    self._logChanges(changed)
            return result, bool(changed), modified

        return self._locked(work)

    def _retrying(self, uid: int, change: Callable[[_Entry], Any]) -> Any:
        """
        Apply C{change} to the message C{uid}; when its file was renamed by
        another program meanwhile, list the directories and try once more.

        @return: what C{change} returned, or L{None} when the message is gone.
        """
        for attempt in (1, 2):
            entry = self._entries.get(uid)
            if entry is None:
                return None
            try:
                return change(entry)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                self._scan(force=True)
                self._reconcile()
        return None

    def _changeFlags(self, entry: _Entry, flags: List[str], mode: str, dirs: Set[str]) -> _Entry:
        """
        Give one message new flags by renaming its file into C{cur/};
        C{dirs} collects the directories to fsync.
        """
        current = self._flagsOf(entry.filename)
        new = applyFlags(current, flags, mode)
        if new == current:
            return entry
        filename = entry.base + ":2," + self._lettersFor(new, _infoLetters(entry.filename))
        os.rename(self._join(entry.subdir, entry.filename), self._join("cur", filename))
        dirs.update([entry.subdir, "cur"])
        self._highestModseq += 1
        entry = entry._replace(subdir="cur", filename=filename, modseq=self._highestModseq)
        self._entries[entry.uid] = entry
        self._touch(entry.uid)
        self._listing[entry.base] = ("cur", filename)
        return entry

    def setFlags(self, uids: Iterable[int], flags: Iterable[str], mode: str,
                 unchangedSince: Optional[int] = None) -> defer.Deferred:
        """
        Change flags (see L{IMailbox.setFlags}); flags live in the file
        names.  The C{unchangedSince} test is made under the uidlist lock,
        which every mailplat process sharing the maildir takes.
        """
        if mode not in ("set", "add", "remove"):
            return defer.fail(ValueError(f"unknown flag mode {mode!r}"))
        try:
            checkUnchangedSince(unchangedSince)
        except ValueError as e:
            return defer.fail(e)
        d = self._offload(f"change flags in {self.name}", self._setFlagsSync, list(uids), list(flags), mode,
                          unchangedSince)

        def done(outcome: Tuple[List[MessageInfo], bool, List[int]]) -> Any:
            infos, changed, modified = outcome
            if changed:
                self._listeners.notify(self)
            if unchangedSince is not None:
                return ConditionalFlags(infos, sorted(modified))
            return infos

        return d.addCallback(done)

    def _expungeSync(self, uids: Optional[List[int]], requireDeleted: bool) -> List[int]:
        def work() -> List[int]:
            if uids is not None:
                candidates = sorted(set(uids) & set(self._entries))
            elif requireDeleted:
                # Only the \Deleted ones (a T in the file name's info) go
                # through the careful step below, not every message of the
                # mailbox: an EXPUNGE of one message in 100,000 is one
                # pass in a comprehension, not 100,000 calls.
                candidates = sorted(uid for uid, entry in self._entries.items()
                                    if "T" in entry.filename.partition(":2,")[2])
            else:
                candidates = sorted(self._entries)
            removed = []
            dirs: Set[str] = set()

            def remove(entry: _Entry) -> bool:
                if requireDeleted and "T" not in _infoLetters(entry.filename):
                    return False
                os.unlink(self._join(entry.subdir, entry.filename))
                dirs.add(entry.subdir)
                del self._entries[entry.uid]
                self._touch(entry.uid)
                self._byBase.pop(entry.base, None)
                self._listing.pop(entry.base, None)
                return True

            try:
                for uid in candidates:
                    # None: removed meanwhile by another program, gone too.
                    if self._retrying(uid, remove) in (True, None):
                        removed.append(uid)
            finally:
                for sub in sorted(dirs):
                    _fsyncDirectory(self._join(sub))
                if removed:
                    self._highestModseq += 1
                if removed or self._dirty:
                    self._logChanges([f"X{uid}\n" for uid in removed] + [f"M{self._highestModseq}\n"])
            return removed

        return self._locked(work)

    def expunge(self, uids: Optional[Iterable[int]] = None, requireDeleted: bool = True) -> defer.Deferred:
        """
        Remove messages durably (see L{IMailbox.expunge}).
        """
        d = self._offload(f"expunge messages in {self.name}", self._expungeSync, None if uids is None else list(uids),
                          requireDeleted)

        def done(removed: List[int]) -> List[int]:
            if removed:
                self._listeners.notify(self)
            return removed

        return d.addCallback(done)

    @defer.inlineCallbacks
    def copyTo(self, uids: Iterable[int], target: IMailbox):  # type: ignore[no-untyped-def]
        """
        Copy messages into C{target} (see L{IMailbox.copyTo}).
        """
        wanted = set(uids)
        infos = yield self.listMessages()
        pairs = []
        for info in infos:
            if info.uid not in wanted:
                continue
            try:
                f = yield self.openMessage(info.uid)
            except NoSuchMessage:
                continue
            try:
                newUID = yield target.append(f, info.flags, info.internalDate)
            finally:
                f.close()
            pairs.append((info.uid, newUID))
        return pairs

    def addListener(self, listener: IMailboxListener) -> None:
        """
        Tell C{listener} of every later change (see L{IMailbox.addListener}).
        """
        self._listeners.add(listener)

    def removeListener(self, listener: IMailboxListener) -> None:
        """
        Stop telling C{listener}.
        """
        self._listeners.remove(listener)

    def _lockExclusiveSync(self) -> Callable[[], None]:
        if self._deleted:
            raise NoSuchMailbox(f"Mailbox {self.name} does not exist any more")
        fd = os.open(self._join(POP3_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MailboxLocked(f"Mailbox {self.name} is locked by another session")
        except BaseException:
            os.close(fd)
            raise
        held = [fd]

        def release() -> None:
            if held:
                os.close(held.pop())

        return release

    def lockExclusive(self) -> defer.Deferred:
        """
        Take the POP3 maildrop lock with C{flock} (see L{IMailbox.lockExclusive}).
        """
        return _run(f"lock {self.name}", self._lockExclusiveSync)

    # -- for the account

    def _forget(self) -> None:
        """
        The mailbox was deleted: drop its state and tell the listeners.
        """
        with self._mutex:
            self._deleted = True
            self._entries.clear()
            self._touchAll()
            self._byBase.clear()
        self._listeners.notify(self)


# Accounts.

_SUBSCRIPTIONS_V2 = "V\t2\n\n"


def _accountPath(root: str, address: str) -> str:
    """
    The account directory (holding C{Maildir}) of C{address}, refusing any
    address that could name a path outside C{root}.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise NoSuchAccount(f"No account {address!r}: an account address is local@domain")
    for part in (local, domain):
        if "/" in part or "\x00" in part or part.startswith(".") or part in (".", ".."):
            raise NoSuchAccount(f"No account {address!r}: the address cannot name a mail directory")
    return os.path.join(root, domain, local)


class AccountFiles:
    """
    The subscriptions and special-use attributes of an account, kept as
    files in its home directory in Dovecot's formats; shared by the Maildir
    and mbox accounts, which give C{home} and C{_checkExists}.
    """

    home: str
    address: str

    def _checkExists(self) -> None:
        """
        Raise L{NoSuchAccount} when the account is gone (each store says how).
        """

    def _specialUses(self) -> Dict[str, str]:
        uses = {}
        for line in (_readText(os.path.join(self.home, SPECIAL_USE)) or "").splitlines():
            use, _, name = line.partition(" ")
            if name:
                uses[name] = use
        return uses

    def _writeSpecialUses(self, uses: Dict[str, str]) -> None:
        data = "".join(f"{use} {name}\n" for name, use in sorted(uses.items()))
        _writeAtomically(os.path.join(self.home, SPECIAL_USE), data.encode("utf-8"))

    def _subscriptions(self) -> Set[str]:
        text = _readText(os.path.join(self.home, SUBSCRIPTIONS)) or ""
        lines = text.split("\n")
        names = set()
        candidates = []
        if text.startswith(_SUBSCRIPTIONS_V2):
            # Dovecot's version 2: levels separated by tabs.  (Its escapes
            # only stand for control characters, which no valid name has.)
            for line in lines[2:]:
                if line:
                    candidates.append("/".join(line.split("\t")))
        else:
            # Version 1: one name per line, as the client gave it.
            for line in lines:
                line = line.rstrip("\r")
                if not line:
                    continue
                try:
                    candidates.append(mutf7.decode(line))
                except ValueError:
                    candidates.append(line)
        for candidate in candidates:
            try:
                names.add(validateMailboxName(candidate))
            except MailboxError:
                continue
        return names

    def _writeSubscriptions(self, names: Set[str]) -> None:
        lines = [name.replace("/", "\t") + "\n" for name in sorted(names)]
        data = _SUBSCRIPTIONS_V2 + "".join(lines)
        _writeAtomically(os.path.join(self.home, SUBSCRIPTIONS), data.encode("utf-8"))

    def _subscribeSync(self, name: str, add: bool) -> None:
        name = validateMailboxName(name)
        self._checkExists()
        names = self._subscriptions()
        if add:
            if name in names:
                return
            names.add(name)
        else:
            if name not in names:
                raise NoSuchMailbox(f"Not subscribed to {name}")
            names.discard(name)
        self._writeSubscriptions(names)

    def subscribe(self, name: str) -> defer.Deferred:
        """
        Subscribe to C{name} (see L{IAccount.subscribe}).
        """
        return _run(f"subscribe to {name}", self._subscribeSync, name, True)

    def unsubscribe(self, name: str) -> defer.Deferred:
        """
        Unsubscribe from C{name} (see L{IAccount.unsubscribe}).
        """
        return _run(f"unsubscribe from {name}", self._subscribeSync, name, False)

    def listSubscriptions(self) -> defer.Deferred:
        """
        The subscribed names, sorted.
        """
        return _run(f"read the subscriptions of {self.address}", lambda: sorted(self._subscriptions()))

    # -- access control lists (IAccountACL)

    _store: Any

    @property
    def store(self) -> Any:
        """
        The store holding the account (see L{IAccountACL.store}).
        """
        return self._store

    def _isMailbox(self, name: str) -> bool:
        """
        Whether C{name} (valid) is a selectable mailbox (each store says how).
        """
        raise NotImplementedError("AccountFiles._isMailbox")

    def _acls(self) -> Dict[str, Dict[str, str]]:
        """
        The ACLs of the account's mailboxes from C{mailplat-acl}: one
        C{<name><tab><identifier><tab><rights>} line per entry.  Lines that
        cannot be read are skipped.
        """
        acls: Dict[str, Dict[str, str]] = {}
        for line in (_readText(os.path.join(self.home, ACL_FILE)) or "").split("\n"):
            parts = line.split("\t")
            if len(parts) != 3:
                continue
            try:
                name = validateMailboxName(parts[0])
                identifier = checkACLIdentifier(name, parts[1], self.address)
                rights = canonicalACLRights(name, parts[2])
            except MailboxError:
                continue
            if rights:
                acls.setdefault(name, {})[identifier] = rights
        return acls

    def _changeACLs(self, change: Callable[[Dict[str, Dict[str, str]]], Dict[str, Dict[str, str]]]) -> None:
        """
        Rewrite C{mailplat-acl} with what C{change} makes of the current
        ACLs (atomically, fsynced), and the store's index of who shares
        with whom; under the store's ACL lock, so that processes sharing
        the tree do not lose each other's changes.
        """
        with _aclLock(self._store.root):
            acls = self._acls()
            changed = change({name: dict(acl) for name, acl in acls.items()})
            changed = {name: acl for name, acl in changed.items() if acl}
            if changed == acls:
                return
            lines = [
                f"{name}\t{identifier}\t{rights}\n"
                for name, acl in sorted(changed.items())
                for identifier, rights in sorted(acl.items())
            ]
            _writeAtomically(os.path.join(self.home, ACL_FILE), "".join(lines).encode("utf-8"))
            grantees = {identifier for acl in changed.values() for identifier in acl}
            _indexSharing(self._store.root, self.address, grantees)

    def _aclName(self, name: str) -> str:
        name = validateMailboxName(name)
        self._checkExists()
        if not self._isMailbox(name):
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        return name

    def _getACLSync(self, name: str) -> Dict[str, str]:
        name = self._aclName(name)
        return dict(self._acls().get(name, {}))

    def _setACLSync(self, name: str, identifier: str, rights: Optional[str]) -> None:
        name = self._aclName(name)
        checkACLIdentifier(name, identifier, self.address)
        rights = canonicalACLRights(name, rights)

        def change(acls: Dict[str, Dict[str, str]]) -> Dict[str, Dict[str, str]]:
            acl = acls.setdefault(name, {})
            if rights:
                acl[identifier] = rights
            else:
                acl.pop(identifier, None)
            return acls

        self._changeACLs(change)

    def _aclRenamed(self, old: str, new: str) -> None:
        """
        Mailbox C{old} and its children were renamed to C{new}: so are
        their ACLs.
        """
        if os.path.exists(os.path.join(self.home, ACL_FILE)):
            self._changeACLs(lambda acls: renamedACLs(acls, old, new))

    def _aclDropped(self, name: str) -> None:
        """
        Mailbox C{name} was deleted: so is its ACL (not its children's).
        """
        if os.path.exists(os.path.join(self.home, ACL_FILE)):
            self._changeACLs(lambda acls: {n: acl for n, acl in acls.items() if n != name})

    def getACL(self, name: str) -> defer.Deferred:
        """
        The ACL of mailbox C{name} (see L{IAccountACL.getACL}).
        """
        return _run(f"read the ACL of {name}", self._getACLSync, name)

    def setACL(self, name: str, identifier: str, rights: Optional[str]) -> defer.Deferred:
        """
        Change the ACL of mailbox C{name} (see L{IAccountACL.setACL}).
        """
        return _run(f"change the ACL of {name}", self._setACLSync, name, identifier, rights)


class _aclLock:
    """
    The C{flock} of C{<root>/mailplat-shared.lock}, held while a
    C{mailplat-acl} file and the index of sharing change.
    """

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, SHARED_LOCK)

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)


def _readSharing(root: str) -> List[Tuple[str, str]]:
    """
    The C{(identifier, owner)} lines of C{<root>/mailplat-shared}.
    """
    pairs = []
    for line in (_readText(os.path.join(root, SHARED_INDEX)) or "").split("\n"):
        parts = line.split("\t")
        if len(parts) == 2 and all(parts):
            pairs.append((parts[0], parts[1]))
    return pairs


def _indexSharing(root: str, owner: str, grantees: Set[str]) -> None:
    """
    Record in C{<root>/mailplat-shared} that C{owner} gives rights to
    exactly C{grantees} (under L{_aclLock}).
    """
    pairs = _readSharing(root)
    kept = [(identifier, o) for identifier, o in pairs if o != owner]
    kept.extend((identifier, owner) for identifier in sorted(grantees))
    if sorted(kept) != sorted(pairs):
        data = "".join(f"{identifier}\t{o}\n" for identifier, o in sorted(kept))
        _writeAtomically(os.path.join(root, SHARED_INDEX), data.encode("utf-8"))


class SharedIndex:
    """
    L{IStoreACL} for the Maildir and mbox stores.  C{<root>/mailplat-shared}
    lists, one C{<identifier><tab><owner>} line each, who gives rights to
    whom, so that C{sharedWith} reads only the ACL files of the owners that
    share with the user or with C{anyone}; those files, not the index,
    say what is shared.  The store gives C{root} and C{_getAccountSync}.
    """

    root: str

    def _getAccountSync(self, address: str, create: bool) -> Any:
        raise NotImplementedError("SharedIndex._getAccountSync")

    def _sharedWithSync(self, identifier: str) -> List[Tuple[str, str, str]]:
        owners = sorted({o for i, o in _readSharing(self.root) if i in (identifier, ANYONE)} - {identifier})
        out: List[Tuple[str, str, str]] = []
        for owner in owners:
            try:
                account = self._getAccountSync(owner, False)
            except NoSuchAccount:
                continue
            for entry in sharedEntries(owner, account._acls(), identifier):
                if account._isMailbox(entry[1]):
                    out.append(entry)
        return out

    def _forgetSharing(self, owner: str) -> None:
        """
        C{owner}'s account is gone: drop it from the index.
        """
        with _aclLock(self.root):
            _indexSharing(self.root, owner, set())

    def sharedWith(self, identifier: str) -> defer.Deferred:
        """
        What other accounts share with C{identifier} or C{anyone} (see
        L{IStoreACL.sharedWith}).
        """
        return _run(f"find the mailboxes shared with {identifier}", self._sharedWithSync, identifier)



@implementer(IAccount, IAccountACL)
class MaildirAccount(AccountFiles):
    """
    One account: a Maildir++ tree at C{<root>/<domain>/<localpart>/Maildir}.
    """

    def __init__(self, store: "MaildirStore", address: str, path: str) -> None:
        self.address = address
        self._store = store
        self.path = path
        # The account's home: the Maildir itself, where Dovecot keeps
        # subscriptions.
        self.home = path

    def _folderPath(self, name: str) -> str:
        if name == "INBOX":
            return self.path
        directory = folderDirectory(name)
        if len(directory.encode("ascii")) > 255:
            raise InvalidMailboxName(f"Mailbox name {name} is too long for a Maildir folder")
        return os.path.join(self.path, directory)

    # -- files of the account

    def _folders(self) -> Tuple[Dict[str, str], Set[str]]:
        """
        The folders on disk: selectable ones mapped to their directory
        names, and the names kept only as hierarchy (\\Noselect).
        """
        selectable: Dict[str, str] = {}
        noselect: Set[str] = set()
        for entry in os.scandir(self.path):
            if not entry.is_dir(follow_symlinks=False):
                continue
            name = folderName(entry.name)
            if name is None:
                continue
            if _isMaildir(entry.path):
                selectable[name] = entry.name
            else:
                noselect.add(name)
        return selectable, noselect

    # -- blocking work

    def _checkExists(self) -> None:
        if not _isMaildir(self.path):
            raise NoSuchAccount(f"No account {self.address}")

    def _isMailbox(self, name: str) -> bool:
        return _isMaildir(self._folderPath(name))

    def _listSync(self) -> List[Any]:
        self._checkExists()
        selectable, noselect = self._folders()
        uses = self._specialUses()
        mailboxes: Dict[str, Optional[str]] = {"INBOX": uses.get("INBOX")}
        for name in selectable:
            mailboxes[name] = uses.get(name)
        return buildListing(mailboxes, noselect)

    def _getSync(self, name: str) -> MaildirMailbox:
        name = validateMailboxName(name)
        self._checkExists()
        path = self._folderPath(name)
        # (INBOX is the account's own Maildir, just checked.)
        if path != self.path and not _isMaildir(path):
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        return self._store._mailboxAt(name, path)

    def _createOne(self, name: str) -> None:
        path = self._folderPath(name)
        _makeMaildir(path)
        marker = os.path.join(path, FOLDER_MARKER)
        if not os.path.exists(marker):
            open(marker, "wb").close()

    def _createSync(self, name: str, specialUse: Optional[str]) -> None:
        name = validateMailboxName(name)
        self._checkExists()
        if name == "INBOX" or _isMaildir(self._folderPath(name)):
            raise MailboxExists(f"Mailbox {name} exists already")
        _refuseLink(self._folderPath(name), name)
        for parent in parentNames(name):
            if parent != "INBOX":
                _refuseLink(self._folderPath(parent), parent)
        for parent in parentNames(name):
            if parent != "INBOX" and not os.path.isdir(self._folderPath(parent)):
                self._createOne(parent)
        self._createOne(name)
        self._store._mailboxAt(name, self._folderPath(name))
        if specialUse:
            uses = self._specialUses()
            uses[name] = specialUse
            self._writeSpecialUses(uses)

    def _hasChildren(self, name: str) -> bool:
        selectable, noselect = self._folders()
        prefix = name + "/"
        return any(n.startswith(prefix) for n in list(selectable) + list(noselect))

    def _deleteSync(self, name: str) -> None:
        name = validateMailboxName(name)
        self._checkExists()
        if name == "INBOX":
            raise MailboxError("INBOX cannot be deleted")
        path = self._folderPath(name)
        _refuseLink(path, name)
        if not os.path.isdir(path):
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        children = self._hasChildren(name)
        if not _isMaildir(path):
            if children:
                raise MailboxError(f"Mailbox {name} has children and holds no mail")
            shutil.rmtree(path)
        else:
            # Removing cur/ first makes the mailbox unselectable at once.
            shutil.rmtree(os.path.join(path, "cur"))
            if children:
                for entry in os.listdir(path):
                    full = os.path.join(path, entry)
                    if os.path.isdir(full) and not os.path.islink(full):
                        shutil.rmtree(full)
                    else:
                        os.unlink(full)
            else:
                shutil.rmtree(path)
        _fsyncDirectory(self.path)
        uses = self._specialUses()
        if uses.pop(name, None) is not None:
            self._writeSpecialUses(uses)
        self._aclDropped(name)
        self._store._dropMailbox(path)

    def _renameSync(self, old: str, new: str) -> None:
        old = validateMailboxName(old)
        new = validateMailboxName(new)
        self._checkExists()
        if not os.path.isdir(self._folderPath(old)):
            raise NoSuchMailbox(f"Mailbox {old} does not exist")
        if new == "INBOX" or os.path.isdir(self._folderPath(new)):
            raise MailboxExists(f"Mailbox {new} exists already")
        if new.startswith(old + "/"):
            raise MailboxError("A mailbox cannot be moved into itself")
        if old == "INBOX":
            self._renameInbox(new)
            return
        for parent in parentNames(new):
            if parent != "INBOX" and not os.path.isdir(self._folderPath(parent)):
                self._createOne(parent)
        selectable, noselect = self._folders()
        moves = []
        for name in sorted(set(selectable) | noselect):
            moved = renamedName(name, old, new)
            if moved is not None:
                moves.append((name, moved))
        for name, moved in moves:
            if os.path.exists(self._folderPath(moved)):
                raise MailboxExists(f"Mailbox {moved} exists already")
        for name, moved in moves:
            os.rename(self._folderPath(name), self._folderPath(moved))
            self._store._movedMailbox(self._folderPath(name), moved, self._folderPath(moved))
        _fsyncDirectory(self.path)
        uses = self._specialUses()
        renamed = {renamedName(n, old, new) or n: u for n, u in uses.items()}
        if renamed != uses:
            self._writeSpecialUses(renamed)
        self._aclRenamed(old, new)

    def _renameInbox(self, new: str) -> None:
        """
        Move INBOX's messages into a new mailbox C{new}, keeping their UIDs
        and flags; INBOX stays, empty, its UIDs still going up.
        """
        inbox = self._getSync("INBOX")
        self._createSync(new, None)
        target = self._getSync(new)

        def work() -> None:
            keywords = _readText(inbox._join(KEYWORDS))
            if keywords is not None:
                _writeAtomically(target._join(KEYWORDS), keywords.encode("utf-8"))
            entries = dict(inbox._entries)
            for entry in entries.values():
                os.rename(inbox._join(entry.subdir, entry.filename), target._join(entry.subdir, entry.filename))
            for sub in ("new", "cur"):
                _fsyncDirectory(target._join(sub))
                _fsyncDirectory(inbox._join(sub))
            fd = target._lock()
            try:
                target._entries = entries
                target._touchAll()
                target._byBase = {e.base: uid for uid, e in entries.items()}
                target._uidNext = inbox._uidNext
                target._highestModseq = inbox._highestModseq
                target._firstRecent = inbox._firstRecent
                target._keywordsStamp = None
                target._loadKeywords()
                target._writeUidlist()
                target._dirStamp = None
            finally:
                target._unlock(fd)
            inbox._entries = {}
            inbox._touchAll()
            inbox._byBase = {}
            inbox._listing = {}
            inbox._highestModseq += 1
            inbox._firstRecent = inbox._uidNext
            inbox._writeUidlist()
            inbox._dirStamp = None

        inbox._locked(work)
        inbox._listeners.notify(inbox)

    # -- IAccount

    def listMailboxes(self) -> defer.Deferred:
        """
        Every mailbox, sorted (see L{IAccount.listMailboxes}).
        """
        return _run(f"list the mailboxes of {self.address}", self._listSync)

    def getMailbox(self, name: str) -> defer.Deferred:
        """
        The mailbox named C{name} (see L{IAccount.getMailbox}).
        """
        return _run(f"open mailbox {name}", self._getSync, name)

    def createMailbox(self, name: str, specialUse: Optional[str] = None) -> defer.Deferred:
        """
        Make a mailbox and its missing superiors (see L{IAccount.createMailbox}).
        """
        return _run(f"create mailbox {name}", self._createSync, name, specialUse)

    def deleteMailbox(self, name: str) -> defer.Deferred:
        """
        Delete a mailbox (see L{IAccount.deleteMailbox}).
        """
        return _run(f"delete mailbox {name}", self._deleteSync, name)

    def renameMailbox(self, old: str, new: str) -> defer.Deferred:
        """
        Rename a mailbox with its children (see L{IAccount.renameMailbox}).
        """
        return _run(f"rename mailbox {old}", self._renameSync, old, new)



# The store.


class AccountTree:
    """
    The accounts of a store kept as C{<root>/<domain>/<local part>/}
    directories (the Maildir and mbox stores): listing them, and the
    one-domain look that L{IStore.hasDomain} asks for.  The store says
    what makes a directory an account's home with L{_isAccountHome}.
    """

    root: str
    #: Whether the directory C{home} holds an account (given by the store).
    _isAccountHome: Callable[[str], bool]

    def listAccounts(self) -> defer.Deferred:
        """
        Every account's address, sorted.
        """
        return _run(f"list the accounts in {self.root}", self._listAccountsSync)

    def hasDomain(self, domain: str) -> defer.Deferred:
        """
        Whether an account of C{domain} exists (see L{IStore.hasDomain}):
        one look at that domain's directory.
        """
        return _run(f"look up the domain {domain}", lambda: bool(self._domainAccountsSync(domain, first=True)))

    def _listAccountsSync(self) -> List[str]:
        addresses = []
        if not os.path.isdir(self.root):
            return []
        for domain in os.listdir(self.root):
            addresses.extend(self._domainAccountsSync(domain))
        return sorted(addresses)

    def _domainAccountsSync(self, domain: str, first: bool = False) -> List[str]:
        """
        The accounts of one domain directory (only the first found, with
        C{first}).
        """
        domainPath = os.path.join(self.root, domain)
        if domain.startswith(".") or "/" in domain or not os.path.isdir(domainPath):
            return []
        addresses = []
        for local in os.listdir(domainPath):
            if not local.startswith(".") and self._isAccountHome(os.path.join(domainPath, local)):
                addresses.append(f"{local}@{domain}")
                if first:
                    break
        return addresses


@implementer(IStore, IStoreACL)
class MaildirStore(SharedIndex, AccountTree):
    """
    Accounts kept as Maildir++ trees under one root directory.

    @ivar root: the absolute root directory.
    @ivar poolSize: how many message files are written and fsynced at once
        (0: appends run on the calling thread, one commit each).
    """

    def __init__(self, root: str, poolSize: int = POOL_SIZE) -> None:
        self.root = os.path.abspath(root)
        self.poolSize = poolSize
        self._mailboxes: Dict[str, MaildirMailbox] = {}
        self._threads = LazyThreadPool(poolSize, f"maildir:{self.root}")

    def _pool(self) -> Optional[ThreadPool]:
        """
        The store's thread pool, started at the first append (and stopped
        by L{close}, or when the reactor shuts down).
        """
        return self._threads.get()

    # -- the mailbox cache: one object per directory

    def _mailboxAt(self, name: str, path: str) -> MaildirMailbox:
        mailbox = self._mailboxes.get(path)
        if mailbox is None or mailbox._deleted:
            mailbox = self._mailboxes[path] = MaildirMailbox(name, path, self._pool)
        return mailbox

    def _dropMailbox(self, path: str) -> None:
        mailbox = self._mailboxes.pop(path, None)
        if mailbox is not None:
            mailbox._forget()

    def _movedMailbox(self, oldPath: str, name: str, newPath: str) -> None:
        mailbox = self._mailboxes.pop(oldPath, None)
        if mailbox is not None:
            mailbox.name = name
            mailbox.path = newPath
            self._mailboxes[newPath] = mailbox

    def _dropUnder(self, path: str) -> None:
        prefix = path + os.sep
        for key in [k for k in self._mailboxes if k == path or k.startswith(prefix)]:
            self._dropMailbox(key)

    # -- blocking work

    def _getAccountSync(self, address: str, create: bool) -> MaildirAccount:
        home = _accountPath(self.root, address)
        account = MaildirAccount(self, address, os.path.join(home, "Maildir"))
        if _isMaildir(account.path):
            return account
        if not create:
            raise NoSuchAccount(f"No account {address}")
        for sub in ("tmp", "new"):
            os.makedirs(os.path.join(account.path, sub), exist_ok=True)
        for name, use in DEFAULT_MAILBOXES:
            if not _isMaildir(account._folderPath(name)):
                account._createOne(name)
        account._writeSpecialUses(dict((name, use) for name, use in DEFAULT_MAILBOXES))
        account._writeSubscriptions({"INBOX"} | {name for name, _ in DEFAULT_MAILBOXES})
        _makeMaildir(account.path)
        _fsyncDirectory(os.path.dirname(home))
        return account

    def _isAccountHome(self, home: str) -> bool:
        return _isMaildir(os.path.join(home, "Maildir"))

    def _deleteAccountSync(self, address: str) -> None:
        home = _accountPath(self.root, address)
        if not _isMaildir(os.path.join(home, "Maildir")):
            raise NoSuchAccount(f"No account {address}")
        # Renaming first makes the deletion atomic for readers.
        doomed = os.path.join(os.path.dirname(home), f".deleted.{os.path.basename(home)}.{os.getpid()}.{next(_counter)}")
        os.rename(home, doomed)
        _fsyncDirectory(os.path.dirname(home))
        shutil.rmtree(doomed)
        self._dropUnder(home)
        self._forgetSharing(address)
        try:
            os.rmdir(os.path.dirname(home))
        except OSError:
            pass

    # -- IStore

    def getAccount(self, address: str, create: bool = False) -> defer.Deferred:
        """
        The account of C{address}, made with the default mailboxes when
        C{create} (see L{IStore.getAccount}).
        """
        return _run(f"open the account {address}", self._getAccountSync, address, create)

    def hasAccount(self, address: str) -> defer.Deferred:
        """
        Whether C{address} has an account here.
        """

        def check() -> bool:
            try:
                return _isMaildir(os.path.join(_accountPath(self.root, address), "Maildir"))
            except NoSuchAccount:
                return False

        return _run(f"look up the account {address}", check)

    def deleteAccount(self, address: str) -> defer.Deferred:
        """
        Remove an account and all its mail (see L{IStore.deleteAccount}).
        """
        return _run(f"delete the account {address}", self._deleteAccountSync, address)

    @defer.inlineCallbacks
    def close(self):
        """
        Wait for the appends under way to be committed, stop the thread
        pool and forget the cached mailboxes; the store keeps no file open
        between calls (a lock taken by L{MaildirMailbox.lockExclusive} is
        released by its own callable).
        """
        for mailbox in list(self._mailboxes.values()):
            yield mailbox._settled()
            yield mailbox._drained()
        self._mailboxes.clear()
        self._threads.stop()


@implementer(IStoreFactory, IPlugin)
class MaildirStoreFactory:
    """
    The C{maildir} store plugin: C{--store maildir[:ROOT]}.
    """

    storeName = "maildir"
    storeHelp = (
        "Keeps mail in Maildir++ directories, ROOT/<domain>/<localpart>/Maildir,"
        " that mutt and Dovecot can open too."
    )
    argStringFormat = "Optional root directory; <data-dir>/mail when not given."

    def makeStore(self, argstring: str, dataDir: str) -> MaildirStore:
        """
        Make the store rooted at C{argstring} or C{<dataDir>/mail}, making
        the directory if needed.

        @raise ConfigError: the root cannot be made or written.
        """
        root = argstring or os.path.join(dataDir, "mail")
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"store 'maildir': cannot use root directory {root!r}: {e.strerror or e}")
        if not os.path.isdir(root):
            raise ConfigError(f"store 'maildir': root {root!r} is not a directory")
        if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError(f"store 'maildir': root directory {root!r} is not readable and writable by this user")
        return MaildirStore(root)
