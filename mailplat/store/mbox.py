"""
A store that keeps each mailbox in one mbox file (mboxrd) that mutt,
procmail and Dovecot can read and write too.

Layout, under the store's root directory::

    <root>/<domain>/<localpart>/
        inbox                                  INBOX
        mail/Sent  mail/Work.d/Projects ...    folders: "Work/Projects"
        subscriptions                          Dovecot's version 2 format (as the
                                               maildir store writes it)
        mailplat-specialuse                    "<attribute> <name>" per line
        mailplat-acl                           ACLs, as the maildir store keeps them
    <root>/mailplat-shared                     who shares with whom (as the maildir store)
    and beside every mbox file C{F}:
        F.lock                                 the dotlock (mutt, procmail, Dovecot)
        F.mailplat-uidlist                     modseqs and \\Recent (below)
        F.mailplat-pop3.lock                   flock()ed by lockExclusive

Each level of a folder name is encoded in modified UTF-7 with C{.} encoded
too (C{&AC4-}), as the maildir store does, so a mailbox file's name never
holds a C{.}: the names with one (C{.lock}, C{.d}, C{.mailplat-*},
temporary files) can never be taken for a mailbox.  A mailbox may be
selectable and have children at once (the store contract wants it), which
one mbox file cannot be, so the children of C{a} live in the directory
C{a.d} beside the file C{a}; C{a.d} without C{a} is a C{\\Noselect} name.

Messages are stored in mboxrd form: a C{From } envelope line (sender
C{MAILER-DAEMON}, the internal date in UTC, whole seconds), the message
with LF line ends and every line matching C{>*From } quoted with one more
C{>}, then an empty line.  Unquoting gives back exactly what was stored.

What IMAP needs to know is kept where Dovecot, UW-IMAP and mutt look for
it, in headers this store puts at the top of each message's header
block::

    X-IMAPbase: <uidvalidity> <uidnext> <keywords...>   first message only
    X-UID: <uid>
    Status: RO             R = \\Seen, O = no longer \\Recent
    X-Status: AFTD         \\Answered \\Flagged \\Draft \\Deleted
    X-Keywords: k1 k2
    X-Mailplat: noeol      the message did not end with a line end

These header names (and C{Content-Length}, which mutt writes) are
reserved: wherever they occur in a message's header block they are
metadata and are not part of the message.  A message given to the store
that has such a header of its own keeps it: it is stored as
C{X-Mailplat-Orig-<name>} (and a header already named so gets one more
such prefix) and unquoted when read, so every message reads back exactly
as it was appended, as the mboxrd C{>From} quoting does for bodies.  The
headers were preferred to a side index for the UIDs and flags because
they travel with the message: mutt keeps them when it rewrites the file,
and flags set in mutt are seen here.  C{Status} and C{X-Status} are
written at a fixed width (spaces before the letters) and C{X-Keywords}
padded with L{KEYWORD_ROOM} spaces, as Dovecot pads it, so that a flag
change writes the changed messages' reserved headers again where they are,
with one fdatasync, when they still fit with every line end at the same
offset (a write cut short by a crash leaves whole header lines, old or
new).  Otherwise (headers another program wrote, keywords past the
padding, a new keyword in the first message's C{X-IMAPbase}) a flag change
rewrites the file, padding every message anew; an expunge always does.  A
message another program appended without C{X-UID} gets its UID by a
rewrite too, as Dovecot does.  Since a write in place leaves the file's
size as it was and may leave its times too (within one clock tick), the
other processes see it through the side file, which every flag change
appends to: a changed side file means reading the mbox again.

What other programs do not keep is in C{F.mailplat-uidlist}: a header line
C{1 V<uidvalidity> N<uidnext> M<highestmodseq> R<first recent uid>}, then
C{<uid> <modseq> <flags digest>} lines; changes are appended with one
fdatasync, and the file is written whole again (atomically) when the
appended lines outnumber the messages.  When a message's flags no longer
match the digest (mutt changed them) it gets a new modseq.  UIDVALIDITY is
read from C{X-IMAPbase} first; the side file keeps it (and UIDNEXT) for an
empty mailbox.

Locking, as mutt and procmail do it: a writer makes C{F.lock} with
C{O_EXCL} (a lock file older than L{DOTLOCK_STALE} seconds is broken) and
takes an exclusive C{lockf} on C{F}; a reader takes a shared C{lockf}.
Deleting or renaming a mailbox takes its locks as a writer does, so a
rewrite under way elsewhere cannot put the file back under its old name.
Locks are tried without blocking and tried again on the reactor's clock
until L{LOCK_TIMEOUT}.  Appends are written at the end of the file and
fsynced (cut back on failure); a rewrite writes a new file beside the old
one, fsyncs it, renames it over the old one and fsyncs the directory, so a
crash leaves the old mailbox or the new one, never half of one.  Before
answering, the store compares the file's inode, size, mtime and ctime with
what it last read, and reads the file again when another program changed
it.

A mailbox's operations run one at a time in this process (a queue that
fires each result before the next operation starts); the locks are taken
on the reactor thread (tried without blocking, again on the clock), and the
file work under them (reading, appending, rewriting, fsyncing) runs in the
store's own thread pool, so a rewrite of a big mailbox does not stall the
other sessions, nor hold a thread of the reactor's pool.  Listeners are
told, and the store's table of mailboxes and the account's special-use and
ACL files are changed, back on the reactor thread.  With a clock that runs no threads (a C{task.Clock} in
tests) the file work runs at once.
"""

import calendar
import errno
import fcntl
import hashlib
import itertools
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple, cast

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
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
    SYSTEM_FLAGS,
    ConditionalFlags,
    IAccount,
    IAccountACL,
    IMailbox,
    IMailboxImport,
    IMailboxListener,
    IStore,
    IStoreACL,
    IStoreFactory,
)
from mailplat.mailbox import (
    DEFAULT_MAILBOXES,
    MailboxStatus,
    MessageInfo,
    SharedInfos,
    applyFlags,
    buildListing,
    parentNames,
    renamedName,
    validateMailboxName,
)
from mailplat.store.maildir import (
    AccountFiles,
    AccountTree,
    LazyThreadPool,
    SharedIndex,
    _ToDisk,
    _ToWire,
    _accountPath,
    _fsyncDirectory,
    _readText,
    _storeError,
    _writeAtomically,
)
from mailplat.store.memory import (
    ListenerSet,
    checkImportedModseq,
    checkImportedUID,
    checkImportedUIDValidity,
    checkUnchangedSince,
)
from mailplat.uidvalidity import newUIDValidity

CHUNK = 65536

# A dotlock older than this (seconds) is taken to be left by a crash.
DOTLOCK_STALE = 300.0
# How long to keep trying a busy lock (seconds), and how often.
LOCK_TIMEOUT = 30.0
LOCK_RETRY = 0.05
# Threads of a store's pool: mailboxes whose files are read or written at once.
POOL_SIZE = 8
# Messages read for openMessage stay in memory up to this size.
SPOOL_MEMORY = 1024 * 1024
# Spaces after the keywords of X-Keywords, so that keywords added later are
# written in place (see MboxMailbox._changeInPlace).
KEYWORD_ROOM = 32
# Longest encoded level, leaving room for the suffixes in a 255-byte name.
MAX_LEVEL_BYTES = 200

INBOX_FILE = "inbox"
MAIL_DIR = "mail"
CHILDREN_SUFFIX = ".d"
UIDLIST_SUFFIX = ".mailplat-uidlist"
POP3_LOCK_SUFFIX = ".mailplat-pop3.lock"
DOTLOCK_SUFFIX = ".lock"

ENVELOPE_SENDER = b"MAILER-DAEMON"

_RESERVED = frozenset([b"x-imapbase", b"x-uid", b"status", b"x-status", b"x-keywords", b"content-length", b"x-mailplat"])
QUOTE_PREFIX = b"X-Mailplat-Orig-"
_QUOTE_LOWER = QUOTE_PREFIX.lower()
_HEADER = re.compile(rb"([!-9;-~]+):")
_EMPTY_LINES = (b"\n", b"\r\n")

# X-Status letters of the IMAP system flags (Dovecot, mutt); Status: R is \Seen.
_XSTATUS = {"\\Answered": "A", "\\Flagged": "F", "\\Draft": "T", "\\Deleted": "D"}
_XSTATUS_FLAGS = {v: k for k, v in _XSTATUS.items()}

_MONTHS = {m.encode("ascii"): i for i, m in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1)}
_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_ENVELOPE_DATE = re.compile(
    rb"([A-Z][a-z]{2}) +(\d{1,2}) +(\d{1,2}):(\d{2})(?::(\d{2}))?(?: +([A-Z]{1,5}|[+-]\d{4}))? +(\d{4})"
)

_counter = itertools.count()

log = Logger()


# Names on disk.


def encodeLevel(level: str) -> str:
    """
    The file name of one level of a mailbox name: modified UTF-7 with C{.}
    encoded, so that it never holds a C{.}.
    """
    return mutf7.encode(level, alsoEncode=".").decode("ascii")


