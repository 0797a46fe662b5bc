"""
What FETCH, SORT and THREAD need from a message, computed once per
message and kept in a bounded LRU shared by every session of a factory,
so that repeated C{FETCH 1:* (ENVELOPE)} or SORT on a big mailbox does not
re-read and re-parse every message (DESIGN.md, "Parse once").

Entries are keyed by C{(account address, mailbox name, UIDVALIDITY, UID)}:
a message's content never changes under one key (UIDs are never reused
within a UIDVALIDITY), so entries never go stale; flags and modseq are not
cached here (they come from the store's L{IMessageInfo}).

With a L{MessageIndex <mailplat.imap.index.MessageIndex>} the cache has a
second level on disk: what L{MessageCache.remember} computes is also
written there (with the message's searchable text), and
L{MessageCache.load} brings summaries back from it, so a restarted server
answers ENVELOPE, SORT and SEARCH without reading the messages again.
"""

import email.utils
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from twisted.internet import defer

from mailplat.imap.search import FoldedValues, searchText
from mailplat.imap.structure import (
    ParsedMessage,
    addressList,
    decodeHeaderText,
    fieldValues,
    headerEnvelope,
    parseMessage,
)

__all__ = ["MessageSummary", "HeaderSummary", "MessageCache", "summarize", "summarizeHeader", "baseSubject", "COLUMN_FIELDS"]

CacheKey = Tuple[str, str, int, int]

_MSGID = re.compile(r"<([^<>\s]+)>")


@dataclass(frozen=True)
class MessageSummary:
    """
    The parsed answers about one message.

    @ivar envelope: ENVELOPE in wire form.
    @ivar bodyStructure: BODYSTRUCTURE in wire form; L{None} in a summary
        made from the header alone (L{summarizeHeader}).
    @ivar body: BODY (non-extensible structure) in wire form; L{None} with
        C{bodyStructure}.
    @ivar baseSubject: the RFC 5256 base subject, case-folded.
    @ivar isReply: the subject had a reply/forward leader or trailer.
    @ivar sentDate: the Date: field as a POSIX timestamp, L{None} when
        absent or unparseable.
    @ivar fromMailbox: local part of the first From address, case-folded
        (RFC 5256 FROM sort key); C{""} when there is none.
    @ivar toMailbox: likewise for To.
    @ivar ccMailbox: likewise for Cc.
    @ivar messageId: the Message-ID without brackets, or L{None}.
    @ivar references: the References ids (or the first In-Reply-To id).
    @ivar headers: the top-level header fields as C{(lower-case name,
        unfolded RFC 2047-decoded value)} pairs in order, for header
        SEARCH without reading the message; when the header is larger than
        L{HEADER_BUDGET} only the fields of L{SEARCH_FIELDS} are kept.
    @ivar allHeaders: whether C{headers} holds every field.
    """

    envelope: bytes
    bodyStructure: Optional[bytes]
    body: Optional[bytes]
    baseSubject: str
    isReply: bool
    sentDate: Optional[float]
    fromMailbox: str
    toMailbox: str
    ccMailbox: str
    messageId: Optional[str]
    references: Tuple[str, ...]
    headers: Tuple[Tuple[str, str], ...] = ()
    allHeaders: bool = False

    def headerValues(self, name: str) -> Optional[List[str]]:
        """
        The decoded values of the fields C{name} (lower-case), as
        L{ParsedMessage.headerValues} gives them, or L{None} when this
        summary did not keep that field (the caller reads the message).
        """
        if not self.allHeaders and name not in SEARCH_FIELDS:
            return None
        return [value for field, value in self.headers if field == name]


# The fields SEARCH FROM/TO/CC/BCC/SUBJECT look at, always kept.
SEARCH_FIELDS = frozenset(["from", "to", "cc", "bcc", "subject"])
# The header fields whose search columns (L{MessageCache.column}) are
# filled together: a header search that scans a message's header block
# for one field fills all of these from the same scan, so a later search
# on another of them (a client's SUBJECT after FROM, HEADER Message-ID
# when threading) reads and scans nothing.
COLUMN_FIELDS = ("from", "to", "cc", "bcc", "subject", "message-id", "in-reply-to", "references", "list-id")
# Decoded header text (octets of UTF-8) kept whole per summary; above
# this only SEARCH_FIELDS are kept, so one message with a huge header
# does not crowd the cache.
HEADER_BUDGET = 1024


