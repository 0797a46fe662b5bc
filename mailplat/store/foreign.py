"""
Read-only readers of Maildir trees written by Dovecot or Courier, the
sources of C{mailplat migrate --from dovecot-maildir:PATH} and
C{--from courier-maildir:PATH}.

They implement only the reading side of the store contract (the methods
L{mailplat.migrate} calls on a source: C{listAccounts}, C{getAccount},
C{listMailboxes}, C{getMailbox}, C{listSubscriptions}, C{status},
C{listMessages}, C{openMessage}, C{close}); nothing is ever written under
PATH, which is one user's Maildir (the directory holding C{cur/},
C{new/} and the C{.Folder} directories).

What is read, so that clients keep their caches:

  - Dovecot: C{dovecot-uidlist} (versions 1 and 3: a header
    C{3 V<uidvalidity> N<uidnext> ...}, then C{<uid> [<ext>...] :<file>}
    lines; version 1 C{1 <uidvalidity> <uidnext>} and C{<uid> <file>}),
    C{dovecot-keywords} (C{<index> <keyword>}: letter C{a}+index in the
    file names), C{subscriptions} (version 2 with tabs between levels, or
    version 1 names with C{.} or C{/} between levels).
  - Courier: C{courierimapuiddb} (also read as C{courierimapuidlist}:
    C{1 <uidvalidity> <uidnext>} then C{<uid> <file>} lines, the format
    Dovecot's version 1 shares), C{courierimapsubscribed} (C{INBOX.a.b}),
    and the keywords in C{courierimapkeywords/} (see
    L{readCourierKeywords}).

Neither keeps modseqs anywhere but in a binary index (Dovecot's
C{dovecot.index} and its transaction log; Courier has none), which is not
read: the readers report a HIGHESTMODSEQ and modseqs of 0 (RFC 7162's
NOMODSEQ), and the migration gives the messages new modseqs above any
such a client may hold (L{mailplat.migrate.UNKNOWN_MODSEQ_FLOOR}).

Folder directories are Maildir++ (C{.a.b} is C{a/b}), each level in
modified UTF-7.  A message file the uidlist does not name (delivered after
the last IMAP session) gets the next UIDs in the order of the names, as
Dovecot would give them.  The internal date is the file's mtime; flags
come from the C{:2,} info letters.
"""

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Dict, FrozenSet, List, Optional, Set, Tuple

from twisted.internet import defer

from mailplat import mutf7
from mailplat.errors import ConfigError, MailboxError, NoSuchAccount, NoSuchMailbox, NoSuchMessage
from mailplat.mailbox import MailboxStatus, MessageInfo, buildListing, validateMailboxName
from mailplat.store.maildir import CHUNK, _WireReader, _wireSize, _wireSizeFromName

_LETTER_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}

#: Courier-IMAP's keyword directory in every maildir (KEYWORDDIR in
#: courier-libs maildir/maildirwatch.h).
COURIER_KEYWORDS = "courierimapkeywords"

# Characters an IMAP atom cannot hold (RFC 3501 atom-specials, beyond
# controls and space).
_ATOM_SPECIALS = set('(){%*"\\]')

DOVECOT = "dovecot"
COURIER = "courier"


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def _decodeLevel(level: str) -> str:
    try:
        return mutf7.decode(level)
    except ValueError:
        return level


def _folderName(directory: str) -> Optional[str]:
    """
    The mailbox name of a Maildir++ folder directory (C{.a.b}), or L{None}.
    """
    if not directory.startswith(".") or directory in (".", ".."):
        return None
    levels = [_decodeLevel(level) for level in directory[1:].split(".")]
    try:
        name = validateMailboxName("/".join(levels))
    except MailboxError:
        return None
    return None if name == "INBOX" else name


def _isKeyword(name: str) -> bool:
    """
    Whether C{name} can be an IMAP keyword (an atom not starting with a
    backslash).
    """
    return bool(name) and all("!" <= c <= "~" and c not in _ATOM_SPECIALS for c in name)


def _readLines(path: str) -> Optional[List[str]]:
    """
    The lines of a file without their line ends, or L{None} when it cannot
    be read (gone meanwhile, or a directory).
    """
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            return f.read().decode("utf-8", "replace").split("\n")
    except OSError:
        return None