def decodeLevel(entry: str) -> Optional[str]:
    """
    The level a file name stands for, or L{None} when the name is not one
    this store makes (holds a C{.}, or is not canonical modified UTF-7).
    """
    if not entry or "." in entry:
        return None
    try:
        return mutf7.decode(entry, alsoEncoded=".")
    except ValueError:
        return None


def mailboxPath(home: str, name: str) -> str:
    """
    The mbox file of the validated mailbox C{name} in the account directory
    C{home}: C{inbox} for INBOX, C{mail/a.d/b} for C{a/b}.

    @raise InvalidMailboxName: a level is too long to be a file name.
    """
    if name == "INBOX":
        return os.path.join(home, INBOX_FILE)
    encoded = [encodeLevel(level) for level in name.split("/")]
    if any(len(e) > MAX_LEVEL_BYTES for e in encoded):
        raise InvalidMailboxName(f"Mailbox name {name} is too long for an mbox file")
    return os.path.join(home, MAIL_DIR, *[e + CHILDREN_SUFFIX for e in encoded[:-1]], encoded[-1])


# Envelope dates.


def envelopeLine(internalDate: float) -> bytes:
    """
    The C{From } line of a message delivered at C{internalDate} (UTC).
    """
    t = time.gmtime(int(internalDate))
    month = list(_MONTHS)[t.tm_mon - 1].decode("ascii")
    stamp = f"{_DAYS[t.tm_wday]} {month} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year}"
    return b"From " + ENVELOPE_SENDER + b" " + stamp.encode("ascii") + b"\n"


def envelopeDate(line: bytes) -> Optional[float]:
    """
    The date of a C{From } line (asctime form, UTC unless a numeric offset
    is given), or L{None} when it has none that can be read.
    """
    match = _ENVELOPE_DATE.search(line)
    if match is None:
        return None
    month, day, hour, minute, second, zone, year = match.groups()
    if month not in _MONTHS:
        return None
    try:
        value = calendar.timegm((int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second or 0), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if zone and zone[:1] in b"+-":
        offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
        value -= offset if zone[:1] == b"+" else -offset
    return float(value)


# Parsing an mbox.


def _headerName(line: bytes) -> Optional[bytes]:
    match = _HEADER.match(line)
    return match.group(1).lower() if match else None


def _isQuotedFrom(line: bytes) -> bool:
    return line[:1] == b">" and line.lstrip(b">").startswith(b"From ")


@dataclass
class _Msg:
    """
    One message as found in an mbox file.

    @ivar start: offset of its C{From } line.
    @ivar bodyStart: offset just after the C{From } line.
    @ivar end: offset just after its content (before the separating line).
    @ivar size: wire size of the message.
    """

    start: int
    bodyStart: int
    end: int = 0
    size: int = 0
    envelope: bytes = b""
    internalDate: float = 0.0
    xuid: Optional[int] = None
    flags: FrozenSet[str] = frozenset()
    base: Optional[Tuple[int, int]] = None
    noeol: bool = False
    endsLine: bool = True
    uid: int = 0
    modseq: int = 0
    metaEnd: int = 0


class _Scanner:
    """
    Reads one message line by line, as L{_parse} finds them: metadata from
    the reserved headers, the content's end and its wire size.
    """

    def __init__(self, start: int, envelope: bytes, fallbackDate: float) -> None:
        self.msg = _Msg(start=start, bodyStart=start + len(envelope), envelope=envelope)
        self.msg.end = self.msg.bodyStart
        # The reserved headers right after the envelope end here.
        self.msg.metaEnd = self.msg.bodyStart
        self._metaOpen = True
        date = envelopeDate(envelope)
        self.msg.internalDate = fallbackDate if date is None else date
        self._inHeader = True
        self._dropping = False
        self._pending: Optional[bytes] = None
        self._lastWire = 0
        self._lastLength = 0
        self._lastEndsLine = False
        self._system: Set[str] = set()
        self._keywords: Dict[str, str] = {}

    def feed(self, line: bytes, pos: int) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._content(pending)
            self.msg.end = pos
        if line in _EMPTY_LINES:
            # Maybe the line that separates messages: known at the next line.
            self._metaOpen = False
            self._pending = line
            return
        self._content(line)
        self.msg.end = pos + len(line)
        if self._metaOpen:
            if self._inHeader and self._dropping:
                self.msg.metaEnd = pos + len(line)
            else:
                self._metaOpen = False

    def _content(self, line: bytes) -> None:
        length = len(line)
        if self._inHeader:
            if line in _EMPTY_LINES:
                self._inHeader = False
            elif line[:1] in (b" ", b"\t"):
                if self._dropping:
                    return
            else:
                name = _headerName(line)
                if name in _RESERVED:
                    self._dropping = True
                    self._meta(name, line)
                    return
                self._dropping = False
                if name is not None and name.startswith(_QUOTE_LOWER):
                    length -= len(QUOTE_PREFIX)
        if _isQuotedFrom(line):
            length -= 1
        endsLine = line.endswith(b"\n")
        wire = length + (1 if endsLine and not line.endswith(b"\r\n") else 0)
        self.msg.size += wire
        self._lastWire, self._lastLength, self._lastEndsLine = wire, length, endsLine

    def _meta(self, name: bytes, line: bytes) -> None:
        value = line.split(b":", 1)[1].strip()
        if name == b"x-uid":
            if value.isdigit() and self.msg.xuid is None and 0 < int(value) < 2**32:
                self.msg.xuid = int(value)
        elif name == b"status":
            if b"R" in value:
                self._system.add("\\Seen")
        elif name == b"x-status":
            for letter in value.decode("ascii", "replace"):
                if letter in _XSTATUS_FLAGS:
                    self._system.add(_XSTATUS_FLAGS[letter])
        elif name == b"x-keywords":
            for keyword in value.decode("utf-8", "replace").split():
                self._keywords.setdefault(keyword.lower(), keyword)
        elif name == b"x-imapbase":
            fields = value.split()
            if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit() and 0 < int(fields[0]) < 2**32:
                self.msg.base = (int(fields[0]), int(fields[1]))
        elif name == b"x-mailplat":
            if b"noeol" in value.split():
                self.msg.noeol = True

    def finish(self) -> _Msg:
        # A pending empty line is the separator, not content.
        if self.msg.noeol and self._lastEndsLine:
            self.msg.size += (self._lastLength - 1) - self._lastWire
        self.msg.endsLine = self._lastEndsLine or self.msg.end == self.msg.bodyStart
        keywords = {k: v for k, v in self._keywords.items() if k not in {f.lower() for f in SYSTEM_FLAGS}}
        self.msg.flags = frozenset(self._system) | frozenset(keywords.values())
        return self.msg


def _parse(f: BinaryIO, path: str, offset: int, fallbackDate: float) -> List[_Msg]:
    """
    The messages of the mbox file C{f} from C{offset} (which must be the
    start of a C{From } line, or the end) to its end.

    @raise StoreError: the file is not an mbox file.
    """
    f.seek(offset)
    pos = offset
    messages: List[_Msg] = []
    scanner: Optional[_Scanner] = None
    for line in f:
        if line.startswith(b"From "):
            if scanner is not None:
                messages.append(scanner.finish())
            scanner = _Scanner(pos, line, fallbackDate)
        elif scanner is None:
            raise StoreError(
                f"{path} is not an mbox file: it does not start with a 'From ' line"
                + (f" at offset {offset}" if offset else "")
                + "; the store leaves it untouched"
            )
        else:
            scanner.feed(line, pos)
        pos += len(line)
    if scanner is not None:
        messages.append(scanner.finish())
    return messages


def _filterContent(src: BinaryIO, start: int, end: int, unquote: bool) -> Iterable[bytes]:
    """
    The disk content of one message between C{start} and C{end}, in pieces,
    without its reserved headers; with C{unquote}, its quoted headers and
    C{>From} lines are unquoted too.
    """
    src.seek(start)
    pos = start
    inHeader = True
    dropping = False
    dropLine = False
    lineStart = True
    while pos < end:
        piece = src.readline(min(end - pos, CHUNK))
        if not piece:
            raise StoreError(f"{getattr(src, 'name', 'mbox file')} was cut short while being read")
        pos += len(piece)
        if lineStart:
            dropLine = False
            if inHeader:
                if piece in _EMPTY_LINES:
                    inHeader = False
                elif piece[:1] in (b" ", b"\t"):
                    dropLine = dropping
                else:
                    name = _headerName(piece)
                    dropping = dropLine = name in _RESERVED
                    if unquote and name is not None and name.startswith(_QUOTE_LOWER):
                        piece = piece[len(QUOTE_PREFIX):]
            if unquote and _isQuotedFrom(piece):
                piece = piece[1:]
        lineStart = piece.endswith(b"\n")
        if not dropLine:
            yield piece


# The side file.


@dataclass
class _Side:
    """
    What C{F.mailplat-uidlist} says.
    """

    validity: int
    uidNext: int = 1
    highest: int = 1
    firstRecent: int = 1
    entries: Dict[int, Tuple[int, str]] = field(default_factory=dict)
    lines: int = 0
    torn: bool = False


def _readSide(path: str) -> Optional[_Side]:
    """
    Read a side file; L{None} when there is none or it is damaged.
    """
    text = _readText(path)
    if text is None:
        return None
    lines = text.split("\n")
    header = {f[0]: f[1:] for f in lines[0].split()[1:] if f[1:].isdigit()}
    if "V" not in header or "N" not in header or not 0 < int(header["V"]) < 2**32:
        log.warn("{path} is damaged; its modseqs are started again", path=path)
        return None
    side = _Side(int(header["V"]), int(header["N"]), int(header.get("M", "1")), int(header.get("R", "1")))
    body = lines[1:]
    side.torn = body.pop() != "" if body else True
    for line in body:
        if line[:1] in ("X", "R", "M", "N") and line[1:].isdigit():
            value = int(line[1:])
            if line[0] == "X":
                side.entries.pop(value, None)
            elif line[0] == "R":
                side.firstRecent = value
            elif line[0] == "M":
                side.highest = max(side.highest, value)
            else:
                side.uidNext = max(side.uidNext, value)
            continue
        parts = line.split(" ")
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            uid, modseq = int(parts[0]), int(parts[1])
            side.entries[uid] = (modseq, parts[2])
            side.uidNext = max(side.uidNext, uid + 1)
            side.highest = max(side.highest, modseq)
    side.lines = len(body)
    return side


def flagsDigest(flags: FrozenSet[str]) -> str:
    """
    A short digest of a set of flags, to tell when another program changed
    them.
    """
    text = "\x00".join(sorted(f.lower() for f in flags))
    return hashlib.blake2s(text.encode("utf-8"), digest_size=6).hexdigest()


# Locks.


def _tryDotlock(lock: str) -> bool:
    """
    Make the dotlock C{lock} with C{O_EXCL}, breaking one older than
    L{DOTLOCK_STALE}; return whether it is ours now.
    """
    for attempt in (1, 2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                age = time.time() - os.stat(lock).st_mtime
            except FileNotFoundError:
                continue
            if age <= DOTLOCK_STALE or attempt == 2:
                return False
            log.warn("Breaking the stale dotlock {lock} ({age:.0f} seconds old)", lock=lock, age=age)
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
            continue
        try:
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        finally:
            os.close(fd)
        return True
    return False


class _Held:
    """
    The locks held on one mbox file: an open descriptor with its C{lockf}
    lock, and the dotlock when exclusive.
    """

    def __init__(self, fd: int, dotlock: Optional[str]) -> None:
        self.fd = fd
        self.dotlock = dotlock

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dotlock is not None:
            try:
                os.unlink(self.dotlock)
            except FileNotFoundError:
                pass
            self.dotlock = None


def _tryLock(path: str, exclusive: bool) -> Optional[_Held]:
    """
    Take the locks on the mbox file C{path} without waiting; L{None} when
    another program holds them.

    @raise FileNotFoundError: there is no such file.
    """
    dotlock = None
    if exclusive:
        if not _tryDotlock(path + DOTLOCK_SUFFIX):
            return None
        dotlock = path + DOTLOCK_SUFFIX
    try:
        fd = os.open(path, (os.O_RDWR if exclusive else os.O_RDONLY) | os.O_NOFOLLOW)
    except BaseException:
        if dotlock is not None:
            os.unlink(dotlock)
        raise
    held = _Held(fd, dotlock)
    try:
        fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        # The file may have been replaced by a rewrite while we waited.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            held.release()
            return None
    except OSError as e:
        held.release()
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return None
        raise
    return held


def _stampOf(st: os.stat_result) -> Tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stampAt(path: str) -> Optional[Tuple[int, int, int, int]]:
    try:
        return _stampOf(os.stat(path))
    except FileNotFoundError:
        return None


def _checkKeywords(flags: Iterable[str]) -> None:
    for flag in flags:
        if flag in SYSTEM_FLAGS:
            continue
        if not flag or any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in flag):
            raise StoreError(f"Keyword {flag!r} cannot be stored: it is empty or holds spaces or control characters")


def _asStoreError(failure: Failure, what: str) -> Failure:
    if failure.check(StoreError) is None and failure.check(OSError) is not None:
        return Failure(_storeError(cast(OSError, failure.value), what))
    return failure


def _run(what: str, f: Callable[..., Any], *args: Any) -> defer.Deferred:
    """
    Run blocking file work and hand back its outcome as a Deferred;
    C{OSError} becomes L{StoreError}.
    """
    return defer.maybeDeferred(f, *args).addErrback(_asStoreError, what)


#: What L{MboxMailbox._underLocks} answers when the file changed under a
#: shared lock.
_CHANGED = object()


class _SerialQueue:
    """
    Runs functions returning Deferreds one at a time, in order; each
    caller's Deferred fires (and its callbacks run) before the next
    function starts, unlike L{defer.DeferredLock}.
    """

    def __init__(self) -> None:
        self._waiting: List[Tuple[Callable[[], Any], defer.Deferred]] = []
        self._busy = False
        self._pumping = False

    def run(self, f: Callable[[], Any]) -> defer.Deferred:
        result: defer.Deferred = defer.Deferred()
        self._waiting.append((f, result))
        self._pump()
        return result

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._waiting and not self._busy:
                f, result = self._waiting.pop(0)
                self._busy = True
                defer.maybeDeferred(f).addBoth(self._finished, result)
        finally:
            self._pumping = False

    def _finished(self, outcome: Any, result: defer.Deferred) -> None:
        self._busy = False
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)
        self._pump()