def _decodedHeaders(parsed: ParsedMessage) -> Tuple[Tuple[Tuple[str, str], ...], bool]:
    """
    The decoded top-level fields of C{parsed} and whether all were kept.
    """
    fields = []
    total = 0
    for f in parsed._root.fields:
        value = decodeHeaderText(f.value().decode("utf-8", errors="replace"))
        fields.append((f.name, value))
        total += len(f.name) + len(value)
    if total <= HEADER_BUDGET:
        return tuple(fields), True
    return tuple((n, v) for n, v in fields if n in SEARCH_FIELDS), False


_TRAILER = re.compile(r"(?:\s|\(fwd\))+\Z", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(r"\A(?:" + _BLOB + r")*(?:re|fwd?)\s*(?:" + _BLOB + r")?:\s*", re.IGNORECASE)
_LEADING_BLOB = re.compile(r"\A" + _BLOB)


def baseSubject(subject: str) -> Tuple[str, bool]:
    """
    The base subject of RFC 5256 2.1 and whether the subject was a reply
    or forward (a leader or trailer was removed).

    @param subject: the decoded Subject: value.
    @return: C{(base, isReply)}; C{base} is case-folded for comparison.
    """
    text = re.sub(r"\s+", " ", subject).strip()
    isReply = False
    while True:
        # (2) trailers, repeatedly.
        stripped = _TRAILER.sub("", text)
        if stripped != text:
            isReply = isReply or "(fwd)" in text[len(stripped):].lower()
            text = stripped
        # (3)-(4) leaders and blobs, repeatedly.
        while True:
            m = _LEADER.match(text)
            if m is not None:
                text = text[m.end():]
                isReply = True
                continue
            m = _LEADING_BLOB.match(text)
            if m is not None and text[m.end():]:
                text = text[m.end():]
                continue
            break
        # (6) [fwd: ...] wrappers.
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1].strip()
            isReply = True
            continue
        break
    return text.casefold(), isReply


def _firstMailbox(raw: Optional[bytes]) -> str:
    if raw is None:
        return ""
    for address in addressList(raw):
        if address.mailbox is not None and address.host is not None:
            return address.mailbox.casefold()
    return ""


def _ids(raw: Optional[bytes]) -> Tuple[str, ...]:
    if raw is None:
        return ()
    return tuple(_MSGID.findall(raw.decode("latin-1")))


class HeaderSummary:
    """
    What a message's header block alone (as L{headerEnd
    <mailplat.imap.structure.headerEnd>} delimits it) answers, worked out
    when asked: the ENVELOPE by itself (all a first C{FETCH 1:*
    (ENVELOPE)} of a mailbox nobody summarised needs), a header field's
    values by themselves, and the rest of a L{MessageSummary} (sort and
    thread keys) the first time one of them is asked for (L{full}).  It
    has no body structure: C{bodyStructure} and C{body} are L{None}.  It
    lives in memory only (the message index keeps whole summaries).
    """

    __slots__ = ("header", "_envelope", "_full")

    bodyStructure = None
    body = None

    def __init__(self, header: bytes) -> None:
        self.header = header
        self._envelope: Optional[bytes] = None
        self._full: Optional[MessageSummary] = None

    @property
    def envelope(self) -> bytes:
        """
        ENVELOPE in wire form.
        """
        if self._envelope is None:
            self._envelope = self._full.envelope if self._full is not None else headerEnvelope(self.header)
        return self._envelope

    def full(self) -> MessageSummary:
        """
        The L{MessageSummary} of the header (L{summarizeHeader}), made
        once.
        """
        if self._full is None:
            self._full = summarizeHeader(self.header, self._envelope)
        return self._full

    def headerValues(self, name: str) -> List[str]:
        """
        The decoded values of the top-level fields C{name} (lower case),
        as L{MessageSummary.headerValues} gives them (every field is
        here).
        """
        return fieldValues(self.header, name)

    def __getattr__(self, name: str) -> Any:
        # The other MessageSummary attributes (sort and thread keys).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.full(), name)