def readCourierKeywords(maildir: str) -> Dict[str, FrozenSet[str]]:
    """
    The keywords Courier-IMAP keeps for the messages of C{maildir}, by the
    message file's base name (its name before C{:}).

    The format, as courier-libs writes and reads it (C{maildir/
    maildirkeywords2.c}: C{maildir_kwExport}/C{maildir_kwImport} for the
    list, C{maildir_kwSaveCommon}, C{scan_updates} and C{read_updates} for
    the update files; the directory is C{KEYWORDDIR} of
    C{maildir/maildirwatch.h}), all in C{courierimapkeywords/}:

      - C{:list}: the keyword names, one a line, then an empty line, then
        one line per message with keywords, C{<base name>:<i> <i> ...},
        each C{<i>} the index (from 0) of a name above.
      - update files, each holding a message's whole keyword set (one name
        a line, up to an empty line; none at all clears them), which
        replace what C{:list} says: C{.<n>.<base name>} (the highest C{n}
        wins) and C{<base name>} (newer than any C{.<n>.} one).  Other
        names starting with C{:} and C{.tmp.} scratch files are not
        updates.

    A name that cannot be an IMAP keyword is left out.  No directory, or
    an unreadable file, gives no keywords.
    """
    directory = os.path.join(maildir, COURIER_KEYWORDS)
    keywords: Dict[str, FrozenSet[str]] = {}
    lines = _readLines(os.path.join(directory, ":list"))
    if lines is not None:
        names: List[str] = []
        it = iter(lines)
        for line in it:
            if not line:
                break
            names.append(line)
        for line in it:
            base, colon, indexes = line.partition(":")
            if not colon:
                continue
            chosen = set()
            for index in indexes.split(" "):
                if index.isdigit() and int(index) < len(names) and _isKeyword(names[int(index)]):
                    chosen.add(names[int(index)])
            keywords[base] = frozenset(chosen)
    # The newest update of each message: (rank, file name); a plain
    # <base name> ranks above every counter.
    newest: Dict[str, Tuple[float, str]] = {}
    try:
        entries = os.listdir(directory)
    except OSError:
        entries = []
    for entry in entries:
        if entry.startswith(":"):
            continue
        if entry.startswith("."):
            counter, dot, base = entry[1:].partition(".")
            if not counter.isdigit() or not dot or not base:
                continue  # .tmp.<time>.<name> scratch files, or not Courier's
            rank = float(int(counter))
        else:
            base, rank = entry, float("inf")
        if base not in newest or rank > newest[base][0]:
            newest[base] = (rank, entry)
    for base, (_, entry) in newest.items():
        update = _readLines(os.path.join(directory, entry))
        if update is None:
            continue
        chosen = set()
        for line in update:
            if not line:
                break
            if _isKeyword(line):
                chosen.add(line)
        keywords[base] = frozenset(chosen)
    return {base: kws for base, kws in keywords.items() if kws}


def parseUidlist(text: str) -> Tuple[Optional[int], int, Dict[str, int]]:
    """
    Read a C{dovecot-uidlist} (version 1 or 3) or a Courier
    C{courierimapuiddb}.

    @return: UIDVALIDITY (L{None} when the header cannot be read), UIDNEXT
        and the UIDs by file base name (the name before C{:}).
    """
    lines = text.split("\n")
    header = lines[0].split()
    validity: Optional[int] = None
    uidNext = 1
    if len(header) >= 3 and header[0] == "1" and header[1].isdigit() and header[2].isdigit():
        validity, uidNext = int(header[1]), int(header[2])
    elif header and header[0] in ("2", "3"):
        fields = {f[0]: f[1:] for f in header[1:] if f}
        if fields.get("V", "").isdigit():
            validity = int(fields["V"])
        if fields.get("N", "").isdigit():
            uidNext = int(fields["N"])
    uids: Dict[str, int] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        uid, _, rest = line.partition(" ")
        if not uid.isdigit():
            continue
        if " :" in " " + rest:
            filename = (" " + rest).split(" :", 1)[1]
        else:
            filename = rest.split(" ")[-1]
        filename = filename.strip().split(":", 1)[0]
        if filename:
            uids[filename] = int(uid)
            uidNext = max(uidNext, int(uid) + 1)
    return validity, uidNext, uids


@dataclass(frozen=True)
class _File:
    uid: int
    path: str
    flags: FrozenSet[str]
    internalDate: float
    size: int