# Mailboxes.


@implementer(IMailbox, IMailboxImport)
class MboxMailbox:
    """
    One mbox file.  The store keeps one object per file, so that listeners
    hear every change made in the process; changes by other processes and
    programs are found by comparing the file's stat with the last one read.
    """

    def __init__(self, store: "MboxStore", name: str, path: str) -> None:
        self.name = name
        self.path = path
        self._store = store
        self._listeners = ListenerSet()
        # Listings hand out shared infos (see SharedInfos).
        self._infos = SharedInfos()
        self._queue = _SerialQueue()
        self._deleted = False
        self._loaded = False
        self._stamp: Optional[Tuple[int, int, int, int]] = None
        self._sideStamp: Optional[Tuple[int, int, int, int]] = None
        self._msgs: List[_Msg] = []
        self._byUid: Dict[int, _Msg] = {}
        self._modseqs: Dict[int, Tuple[int, str]] = {}
        self._sideLines = 0
        self.uidValidity = 0
        self._uidNext = 1
        self._highest = 1
        self._firstRecent = 1

    @property
    def _sidePath(self) -> str:
        return self.path + UIDLIST_SUFFIX

    def _gone(self) -> NoSuchMailbox:
        return NoSuchMailbox(f"Mailbox {self.name} does not exist any more")

    # -- locking and catching up

    def _fresh(self) -> bool:
        return (
            self._loaded
            and _stampAt(self.path) == self._stamp
            and _stampAt(self._sidePath) == self._sideStamp
        )

    def _acquire(self, exclusive: bool) -> defer.Deferred:
        """
        Take the file locks, trying again on the clock while another
        program holds them.
        """
        clock = self._store._clock
        deadline = clock.seconds() + LOCK_TIMEOUT
        d: defer.Deferred = defer.Deferred()

        def attempt() -> None:
            try:
                held = _tryLock(self.path, exclusive)
            except FileNotFoundError:
                self._deleted = True
                d.errback(self._gone())
                return
            except BaseException:
                d.errback()
                return
            if held is not None:
                d.callback(held)
            elif clock.seconds() >= deadline:
                d.errback(StoreError(
                    f"Mailbox {self.name} is locked by another program"
                    f" ({self.path}{DOTLOCK_SUFFIX} or an fcntl lock on {self.path});"
                    f" gave up after {LOCK_TIMEOUT:g} seconds"
                ))
            else:
                clock.callLater(LOCK_RETRY, attempt)

        attempt()
        return d

    def _op(self, what: str, work: Callable[[Optional[_Held]], Tuple[Any, bool]], exclusive: bool = False,
            needsFile: bool = False) -> defer.Deferred:
        """
        Run C{work} with the mailbox caught up with its file, one operation
        at a time in this process.

        @param work: called with the held locks (L{None} when it needs no
            file and the state is current); returns its result and whether
            it changed the mailbox.
        @param exclusive: C{work} writes, so take the dotlock and an
            exclusive lock.
        @param needsFile: C{work} reads the file, so take at least a
            shared lock.
        """

        def run() -> defer.Deferred:
            if self._deleted:
                raise self._gone()
            if not exclusive and not needsFile and self._fresh():
                return defer.succeed(work(None))
            return self._withFile(work, exclusive or not self._fresh())

        def done(outcome: Tuple[Any, bool]) -> Any:
            result, changed = outcome
            if changed:
                self._listeners.notify(self)
            return result

        d = self._queue.run(run)
        d.addErrback(_asStoreError, what)
        return d.addCallback(done)

    def _withFile(self, work: Callable[[Optional[_Held]], Tuple[Any, bool]], exclusive: bool) -> defer.Deferred:
        def locked(held: _Held) -> Any:
            return self._store._inThread(self._underLocks, held, work, exclusive).addCallback(done)

        def done(outcome: Any) -> Any:
            if outcome is _CHANGED:
                # Changed meanwhile: catching up needs the write lock.
                return self._withFile(work, True)
            return outcome

        return self._acquire(exclusive).addCallback(locked)

    def _underLocks(self, held: _Held, work: Callable[[Optional[_Held]], Tuple[Any, bool]], exclusive: bool) -> Any:
        """
        (In the store's threads.)  Catch up with the file and run C{work},
        then release the locks; L{_CHANGED} when a reader finds the file
        changed and must take the write lock.
        """
        try:
            if not exclusive and not self._fresh():
                return _CHANGED
            changed = self._syncLocked(held) if exclusive else False
            result, modified = work(held)
            return result, changed or modified
        finally:
            held.release()

    def _signature(self) -> Tuple[int, int, int, int, int]:
        return (self.uidValidity, self._uidNext, self._highest, len(self._msgs), self._firstRecent)

    def _syncLocked(self, held: _Held) -> bool:
        """
        Catch up with the file and the side file (under the write lock):
        read what changed, give UIDs to messages that have none, record new
        modseqs.  Return whether anything visible changed.
        """
        st = os.fstat(held.fd)
        stamp = _stampOf(st)
        sideStamp = _stampAt(self._sidePath)
        if self._loaded and stamp == self._stamp and sideStamp == self._sideStamp:
            return False
        wasLoaded = self._loaded
        before = self._signature()
        try:
            if not self._loaded or stamp != self._stamp or sideStamp != self._sideStamp:
                # (A change of the side file may come with flags written in
                # place within the same clock tick: same size, same mtime.)
                msgs = self._parseFd(held.fd, 0, st.st_mtime)
            else:
                msgs = self._msgs
            if not self._loaded or sideStamp != self._sideStamp:
                side = _readSide(self._sidePath)
            else:
                side = self._snapshot()
            needFix, sideDirty = self._reconcile(msgs, side)
            if needFix:
                self._rewrite(held, {})
            else:
                self._stamp = stamp
            if needFix or sideDirty:
                self._writeSide()
            else:
                self._sideStamp = sideStamp
        except BaseException:
            self._loaded = False
            self._stamp = None
            raise
        self._loaded = True
        return wasLoaded and before != self._signature()

    def _parseFd(self, fd: int, offset: int, fallbackDate: float) -> List[_Msg]:
        with open(fd, "rb", closefd=False, buffering=CHUNK) as f:
            return _parse(f, self.path, offset, fallbackDate)

    def _snapshot(self) -> _Side:
        return _Side(self.uidValidity, self._uidNext, self._highest, self._firstRecent, dict(self._modseqs),
                     self._sideLines)

    def _reconcile(self, msgs: List[_Msg], side: Optional[_Side]) -> Tuple[bool, bool]:
        """
        Give C{msgs} their UIDs and modseqs from their headers and the side
        file, and make them the mailbox's state.

        @return: whether the mbox must be rewritten (messages without a
            usable X-UID) and whether the side file must be written.
        """
        base = msgs[0].base if msgs else None
        if base is not None:
            validity = base[0]
        elif side is not None:
            validity = side.validity
        else:
            validity = newUIDValidity()
        same = side is not None and side.validity == validity
        sideDirty = not same or (side is not None and side.torn)
        uidNext = 1
        if base is not None:
            uidNext = max(uidNext, base[1])
        if same and side is not None:
            uidNext = max(uidNext, side.uidNext)
        last = 0
        for m in msgs:
            if m.xuid is not None and m.xuid > last:
                m.uid = last = m.xuid
            else:
                m.uid = 0
        uidNext = max(uidNext, last + 1)
        firstRecent = side.firstRecent if same and side is not None else uidNext
        needFix = False
        for m in msgs:
            if not m.uid:
                m.uid = uidNext
                uidNext += 1
                needFix = True
        known = side.entries if same and side is not None else {}
        highest = side.highest if same and side is not None else 1
        modseqs: Dict[int, Tuple[int, str]] = {}
        for m in msgs:
            digest = flagsDigest(m.flags)
            entry = known.get(m.uid)
            if entry is not None and entry[1] == digest:
                m.modseq = entry[0]
            else:
                highest += 1
                m.modseq = highest
                sideDirty = True
            highest = max(highest, m.modseq)
            modseqs[m.uid] = (m.modseq, digest)
        if set(known) - set(modseqs):
            highest += 1
            sideDirty = True
        self.uidValidity = validity
        self._uidNext = uidNext
        self._highest = highest
        self._firstRecent = firstRecent
        self._modseqs = modseqs
        self._sideLines = side.lines if same and side is not None else 0
        self._setMessages(msgs)
        return needFix, sideDirty

    def _setMessages(self, msgs: List[_Msg]) -> None:
        self._msgs = msgs
        self._byUid = {m.uid: m for m in msgs}

    # -- writing

    def _metaLines(self, m: _Msg, flags: FrozenSet[str], first: bool, length: Optional[int] = None) -> Optional[bytes]:
        """
        The reserved headers this store writes at the top of a message.
        C{Status} and C{X-Status} have a fixed width and C{X-Keywords} is
        padded with spaces (L{KEYWORD_ROOM}), as Dovecot pads it, so that a
        later flag change can be written over them in place
        (L{_changeInPlace}).

        @param length: make the headers exactly this long, the keywords'
            padding taking up the difference; L{None} when they do not fit.
        """
        keywords = sorted(f for f in flags if f not in SYSTEM_FLAGS)
        lines = []
        if first:
            allKeywords = sorted({f for msg in self._msgs for f in msg.flags if f not in SYSTEM_FLAGS} | set(keywords))
            lines.append(f"X-IMAPbase: {self.uidValidity:010d} {self._uidNext:010d}" + "".join(" " + k for k in allKeywords))
        lines.append(f"X-UID: {m.uid}")
        status = ("R" if "\\Seen" in flags else "") + ("O" if m.uid < self._firstRecent else "")
        # (Padded before the letters, which readers skip as they skip the
        # space after the colon.)
        lines.append(f"Status: {status:>2}")
        xstatus = "".join(letter for flag, letter in _XSTATUS.items() if flag in flags)
        lines.append(f"X-Status: {xstatus:>4}")
        keywordLine = len(lines)
        lines.append("X-Keywords:" + "".join(" " + k for k in keywords))
        if m.noeol or not m.endsLine:
            lines.append("X-Mailplat: noeol")
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        room = KEYWORD_ROOM if length is None else length - len(data)
        if room < 0:
            return None
        lines[keywordLine] += " " * room
        return "".join(line + "\n" for line in lines).encode("utf-8")

    def _changeInPlace(self, held: _Held, flags: Dict[int, FrozenSet[str]], durable: bool = True) -> bool:
        """
        Give the messages in C{flags} those flags by writing their reserved
        headers again where they are, when each message's new headers fit
        where its old ones are with every line end at the same offset (so
        that a write cut short by a crash still leaves whole header lines,
        old or new); one fdatasync for all.

        @param durable: fdatasync the file (without: headers that are
            soft state, such as C{Status: O}).
        @return: whether it was done (else nothing was written: the file
            must be rewritten).
        """
        first = self._msgs[0] if self._msgs else None
        writes = []
        for uid, new in flags.items():
            m = self._byUid[uid]
            length = m.metaEnd - m.bodyStart
            if length <= 0:
                return False
            meta = self._metaLines(m, new, m is first, length)
            if meta is None:
                return False
            old = os.pread(held.fd, length, m.bodyStart)
            if len(old) != length or _lineEnds(old) != _lineEnds(meta) or old.split(b":", 1)[0] != meta.split(b":", 1)[0]:
                return False
            writes.append((m, new, meta))
        for m, new, meta in writes:
            _writeAllAt(held.fd, meta, m.bodyStart)
        if durable:
            os.fdatasync(held.fd)
        for m, new, meta in writes:
            m.flags = new
            m.modseq = self._modseqs.get(m.uid, (self._highest, ""))[0]
        self._stamp = _stampOf(os.fstat(held.fd))
        return True

    def _rewrite(self, held: _Held, flags: Dict[int, FrozenSet[str]], keep: Optional[List[_Msg]] = None) -> None:
        """
        Write the mailbox again with C{keep} (every message by default),
        giving the messages in C{flags} those flags: into a new file beside
        the old one, fsynced, renamed over it, the directory fsynced.
        """
        messages = self._msgs if keep is None else keep
        tmp = f"{self.path}.{os.getpid()}.{next(_counter)}.mailplat-tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, os.fstat(held.fd).st_mode & 0o7777)
        try:
            # The new file is locked from birth: once renamed it is the
            # file this operation holds.
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with open(held.fd, "rb", closefd=False, buffering=CHUNK) as src, \
                    open(fd, "wb", closefd=False, buffering=CHUNK) as out:
                for i, m in enumerate(messages):
                    out.write(m.envelope)
                    out.write(cast(bytes, self._metaLines(m, flags.get(m.uid, m.flags), i == 0)))
                    for piece in _filterContent(src, m.bodyStart, m.end, unquote=False):
                        out.write(piece)
                    out.write(b"\n" if m.endsLine else b"\n\n")
            os.fsync(fd)
            _replaceFile(tmp, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(held.fd)
        held.fd = fd
        _fsyncDirectory(os.path.dirname(self.path))
        st = os.fstat(fd)
        msgs = self._parseFd(fd, 0, st.st_mtime)
        for m in msgs:
            m.uid = m.xuid or 0
            m.modseq = self._modseqs.get(m.uid, (self._highest, ""))[0]
        self._setMessages(msgs)
        self._stamp = _stampOf(st)

    def _writeSide(self) -> None:
        lines = [f"1 V{self.uidValidity} N{self._uidNext} M{self._highest} R{self._firstRecent}\n"]
        lines.extend(f"{uid} {modseq} {digest}\n" for uid, (modseq, digest) in sorted(self._modseqs.items()))
        _writeAtomically(self._sidePath, "".join(lines).encode("utf-8"))
        self._sideStamp = _stampAt(self._sidePath)
        self._sideLines = len(self._modseqs)

    def _logSide(self, lines: List[str]) -> None:
        """
        Record changes in the side file durably: appended with one
        fdatasync, or the file written whole once it has grown too long.
        """
        if self._sideStamp is None or self._sideLines + len(lines) > 2 * len(self._modseqs) + 1000:
            self._writeSide()
            return
        with open(os.open(self._sidePath, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW), "ab") as f:
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            os.fdatasync(f.fileno())
        self._sideStamp = _stampAt(self._sidePath)
        self._sideLines += len(lines)

    def _failed(self) -> None:
        """
        A write failed half-way: forget the cached state so that the next
        operation reads the files again.
        """
        self._loaded = False
        self._stamp = None
        self._sideStamp = None

    # -- IMailbox

    def _load(self) -> defer.Deferred:
        return self._op(f"read mailbox {self.name}", lambda held: (None, False))

    def _info(self, m: _Msg) -> MessageInfo:
        version = (m.flags, m.internalDate, m.size, m.modseq)
        info = self._infos.get(m.uid, version)
        if info is None:
            info = self._infos.keep(version, MessageInfo(m.uid, m.flags, m.internalDate, m.size, m.modseq))
        return info

    def _listing(self) -> List[MessageInfo]:
        infos = [self._info(m) for m in self._msgs]
        self._infos.listed(infos)
        return infos

    def status(self) -> defer.Deferred:
        """
        Counts of the mailbox (see L{IMailbox.status}).
        """

        def work(held: Optional[_Held]) -> Tuple[MailboxStatus, bool]:
            return MailboxStatus(
                messages=len(self._msgs),
                recent=sum(1 for m in self._msgs if m.uid >= self._firstRecent),
                unseen=sum(1 for m in self._msgs if "\\Seen" not in m.flags),
                uidNext=self._uidNext,
                uidValidity=self.uidValidity,
                highestModseq=self._highest,
                size=sum(m.size for m in self._msgs),
            ), False

        return self._op(f"read mailbox {self.name}", work)

    def listMessages(self) -> defer.Deferred:
        """
        Every message, in UID order (see L{IMailbox.listMessages}).
        """
        return self._op(f"read mailbox {self.name}", lambda held: (self._listing(), False))

    def claimRecent(self) -> defer.Deferred:
        """
        Claim the \\Recent messages (see L{IMailbox.claimRecent}); the claim
        is kept in the side file.
        """

        def work(held: Optional[_Held]) -> Tuple[List[int], bool]:
            assert held is not None
            claimed = [m.uid for m in self._msgs if m.uid >= self._firstRecent]
            if claimed:
                self._firstRecent = self._uidNext
                try:
                    self._logSide([f"R{self._firstRecent}\n"])
                    # Marked old (Status: O) where their padded headers
                    # allow, as Dovecot does, so that mutt no longer shows
                    # them as new; soft state, not fsynced, and left to the
                    # next rewrite where they do not fit.
                    self._changeInPlace(held, {uid: self._byUid[uid].flags for uid in claimed}, durable=False)
                except BaseException:
                    self._failed()
                    raise
            return claimed, False

        return self._op(f"claim new messages in {self.name}", work, exclusive=True)

    def openMessage(self, uid: int) -> defer.Deferred:
        """
        Open a message in its wire form (see L{IMailbox.openMessage}): it is
        copied out under a shared lock, so a later rewrite by another
        program cannot change it under the reader.
        """

        def work(held: Optional[_Held]) -> Tuple[BinaryIO, bool]:
            assert held is not None
            m = self._byUid.get(uid)
            if m is None:
                raise NoSuchMessage(f"No message with UID {uid} in {self.name}")
            out = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
            try:
                toWire = _ToWire()
                previous = b""
                with open(held.fd, "rb", closefd=False, buffering=CHUNK) as src:
                    for piece in _filterContent(src, m.bodyStart, m.end, unquote=True):
                        if previous:
                            out.write(toWire.feed(previous))
                        previous = piece
                if m.noeol and previous.endswith(b"\n"):
                    previous = previous[:-1]
                out.write(toWire.feed(previous))
                out.write(toWire.flush())
                out.seek(0)
            except BaseException:
                out.close()
                raise
            return out, False  # type: ignore[return-value]

        return self._op(f"open message {uid} in {self.name}", work, needsFile=True)

    def _spool(self, source: BinaryIO) -> Tuple[Any, bool]:
        """
        Copy C{source} to a temporary file in its disk form: LF line ends,
        reserved headers quoted, C{From } lines quoted, a line end added
        when it had none.

        @return: the temporary file (at offset 0) and whether a line end
            was added.
        """
        out = tempfile.TemporaryFile()
        toDisk = _ToDisk()
        state = {"header": True, "wrote": False}

        def quote(line: bytes) -> bytes:
            if state["header"]:
                if line in _EMPTY_LINES:
                    state["header"] = False
                else:
                    name = _headerName(line)
                    if name is not None and (name in _RESERVED or name.startswith(_QUOTE_LOWER)):
                        line = QUOTE_PREFIX + line
            if line.lstrip(b">").startswith(b"From "):
                line = b">" + line
            return line

        tail: List[bytes] = []
        try:
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                parts = toDisk.feed(chunk).split(b"\n")
                if len(parts) == 1:
                    tail.append(parts[0])
                    continue
                tail.append(parts[0])
                lines = [b"".join(tail) + b"\n"] + [p + b"\n" for p in parts[1:-1]]
                tail = [parts[-1]]
                out.write(b"".join(quote(line) for line in lines))
                state["wrote"] = True
            tail.append(toDisk.flush())
            rest = b"".join(tail)
            noeol = bool(rest) or not state["wrote"]
            if noeol:
                out.write(quote(rest + b"\n"))
            out.flush()
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out, noeol

    def append(self, source: BinaryIO, flags: Iterable[str] = (), internalDate: Optional[float] = None) -> defer.Deferred:
        """
        Add a message at the end of the file, durably (see L{IMailbox.append}).
        """
        return self._append(source, flags, internalDate, None)

    def importMessage(self, uid: int, source: BinaryIO, flags: Iterable[str] = (),
                      internalDate: Optional[float] = None, modseq: Optional[int] = None) -> defer.Deferred:
        """
        Add a message under a given UID, and modseq when given, at the end
        of the file (see L{IMailboxImport.importMessage}); the internal
        date keeps whole seconds, as every date in an mbox C{From } line.
        """
        if modseq is not None:
            try:
                checkImportedModseq(self.name, modseq)
            except MailboxError as e:
                return defer.fail(e)
        return self._append(source, flags, internalDate, uid, modseq)

    def raiseHighestModseq(self, modseq: int) -> defer.Deferred:
        """
        Raise HIGHESTMODSEQ to at least C{modseq}, recorded in the side
        file (see L{IMailboxImport.raiseHighestModseq}).
        """
        try:
            checkImportedModseq(self.name, modseq)
        except MailboxError as e:
            return defer.fail(e)

        def work(held: Optional[_Held]) -> Tuple[None, bool]:
            if modseq <= self._highest:
                return None, False
            self._highest = int(modseq)
            try:
                self._logSide([f"M{self._highest}\n"])
            except BaseException:
                self._failed()
                raise
            return None, True

        return self._op(f"raise the HIGHESTMODSEQ of {self.name}", work, exclusive=True)

    def setUIDValidity(self, uidValidity: int) -> defer.Deferred:
        """
        Give the empty mailbox another UIDVALIDITY, kept in the side file
        until the first message carries it in C{X-IMAPbase} (see
        L{IMailboxImport.setUIDValidity}).
        """

        def work(held: Optional[_Held]) -> Tuple[None, bool]:
            checkImportedUIDValidity(self.name, uidValidity, len(self._msgs))
            self.uidValidity = int(uidValidity)
            try:
                self._writeSide()
            except BaseException:
                self._failed()
                raise
            return None, True

        return self._op(f"set the UIDVALIDITY of {self.name}", work, exclusive=True)

    def raiseUIDNext(self, uidNext: int) -> defer.Deferred:
        """
        Raise UIDNEXT to at least C{uidNext}, recorded in the side file (see
        L{IMailboxImport.raiseUIDNext}).
        """

        def work(held: Optional[_Held]) -> Tuple[None, bool]:
            if uidNext <= self._uidNext:
                return None, False
            self._uidNext = int(uidNext)
            try:
                self._logSide([f"N{self._uidNext}\n"])
            except BaseException:
                self._failed()
                raise
            return None, True

        return self._op(f"raise the UIDNEXT of {self.name}", work, exclusive=True)

    def _append(self, source: BinaryIO, flags: Iterable[str], internalDate: Optional[float],
                forcedUID: Optional[int], forcedModseq: Optional[int] = None) -> defer.Deferred:
        """
        Add a message at the end of the file, durably, under the next UID or
        C{forcedUID}, with a new modseq or C{forcedModseq}.
        """
        try:
            if self._deleted:
                raise self._gone()
            wanted = applyFlags(frozenset(), flags, "set")
            _checkKeywords(wanted)
            spool, noeol = self._spool(source)
        except BaseException:
            return defer.fail().addErrback(_asStoreError, f"store a message in {self.name}")
        date = float(int(time.time() if internalDate is None else internalDate))

        def work(held: Optional[_Held]) -> Tuple[int, bool]:
            assert held is not None
            fd = held.fd
            size = os.lseek(fd, 0, os.SEEK_END)
            tail = os.pread(fd, min(size, 2), max(size - 2, 0))
            if not size or tail == b"\n\n":
                prefix = b""
            elif tail.endswith(b"\n"):
                prefix = b"\n"
            else:
                prefix = b"\n\n"
            if forcedUID is not None:
                checkImportedUID(self.name, forcedUID, self._uidNext)
                self._uidNext = forcedUID
            uid = self._uidNext
            m = _Msg(start=size + len(prefix), bodyStart=0, uid=uid, noeol=noeol)
            first = not self._msgs
            try:
                self._uidNext += 1
                try:
                    _writeAll(fd, prefix + envelopeLine(date) + cast(bytes, self._metaLines(m, wanted, first)))
                    spool.seek(0)
                    while True:
                        chunk = spool.read(CHUNK)
                        if not chunk:
                            break
                        _writeAll(fd, chunk)
                    _writeAll(fd, b"\n")
                    os.fsync(fd)
                except BaseException:
                    # Leave the mailbox as it was, not with half a message.
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                    raise
                st = os.fstat(fd)
                if forcedModseq is None:
                    self._highest += 1
                    modseq = self._highest
                else:
                    modseq = forcedModseq
                    self._highest = max(self._highest, modseq)
                if prefix == b"\n\n":
                    # The last message had no line end and now has one: read
                    # the whole file again at the next call.
                    self._stamp = None
                    digest = flagsDigest(wanted)
                else:
                    [added] = self._parseFd(fd, m.start, st.st_mtime)
                    added.uid, added.modseq = uid, modseq
                    digest = flagsDigest(added.flags)
                    self._setMessages(self._msgs + [added])
                    self._stamp = _stampOf(st)
                self._modseqs[uid] = (modseq, digest)
                lines = [f"{uid} {modseq} {digest}\n"]
                if modseq < self._highest:
                    # Read back, the entry alone would not say HIGHESTMODSEQ.
                    lines.append(f"M{self._highest}\n")
                self._logSide(lines)
            except BaseException:
                self._failed()
                raise
            return uid, True

        d = self._op(f"store a message in {self.name}", work, exclusive=True)

        def closeSpool(result: Any) -> Any:
            spool.close()
            return result

        return d.addBoth(closeSpool)

    def setFlags(self, uids: Iterable[int], flags: Iterable[str], mode: str,
                 unchangedSince: Optional[int] = None) -> defer.Deferred:
        """
        Change flags (see L{IMailbox.setFlags}); the file is rewritten when
        any changed.  The C{unchangedSince} test is made under the
        dotlock and the exclusive lock, caught up with the file, so no
        other process changes a message between the test and the rewrite.
        """
        if mode not in ("set", "add", "remove"):
            return defer.fail(ValueError(f"unknown flag mode {mode!r}"))
        flags = list(flags)
        wanted = sorted(set(uids))
        try:
            checkUnchangedSince(unchangedSince)
            _checkKeywords(applyFlags(frozenset(), flags, "set"))
        except (StoreError, ValueError) as e:
            return defer.fail(e)
        modified: List[int] = []

        def work(held: Optional[_Held]) -> Tuple[Any, bool]:
            assert held is not None
            changes: Dict[int, FrozenSet[str]] = {}
            del modified[:]
            for uid in wanted:
                m = self._byUid.get(uid)
                if m is None:
                    continue
                if unchangedSince is not None and m.modseq > unchangedSince:
                    modified.append(uid)
                    continue
                new = applyFlags(m.flags, flags, mode)
                if new != m.flags:
                    changes[uid] = new
            if changes:
                try:
                    lines = []
                    for uid, new in sorted(changes.items()):
                        self._highest += 1
                        self._modseqs[uid] = (self._highest, flagsDigest(new))
                        lines.append(f"{uid} {self._highest} {self._modseqs[uid][1]}\n")
                    if not self._changeInPlace(held, changes):
                        self._rewrite(held, changes)
                    self._logSide(lines)
                except BaseException:
                    self._failed()
                    raise
            refused = set(modified)
            infos = [self._info(self._byUid[uid]) for uid in wanted if uid in self._byUid and uid not in refused]
            if unchangedSince is not None:
                return ConditionalFlags(infos, list(modified)), bool(changes)
            return infos, bool(changes)

        return self._op(f"change flags in {self.name}", work, exclusive=True)

    def expunge(self, uids: Optional[Iterable[int]] = None, requireDeleted: bool = True) -> defer.Deferred:
        """
        Remove messages durably by rewriting the file (see L{IMailbox.expunge}).
        """
        only = None if uids is None else set(uids)

        def work(held: Optional[_Held]) -> Tuple[List[int], bool]:
            assert held is not None
            removed = [
                m.uid for m in self._msgs
                if (only is None or m.uid in only) and (not requireDeleted or "\\Deleted" in m.flags)
            ]
            if removed:
                try:
                    gone = set(removed)
                    self._rewrite(held, {}, [m for m in self._msgs if m.uid not in gone])
                    for uid in removed:
                        self._modseqs.pop(uid, None)
                    self._highest += 1
                    self._logSide([f"X{uid}\n" for uid in removed] + [f"M{self._highest}\n"])
                except BaseException:
                    self._failed()
                    raise
            return removed, bool(removed)

        return self._op(f"expunge messages in {self.name}", work, exclusive=True)

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
        if self._deleted or not os.path.isfile(self.path):
            raise self._gone()
        fd = os.open(self.path + POP3_LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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
        Take the POP3 maildrop lock with C{flock} on C{F.mailplat-pop3.lock}
        (see L{IMailbox.lockExclusive}).
        """
        return _run(f"lock {self.name}", self._lockExclusiveSync)

    # -- for the account

    def _forget(self) -> None:
        """
        The mailbox was deleted: drop its state and tell the listeners.
        """
        self._deleted = True
        self._setMessages([])
        self._modseqs = {}
        self._listeners.notify(self)


def _lineEnds(data: bytes) -> List[int]:
    """
    The offsets of the line ends in C{data}.
    """
    return [i for i, octet in enumerate(data) if octet == 10]


def _writeAllAt(fd: int, data: bytes, offset: int) -> None:
    """
    Write all of C{data} at C{offset} of C{fd}.
    """
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _replaceFile(tmp: str, path: str) -> None:
    """
    Rename the finished file C{tmp} over C{path} (a separate function so
    that tests can make it fail).
    """
    os.rename(tmp, path)


def _createMbox(path: str) -> None:
    """
    Make an empty mbox file with a fresh side file (a new UIDVALIDITY).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    side = f"1 V{newUIDValidity()} N1 M1 R1\n"
    _writeAtomically(path + UIDLIST_SUFFIX, side.encode("ascii"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsyncDirectory(os.path.dirname(path))


def _linkFree(home: str, path: str) -> bool:
    """
    Whether no existing component of C{path} below C{home} is a symbolic
    link (a link planted in an account must never be followed out of it).
    """
    relative = os.path.relpath(path, home)
    if relative.startswith(os.pardir):
        return False
    current = home
    for part in relative.split(os.sep):
        if part in ("", os.curdir):
            continue
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return False
        except FileNotFoundError:
            return True
    return True


def _isKind(home: str, path: str, kind: Callable[[int], bool]) -> bool:
    """
    Whether C{path} is of C{kind} (C{stat.S_ISREG}, C{stat.S_ISDIR})
    itself, reached from C{home} without following a symbolic link.
    """
    if not _linkFree(home, path):
        return False
    try:
        return kind(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _removeMboxFiles(path: str) -> None:
    for suffix in ("", UIDLIST_SUFFIX, POP3_LOCK_SUFFIX):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


# Accounts.


@implementer(IAccount, IAccountACL)
class MboxAccount(AccountFiles):
    """
    One account: C{<root>/<domain>/<localpart>/} with its C{inbox} file and
    its C{mail/} tree.
    """

    def __init__(self, store: "MboxStore", address: str, home: str) -> None:
        self.address = address
        self.home = home
        self._store = store

    def _path(self, name: str) -> str:
        return mailboxPath(self.home, name)

    def _isFile(self, path: str) -> bool:
        return _isKind(self.home, path, stat.S_ISREG)

    def _isDir(self, path: str) -> bool:
        return _isKind(self.home, path, stat.S_ISDIR)

    def _checkExists(self) -> None:
        if not os.path.isfile(os.path.join(self.home, INBOX_FILE)):
            raise NoSuchAccount(f"No account {self.address}")

    def _isMailbox(self, name: str) -> bool:
        return self._isFile(self._path(name))

    # -- files of the account

    def _folders(self) -> Tuple[Set[str], Set[str]]:
        """
        The folders on disk: the selectable names (an mbox file) and the
        names kept only as hierarchy (a C{.d} directory without its file).
        """
        selectable: Set[str] = set()
        noselect: Set[str] = set()

        def visit(directory: str, prefix: List[str]) -> None:
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                return
            files: Dict[str, str] = {}
            dirs: Dict[str, str] = {}
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name.endswith(CHILDREN_SUFFIX):
                    level = decodeLevel(entry.name[:-len(CHILDREN_SUFFIX)])
                    if level is not None:
                        dirs[level] = entry.path
                elif entry.is_file(follow_symlinks=False):
                    level = decodeLevel(entry.name)
                    if level is not None:
                        files[level] = entry.path
            for level, path in files.items():
                name = self._named(prefix + [level], path)
                if name is not None and name != "INBOX":
                    selectable.add(name)
            for level, path in dirs.items():
                name = self._named(prefix + [level], path[:-len(CHILDREN_SUFFIX)])
                if name is None:
                    continue
                if name != "INBOX" and level not in files:
                    noselect.add(name)
                visit(path, prefix + [level])

        top = os.path.join(self.home, MAIL_DIR)
        if self._isDir(top):
            visit(top, [])
        return selectable, noselect

    def _named(self, levels: List[str], path: Optional[str] = None) -> Optional[str]:
        """
        The mailbox name of C{levels} found on disk, or L{None} when it is
        not valid or not the canonical path of that name.
        """
        try:
            name = validateMailboxName("/".join(levels))
            if name != "INBOX" and path is not None and self._path(name) != path:
                return None
        except MailboxError:
            return None
        return name

    # -- blocking work

    def _listSync(self) -> List[Any]:
        self._checkExists()
        selectable, noselect = self._folders()
        uses = self._specialUses()
        mailboxes: Dict[str, Optional[str]] = {"INBOX": uses.get("INBOX")}
        for name in selectable:
            mailboxes[name] = uses.get(name)
        return buildListing(mailboxes, noselect)

    def _getSync(self, name: str) -> MboxMailbox:
        name = validateMailboxName(name)
        self._checkExists()
        path = self._path(name)
        if not self._isFile(path):
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        return self._store._mailboxAt(name, path)

    def _createSync(self, name: str, specialUse: Optional[str]) -> None:
        name = validateMailboxName(name)
        self._checkExists()
        if name == "INBOX" or self._isFile(self._path(name)):
            raise MailboxExists(f"Mailbox {name} exists already")
        if not _linkFree(self.home, self._path(name)) or os.path.lexists(self._path(name)):
            raise MailboxError(f"Mailbox {name} cannot be made: something else is in its place")
        for parent in parentNames(name):
            if parent != "INBOX" and not self._isFile(self._path(parent)):
                _createMbox(self._path(parent))
        _createMbox(self._path(name))
        if specialUse:
            uses = self._specialUses()
            uses[name] = specialUse
            self._writeSpecialUses(uses)

    def _hasChildren(self, name: str) -> bool:
        selectable, noselect = self._folders()
        prefix = name + "/"
        return any(n.startswith(prefix) for n in selectable | noselect)

    def _deleteSync(self, name: str) -> None:
        self._deleteFiles(name)
        self._forgetMailbox(validateMailboxName(name))

    def _deleteFiles(self, name: str) -> None:
        """
        Remove mailbox C{name}'s files (and its children's, when it has
        no others).
        """
        name = validateMailboxName(name)
        self._checkExists()
        if name == "INBOX":
            raise MailboxError("INBOX cannot be deleted")
        path = self._path(name)
        children = path + CHILDREN_SUFFIX
        isMailbox = self._isFile(path)
        if not isMailbox and not self._isDir(children):
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        hasChildren = self._hasChildren(name)
        if not isMailbox:
            if hasChildren:
                raise MailboxError(f"Mailbox {name} has children and holds no mail")
            shutil.rmtree(children)
        else:
            _removeMboxFiles(path)
            if not hasChildren and self._isDir(children):
                shutil.rmtree(children)
        _fsyncDirectory(os.path.dirname(path))

    def _forgetMailbox(self, name: str) -> None:
        """
        (On the reactor thread.)  Mailbox C{name}'s files are gone: drop
        its special use, its ACL and its object.
        """
        uses = self._specialUses()
        if uses.pop(name, None) is not None:
            self._writeSpecialUses(uses)
        self._aclDropped(name)
        self._store._dropMailbox(self._path(name))

    def _exists(self, name: str) -> bool:
        path = self._path(name)
        return name == "INBOX" or self._isFile(path) or self._isDir(path + CHILDREN_SUFFIX)

    def _renameChecks(self, old: str, new: str) -> Tuple[str, str]:
        old = validateMailboxName(old)
        new = validateMailboxName(new)
        self._checkExists()
        if not self._exists(old):
            raise NoSuchMailbox(f"Mailbox {old} does not exist")
        if self._exists(new):
            raise MailboxExists(f"Mailbox {new} exists already")
        if new.startswith(old + "/"):
            raise MailboxError("A mailbox cannot be moved into itself")
        return old, new

    def _renameSync(self, old: str, new: str) -> None:
        self._renameFiles(old, new)
        self._renamed(old, new)

    def _renameFiles(self, old: str, new: str) -> None:
        """
        Move mailbox C{old}'s files (and its children's) to C{new}.
        """
        old, new = self._renameChecks(old, new)
        oldPath, newPath = self._path(old), self._path(new)
        if not _linkFree(self.home, newPath) or os.path.lexists(newPath):
            raise MailboxError(f"Mailbox {new} cannot be made: something else is in its place")
        for parent in parentNames(new):
            if parent != "INBOX" and not self._isFile(self._path(parent)):
                _createMbox(self._path(parent))
        os.makedirs(os.path.dirname(newPath), exist_ok=True)
        for suffix in (CHILDREN_SUFFIX, UIDLIST_SUFFIX, POP3_LOCK_SUFFIX, ""):
            if os.path.lexists(oldPath + suffix):
                os.rename(oldPath + suffix, newPath + suffix)
        _fsyncDirectory(os.path.dirname(newPath))
        _fsyncDirectory(os.path.dirname(oldPath))

    def _renamed(self, old: str, new: str) -> None:
        """
        (On the reactor thread.)  Mailbox C{old}'s files moved to C{new}:
        move its objects, special uses and ACLs along.
        """
        self._store._movedTree(self._path(old), old, self._path(new), new)
        uses = self._specialUses()
        renamed = {renamedName(n, old, new) or n: u for n, u in uses.items()}
        if renamed != uses:
            self._writeSpecialUses(renamed)
        self._aclRenamed(old, new)

    def _renameInbox(self, new: str) -> defer.Deferred:
        """
        Move INBOX's messages into a new mailbox C{new}, keeping their UIDs
        and flags; INBOX stays, empty, its UIDs still going up.
        """
        inbox = self._getSync("INBOX")
        if not _linkFree(self.home, self._path(new)) or os.path.lexists(self._path(new)):
            raise MailboxError(f"Mailbox {new} cannot be made: something else is in its place")

        def work(held: Optional[_Held]) -> Tuple[None, bool]:
            assert held is not None
            for parent in parentNames(new):
                if parent != "INBOX" and not self._isFile(self._path(parent)):
                    _createMbox(self._path(parent))
            target = self._path(new)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{os.getpid()}.{next(_counter)}.mailplat-tmp"
            try:
                with open(held.fd, "rb", closefd=False) as src, open(tmp, "xb") as out:
                    src.seek(0)
                    shutil.copyfileobj(src, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                side = inbox._snapshot()
                lines = [f"1 V{side.validity} N{side.uidNext} M{side.highest} R{side.firstRecent}\n"]
                lines.extend(f"{u} {s} {d}\n" for u, (s, d) in sorted(side.entries.items()))
                _writeAtomically(target + UIDLIST_SUFFIX, "".join(lines).encode("utf-8"))
                os.rename(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            _fsyncDirectory(os.path.dirname(target))
            try:
                inbox._rewrite(held, {}, [])
                inbox._modseqs = {}
                inbox._highest += 1
                inbox._firstRecent = inbox._uidNext
                inbox._writeSide()
            except BaseException:
                inbox._failed()
                raise
            return None, True

        return inbox._op(f"rename INBOX to {new}", work, exclusive=True)

    # -- IAccount

    def listMailboxes(self) -> defer.Deferred:
        """
        Every mailbox, sorted (see L{IAccount.listMailboxes}).
        """
        return _run(f"list the mailboxes of {self.address}", self._listSync)

    def getMailbox(self, name: str) -> defer.Deferred:
        """
        The mailbox named C{name}, read (see L{IAccount.getMailbox}).
        """
        d = _run(f"open mailbox {name}", self._getSync, name)

        def load(mailbox: MboxMailbox) -> defer.Deferred:
            if mailbox._loaded:
                return defer.succeed(mailbox)
            return mailbox._load().addCallback(lambda _: mailbox)

        return d.addCallback(load)

    def createMailbox(self, name: str, specialUse: Optional[str] = None) -> defer.Deferred:
        """
        Make a mailbox and its missing superiors (see L{IAccount.createMailbox}).
        """
        return _run(f"create mailbox {name}", self._createSync, name, specialUse)

    def _lockedChange(self, name: str, what: str, files: Callable[[], None], after: Callable[[], None]) -> defer.Deferred:
        """
        Run C{files} (which removes or moves mailbox C{name}'s files) as an
        operation on that mailbox holding its dotlock and C{lockf} lock:
        after this process's operations on it, and after another
        program's (mutt, another mailplat process) that holds its locks,
        so that no rewrite under way puts the file back where it was;
        then C{after} on the reactor thread, before any other operation
        on the mailbox.  A name without a file (only children) has no
        locks to take.
        """
        path = self._path(name)
        if not self._isFile(path):

            def both() -> None:
                files()
                after()

            return _run(what, both)

        def work(held: Optional[_Held]) -> Tuple[None, bool]:
            files()
            return None, False

        return self._store._mailboxAt(name, path)._op(what, work, exclusive=True).addCallback(lambda _: after())

    def deleteMailbox(self, name: str) -> defer.Deferred:
        """
        Delete a mailbox (see L{IAccount.deleteMailbox}), under its locks
        (L{_underLocks}).
        """
        what = f"delete mailbox {name}"
        try:
            name = validateMailboxName(name)
            self._checkExists()
        except BaseException:
            return defer.fail().addErrback(_asStoreError, what)
        if name == "INBOX":
            return _run(what, self._deleteSync, name)
        return self._lockedChange(name, what, lambda: self._deleteFiles(name), lambda: self._forgetMailbox(name))

    def renameMailbox(self, old: str, new: str) -> defer.Deferred:
        """
        Rename a mailbox with its children (see L{IAccount.renameMailbox}).
        """
        try:
            old, new = self._renameChecks(old, new)
        except BaseException:
            return defer.fail().addErrback(_asStoreError, f"rename mailbox {old}")
        if old == "INBOX":
            return defer.maybeDeferred(self._renameInbox, new).addErrback(_asStoreError, "rename INBOX")
        return self._lockedChange(old, f"rename mailbox {old}", lambda: self._renameFiles(old, new),
                                  lambda: self._renamed(old, new))



# The store.


@implementer(IStore, IStoreACL)
class MboxStore(SharedIndex, AccountTree):
    """
    Accounts kept as mbox files under one root directory.

    @ivar root: the absolute root directory.
    """

    def __init__(self, root: str, clock: Optional[IReactorTime] = None) -> None:
        """
        @param root: the root directory (it must exist).
        @param clock: what waits between tries of a busy lock; the global
            reactor when not given.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.root = os.path.abspath(root)
        self._clock = clock
        self._mailboxes: Dict[str, MboxMailbox] = {}
        # The store's own threads (started at the first file operation):
        # many big rewrites at once wait for each other here, not in the
        # reactor's pool, which the queue's writes and name lookups need.
        self._threads = LazyThreadPool(POOL_SIZE, f"mbox:{self.root}", clock)

    # -- the mailbox cache: one object per file

    def _inThread(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """
        C{f(*args)} in the store's thread pool (at once with a clock that
        runs no threads); a Deferred of its result.
        """
        if IReactorThreads.providedBy(self._clock):
            pool = self._threads.get()
            assert pool is not None
            return threads.deferToThreadPool(self._clock, pool, f, *args)
        return defer.maybeDeferred(f, *args)

    def _mailboxAt(self, name: str, path: str) -> MboxMailbox:
        mailbox = self._mailboxes.get(path)
        if mailbox is None or mailbox._deleted:
            mailbox = self._mailboxes[path] = MboxMailbox(self, name, path)
        return mailbox

    def _dropMailbox(self, path: str) -> None:
        mailbox = self._mailboxes.pop(path, None)
        if mailbox is not None:
            mailbox._forget()

    def _movedTree(self, oldPath: str, oldName: str, newPath: str, newName: str) -> None:
        """
        A mailbox and its children moved from C{oldPath} to C{newPath}.
        """
        prefix = oldPath + CHILDREN_SUFFIX + os.sep
        for path in list(self._mailboxes):
            if path == oldPath or path.startswith(prefix):
                mailbox = self._mailboxes.pop(path)
                mailbox.path = newPath + path[len(oldPath):]
                mailbox.name = renamedName(mailbox.name, oldName, newName) or mailbox.name
                self._mailboxes[mailbox.path] = mailbox

    def _dropUnder(self, home: str) -> None:
        prefix = home + os.sep
        for path in [p for p in self._mailboxes if p.startswith(prefix)]:
            self._dropMailbox(path)

    # -- blocking work

    def _getAccountSync(self, address: str, create: bool) -> MboxAccount:
        home = _accountPath(self.root, address)
        account = MboxAccount(self, address, home)
        inbox = os.path.join(home, INBOX_FILE)
        if os.path.isfile(inbox):
            return account
        if not create:
            raise NoSuchAccount(f"No account {address}")
        os.makedirs(os.path.join(home, MAIL_DIR), exist_ok=True)
        for name, _ in DEFAULT_MAILBOXES:
            if not os.path.isfile(account._path(name)):
                _createMbox(account._path(name))
        account._writeSpecialUses(dict(DEFAULT_MAILBOXES))
        account._writeSubscriptions({"INBOX"} | {name for name, _ in DEFAULT_MAILBOXES})
        # The inbox comes last: an account whose inbox exists is complete.
        _createMbox(inbox)
        _fsyncDirectory(os.path.dirname(home))
        return account

    def _isAccountHome(self, home: str) -> bool:
        return os.path.isfile(os.path.join(home, INBOX_FILE))

    def _deleteAccountSync(self, address: str) -> None:
        home = _accountPath(self.root, address)
        if not os.path.isfile(os.path.join(home, INBOX_FILE)):
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
                return os.path.isfile(os.path.join(_accountPath(self.root, address), INBOX_FILE))
            except NoSuchAccount:
                return False

        return _run(f"look up the account {address}", check)

    def deleteAccount(self, address: str) -> defer.Deferred:
        """
        Remove an account and all its mail (see L{IStore.deleteAccount}).
        """
        return _run(f"delete the account {address}", self._deleteAccountSync, address)

    def close(self) -> defer.Deferred:
        """
        Forget the cached mailboxes and stop the thread pool (after the
        file work under way); no file stays open between calls (a lock
        taken by L{MboxMailbox.lockExclusive} is released by its own
        callable).
        """
        self._mailboxes.clear()
        self._threads.stop()
        return defer.succeed(None)


@implementer(IStoreFactory, IPlugin)
class MboxStoreFactory:
    """
    The C{mbox} store plugin: C{--store mbox[:ROOT]}.
    """

    storeName = "mbox"
    storeHelp = (
        "Keeps each mailbox in one mbox file (mboxrd, dotlock and fcntl locking,"
        " X-UID/Status headers), ROOT/<domain>/<localpart>/inbox and .../mail/,"
        " that mutt, procmail and Dovecot can use too."
    )
    argStringFormat = "Optional root directory; <data-dir>/mbox when not given."

    def makeStore(self, argstring: str, dataDir: str) -> MboxStore:
        """
        Make the store rooted at C{argstring} or C{<dataDir>/mbox}, making
        the directory if needed.

        @raise ConfigError: the root cannot be made or written.
        """
        root = argstring or os.path.join(dataDir, "mbox")
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"store 'mbox': cannot use root directory {root!r}: {e.strerror or e}")
        if not os.path.isdir(root):
            raise ConfigError(f"store 'mbox': root {root!r} is not a directory")
        if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError(f"store 'mbox': root directory {root!r} is not readable and writable by this user")
        return MboxStore(root)