#: What the cache holds for a message.
Summary = Union[MessageSummary, HeaderSummary]


def summarizeHeader(header: bytes, envelope: Optional[bytes] = None) -> MessageSummary:
    """
    The L{MessageSummary} of a message from its header block alone (see
    L{headerEnd<mailplat.imap.structure.headerEnd>}): everything but the
    body structure (C{bodyStructure} and C{body} are L{None}).

    @param envelope: the header's ENVELOPE when already worked out.
    """
    return summarize(parseMessage(header + b"\r\n"), structure=False, envelope=envelope)


def summarize(parsed: ParsedMessage, structure: bool = True, envelope: Optional[bytes] = None) -> MessageSummary:
    """
    Compute a message's L{MessageSummary} from its parse.

    @param structure: compute the body structure too (else it is
        L{None}: the parse holds the header only).
    @param envelope: the message's ENVELOPE when already worked out.
    """
    root = parsed._root
    subjectRaw = root.fieldValue("subject")
    subject = decodeHeaderText(subjectRaw.decode("utf-8", errors="replace")) if subjectRaw else ""
    base, isReply = baseSubject(subject)
    sent: Optional[float] = None
    date = root.fieldValue("date")
    if date is not None:
        try:
            parts = email.utils.parsedate_tz(date.decode("latin-1"))
            if parts is not None:
                sent = float(email.utils.mktime_tz(parts))
        except (ValueError, TypeError, IndexError, OverflowError):
            sent = None
    ids = _ids(root.fieldValue("message-id"))
    references = _ids(root.fieldValue("references"))
    if not references:
        references = _ids(root.fieldValue("in-reply-to"))[:1]
    headers, allHeaders = _decodedHeaders(parsed)
    return MessageSummary(
        envelope=parsed.envelope() if envelope is None else envelope,
        bodyStructure=parsed.bodyStructure(True) if structure else None,
        body=parsed.bodyStructure(False) if structure else None,
        baseSubject=base,
        isReply=isReply,
        sentDate=sent,
        fromMailbox=_firstMailbox(root.fieldValue("from")),
        toMailbox=_firstMailbox(root.fieldValue("to")),
        ccMailbox=_firstMailbox(root.fieldValue("cc")),
        messageId=ids[0] if ids else None,
        references=references,
        headers=headers,
        allHeaders=allHeaders,
    )