class ForeignMailbox:
    """
    One Maildir of a foreign tree, read once when opened.
    """

    def __init__(self, name: str, path: str, kind: str) -> None:
        self.name = name
        self.path = path
        self.kind = kind
        self._files: Dict[int, _File] = {}
        self.uidValidity = 1
        self._uidNext = 1
        self._load()

    def _keywords(self) -> List[str]:
        keywords: List[str] = []
        if self.kind != DOVECOT:
            return keywords
        for line in (_read(os.path.join(self.path, "dovecot-keywords")) or "").splitlines():
            index, _, keyword = line.partition(" ")
            if index.isdigit() and keyword and int(index) < 26:
                while len(keywords) <= int(index):
                    keywords.append("")
                keywords[int(index)] = keyword.strip()
        return keywords

    def _uidlist(self) -> Optional[str]:
        names = ["dovecot-uidlist"] if self.kind == DOVECOT else ["courierimapuiddb", "courierimapuidlist"]
        for name in names:
            text = _read(os.path.join(self.path, name))
            if text is not None:
                return text
        return None

    def _load(self) -> None:
        keywords = self._keywords()
        courier = readCourierKeywords(self.path) if self.kind == COURIER else {}
        text = self._uidlist()
        validity, uidNext, uids = parseUidlist(text) if text is not None else (None, 1, {})
        if validity is None or not 1 <= validity <= 2**32 - 1:
            # No usable uidlist: the messages are numbered afresh, under a
            # UIDVALIDITY taken from the directory, as a new index would.
            validity = int(os.stat(self.path).st_mtime) % (2**32 - 1) or 1
            uids = {}
        found: List[Tuple[str, str, str]] = []
        for sub in ("cur", "new"):
            directory = os.path.join(self.path, sub)
            if not os.path.isdir(directory):
                continue
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue
                    found.append((entry.name.split(":", 1)[0], sub, entry.name))
        numbered: List[Tuple[int, str, str]] = []
        fresh: List[Tuple[str, str, str]] = []
        for base, sub, filename in sorted(found):
            if base in uids:
                numbered.append((uids[base], sub, filename))
            else:
                fresh.append((base, sub, filename))
        for base, sub, filename in fresh:
            numbered.append((uidNext, sub, filename))
            uidNext += 1
        for uid, sub, filename in numbered:
            path = os.path.join(self.path, sub, filename)
            st = os.stat(path)
            size = _wireSizeFromName(filename)
            if size is None:
                size = _wireSize(path)
            flags = self._flags(filename, keywords) | courier.get(filename.split(":", 1)[0], frozenset())
            self._files[uid] = _File(uid, path, flags, st.st_mtime, size)
        self.uidValidity = validity
        self._uidNext = uidNext

    def _flags(self, filename: str, keywords: List[str]) -> FrozenSet[str]:
        _, sep, info = filename.partition(":2,")
        flags: Set[str] = set()
        for letter in info if sep else "":
            if letter in _LETTER_FLAGS:
                flags.add(_LETTER_FLAGS[letter])
            elif "a" <= letter <= "z":
                index = ord(letter) - ord("a")
                if index < len(keywords) and keywords[index]:
                    flags.add(keywords[index])
        return frozenset(flags)

    def status(self) -> defer.Deferred:
        """
        Counts of the mailbox as read (no message is \\Recent; HIGHESTMODSEQ
        0: no modseqs are known).
        """
        files = list(self._files.values())
        return defer.succeed(MailboxStatus(
            messages=len(files),
            recent=0,
            unseen=sum(1 for f in files if "\\Seen" not in f.flags),
            uidNext=self._uidNext,
            uidValidity=self.uidValidity,
            highestModseq=0,
            size=sum(f.size for f in files),
        ))

    def listMessages(self) -> defer.Deferred:
        """
        Every message, in UID order (modseq 0: not known).
        """
        return defer.succeed([
            MessageInfo(f.uid, f.flags, f.internalDate, f.size, 0) for _, f in sorted(self._files.items())
        ])

    def openMessage(self, uid: int) -> defer.Deferred:
        """
        The message in its wire (CRLF) form.
        """
        entry = self._files.get(uid)
        if entry is None:
            return defer.fail(NoSuchMessage(f"No message with UID {uid} in {self.name}"))
        try:
            f = os.fdopen(os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
        except OSError as e:
            return defer.fail(NoSuchMessage(f"Message UID {uid} in {self.name} cannot be read: {e.strerror}"))
        reader: BinaryIO = io.BufferedReader(_WireReader(f), CHUNK)
        return defer.succeed(reader)


class ForeignAccount:
    """
    A foreign Maildir++ tree, read as one account.
    """

    def __init__(self, address: str, path: str, kind: str) -> None:
        self.address = address
        self.path = path
        self.kind = kind

    def _folders(self) -> Dict[str, str]:
        folders = {"INBOX": self.path}
        for entry in os.scandir(self.path):
            if not entry.is_dir(follow_symlinks=False):
                continue
            name = _folderName(entry.name)
            if name is not None and os.path.isdir(os.path.join(entry.path, "cur")):
                folders[name] = entry.path
        return folders

    def listMailboxes(self) -> defer.Deferred:
        """
        The folders found; superiors without a directory are \\Noselect.
        """
        return defer.succeed(buildListing({name: None for name in self._folders()}))

    def getMailbox(self, name: str) -> defer.Deferred:
        """
        The folder C{name}, read now.
        """
        try:
            name = validateMailboxName(name)
        except MailboxError as e:
            return defer.fail(e)
        path = self._folders().get(name)
        if path is None:
            return defer.fail(NoSuchMailbox(f"Mailbox {name} does not exist in {self.path}"))
        return defer.succeed(ForeignMailbox(name, path, self.kind))

    def listSubscriptions(self) -> defer.Deferred:
        """
        The subscribed names, sorted.
        """
        names: Set[str] = set()
        if self.kind == DOVECOT:
            text = _read(os.path.join(self.path, "subscriptions")) or ""
            lines = text.split("\n")
            if text.startswith("V\t2\n"):
                candidates = ["/".join(line.split("\t")) for line in lines[2:] if line]
            else:
                candidates = [line if "/" in line else line.replace(".", "/") for line in lines if line.strip()]
        else:
            text = _read(os.path.join(self.path, "courierimapsubscribed")) or ""
            candidates = []
            for line in text.split("\n"):
                line = line.strip()
                if not line:
                    continue
                if line.upper().startswith("INBOX."):
                    line = line[len("INBOX."):]
                candidates.append(line.replace(".", "/"))
        for candidate in candidates:
            try:
                names.add(validateMailboxName("/".join(_decodeLevel(level) for level in candidate.split("/"))))
            except MailboxError:
                continue
        return defer.succeed(sorted(names))


class ForeignMaildirStore:
    """
    One user's Dovecot or Courier Maildir, read-only, seen as the account
    C{address}.
    """

    def __init__(self, path: str, kind: str, address: Optional[str] = None) -> None:
        """
        @param kind: L{DOVECOT} or L{COURIER}.
        @param address: the account the tree is read as; L{None} until
            L{forAddress} names it.
        @raise ConfigError: C{path} is not a Maildir.
        """
        if kind not in (DOVECOT, COURIER):
            raise ConfigError(f"unknown foreign Maildir kind {kind!r}")
        if not os.path.isdir(os.path.join(path, "cur")):
            raise ConfigError(f"{kind}-maildir: {path!r} is not a Maildir (no cur/ directory)")
        self.path = os.path.abspath(path)
        self.kind = kind
        self.address = address

    def listAccounts(self) -> defer.Deferred:
        """
        The one account, when its address is known.
        """
        return defer.succeed([self.address] if self.address else [])

    def hasAccount(self, address: str) -> defer.Deferred:
        return defer.succeed(address == self.address)

    def getAccount(self, address: str, create: bool = False) -> defer.Deferred:
        """
        The tree as the account C{address}; C{create} is refused (read-only).
        """
        if address != self.address:
            return defer.fail(NoSuchAccount(f"{self.path} is read as {self.address}, not {address}"))
        return defer.succeed(ForeignAccount(address, self.path, self.kind))

    def close(self) -> defer.Deferred:
        return defer.succeed(None)


def parseForeignSpec(spec: str, address: Optional[str]) -> Optional[ForeignMaildirStore]:
    """
    The reader named by C{dovecot-maildir:PATH} or C{courier-maildir:PATH},
    or L{None} for any other store spec.

    @raise ConfigError: no PATH, not a Maildir, or no address to read it as.
    """
    name, _, path = spec.partition(":")
    if name not in ("dovecot-maildir", "courier-maildir"):
        return None
    if not path:
        raise ConfigError(f"{name} needs a path: {name}:PATH (one user's Maildir)")
    if not address:
        raise ConfigError(f"{name} holds one user's mail: name the account with --user ADDRESS")
    return ForeignMaildirStore(path, DOVECOT if name == "dovecot-maildir" else COURIER, address)