class MessageCache:
    """
    A bounded least-recently-used map from L{CacheKey} to
    L{MessageSummary}.

    @ivar maxEntries: how many summaries are kept.
    @ivar index: the persistent second level, or L{None}.
    @ivar hits: lookups answered.
    @ivar misses: lookups not answered.
    """

    def __init__(self, maxEntries: int = 100000, index: Optional[Any] = None) -> None:
        """
        @param maxEntries: the bound; a summary is a few hundred octets, so
            the default holds about 100,000 messages in some tens of MB.
        @param index: the L{MessageIndex <mailplat.imap.index.MessageIndex>}
            kept behind this cache, or L{None} for memory only.
        """
        self.maxEntries = maxEntries
        self.index = index
        self._entries: "OrderedDict[CacheKey, Summary]" = OrderedDict()
        self._headers: "OrderedDict[CacheKey, bytes]" = OrderedDict()
        self._columns: "OrderedDict[Tuple[str, str, int, str], Dict[int, FoldedValues]]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Optional[Summary]:
        """
        The summary kept for C{key}, or L{None}.
        """
        summary = self._entries.get(key)
        if summary is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return summary

    def peek(self, key: CacheKey) -> Optional[Summary]:
        """
        The summary kept for C{key}, or L{None}, without counting the
        lookup or making the entry recently used (for a pass over a whole
        mailbox, which says nothing about which entries matter).
        """
        return self._entries.get(key)

    def put(self, key: CacheKey, summary: Summary) -> None:
        """
        Keep C{summary}, dropping the least recently used beyond the bound.
        A summary from the header alone (L{HeaderSummary}) stays in memory
        only: the message index keeps whole summaries (L{remember}).
        """
        self._entries[key] = summary
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxEntries:
            self._entries.popitem(last=False)

    def header(self, key: CacheKey) -> Optional[bytes]:
        """
        The header block kept for C{key} by L{keepHeader}, or L{None}.
        """
        return self._headers.get(key)

    def keepHeader(self, key: CacheKey, header: bytes) -> None:
        """
        Keep the header block (the top-level fields, as
        L{headerEnd<mailplat.imap.structure.headerEnd>} delimits them) of
        a message read for a header search, so that a search on another
        field does not read the message again; at most C{maxEntries} are
        kept, the least recently kept dropped first.
        """
        self._headers[key] = header
        self._headers.move_to_end(key)
        while len(self._headers) > self.maxEntries:
            self._headers.popitem(last=False)

    def column(self, prefix: Tuple[str, str, int], name: str) -> Dict[int, FoldedValues]:
        """
        The case-folded decoded values of the header field C{name}
        (lower case) of the messages of the mailbox C{prefix} (account,
        mailbox, UIDVALIDITY), by UID, as far as they are known: header
        SEARCH matches in these without a lookup per message in the
        summaries, and adds the UIDs it lacked.  A message's values never
        change under its key, so entries never go stale.  When a column is
        made and the columns hold more values in all than C{maxEntries}
        times two more than the fields filled together
        (L{COLUMN_FIELDS}), the least recently used are dropped.
        """
        key = prefix + (name,)
        column = self._columns.get(key)
        if column is None:
            column = self._columns[key] = {}
            total = sum(len(c) for c in self._columns.values())
            while total > (len(COLUMN_FIELDS) + 2) * self.maxEntries and len(self._columns) > 1:
                total -= len(self._columns.popitem(last=False)[1])
        self._columns.move_to_end(key)
        return column

    def remember(self, key: CacheKey, parsed: ParsedMessage) -> MessageSummary:
        """
        Summarize a message just parsed, keep the summary, and queue it
        with the message's searchable text for the index (if any).

        @return: the summary.
        """
        summary = summarize(parsed)
        self.put(key, summary)
        if self.index is not None:
            self.index.add(key, summary, searchText(parsed))
        return summary

    def load(self, keys: Sequence[CacheKey]) -> "defer.Deferred[None]":
        """
        Bring the summaries of C{keys} not in memory back from the index
        (those it has); fires when they are in the cache.  Without an
        index, fires at once.
        """
        if self.index is None:
            return defer.succeed(None)
        groups: dict = {}
        for key in keys:
            if key not in self._entries:
                groups.setdefault(key[:3], []).append(key[3])
        if not groups:
            return defer.succeed(None)
        return self._load(groups)

    @defer.inlineCallbacks
    def _load(self, groups: dict) -> Any:
        assert self.index is not None
        for prefix, uids in groups.items():
            found = yield self.index.summaries(prefix, uids)
            for uid, summary in found.items():
                self.put(prefix + (uid,), summary)

    def copied(self, source: Tuple[str, str, int], target: Tuple[str, str, int], pairs: Iterable[Sequence[int]]) -> None:
        """
        Messages were copied (or moved) from the mailbox C{source} to
        C{target} (each C{(account, mailbox, UIDVALIDITY)}), as C{(source
        UID, target UID)} pairs: the copies get the originals' entries
        here and in the index.
        """
        pairs = [(p[0], p[1]) for p in pairs]
        for old, new in pairs:
            summary = self._entries.get(source + (old,))
            if summary is not None:
                self.put(target + (new,), summary)
            header = self._headers.get(source + (old,))
            if header is not None:
                self.keepHeader(target + (new,), header)
        if self.index is not None and pairs:
            self.index.copy(source, target, pairs)
