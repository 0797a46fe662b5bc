"""
SORT and THREAD (RFC 5256) over message summaries
(L{mailplat.imap.cache.MessageSummary}).

A message here is a L{Item}: its number (sequence number or UID, as the
client asked), its sequence number (the final tie-breaker), its internal
date and size, and its summary.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from mailplat.imap.cache import MessageSummary

__all__ = ["Item", "SORT_KEYS", "sortItems", "threadOrderedSubject", "threadReferences", "formatThreads"]

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO")


@dataclass
class Item:
    """
    One message to sort or thread.
    """

    number: int
    seq: int
    internalDate: float
    size: int
    summary: MessageSummary

    @property
    def sentDate(self) -> float:
        """
        The sent date, or the internal date when there is none (RFC 5256).
        """
        sent = self.summary.sentDate
        return self.internalDate if sent is None else sent


def _key(item: Item, name: str) -> Any:
    if name == "ARRIVAL":
        return item.internalDate
    if name == "CC":
        return item.summary.ccMailbox
    if name == "DATE":
        return item.sentDate
    if name == "FROM":
        return item.summary.fromMailbox
    if name == "SIZE":
        return item.size
    if name == "SUBJECT":
        return item.summary.baseSubject
    return item.summary.toMailbox


def sortItems(items: List[Item], criteria: List[Tuple[str, bool]]) -> List[Item]:
    """
    Sort by C{criteria}: C{(key, reverse)} pairs, most significant first,
    with the sequence number as the last tie-breaker (RFC 5256 3).
    """
    ordered = sorted(items, key=lambda i: i.seq)
    for name, reverse in reversed(criteria):
        ordered.sort(key=lambda i: _key(i, name), reverse=reverse)
    return ordered


def _byDate(items: List[Item]) -> List[Item]:
    return sorted(items, key=lambda i: (i.sentDate, i.seq))


@dataclass(eq=False)
class _Node:
    item: Optional[Item] = None
    parent: Optional["_Node"] = None
    children: List["_Node"] = field(default_factory=list)

    def isAncestorOf(self, other: "_Node") -> bool:
        node: Optional[_Node] = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def adopt(self, child: "_Node") -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def firstDate(self) -> Tuple[float, int]:
        if self.item is not None:
            return (self.item.sentDate, self.item.seq)
        return min((c.firstDate() for c in self.children), default=(0.0, 0))

    def subjectItem(self) -> Optional[Item]:
        if self.item is not None:
            return self.item
        return self.children[0].item if self.children else None


def threadOrderedSubject(items: List[Item]) -> List[_Node]:
    """
    THREAD=ORDEREDSUBJECT: group by base subject; in each group the first
    message by sent date is the parent of all the others.
    """
    groups: Dict[str, List[Item]] = {}
    for item in sorted(items, key=lambda i: (i.summary.baseSubject, i.sentDate, i.seq)):
        groups.setdefault(item.summary.baseSubject, []).append(item)
    roots = []
    for members in groups.values():
        root = _Node(members[0])
        for other in members[1:]:
            root.adopt(_Node(other))
        roots.append(root)
    roots.sort(key=lambda n: n.firstDate())
    return roots


def threadReferences(items: List[Item]) -> List[_Node]:
    """
    THREAD=REFERENCES: the algorithm of RFC 5256 3 (after JWZ).
    """
    table: Dict[str, _Node] = {}
    unique = 0
    for item in sorted(items, key=lambda i: i.seq):
        msgid = item.summary.messageId
        node = table.get(msgid) if msgid else None
        if node is None or node.item is not None:
            if msgid is None or (node is not None and node.item is not None):
                unique += 1
                msgid = f"\x00unique-{unique}"
            node = table.setdefault(msgid, _Node())
        node.item = item
        # (1B) link the References chain.
        previous: Optional[_Node] = None
        for ref in item.summary.references:
            refNode = table.setdefault(ref, _Node())
            if previous is not None and refNode.parent is None and refNode is not previous:
                if not refNode.isAncestorOf(previous):
                    previous.adopt(refNode)
            previous = refNode
        # (1C) the last reference is the message's parent.
        if previous is not None and (previous is node or node.isAncestorOf(previous)):
            previous = None
        if previous is not None:
            previous.adopt(node)
        elif node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    roots = [n for n in table.values() if n.parent is None]
    roots = _prune(roots, top=True)
    roots.sort(key=lambda n: n.firstDate())
    roots = _groupBySubject(roots)
    for root in roots:
        _sortChildren(root)
    roots.sort(key=lambda n: n.firstDate())
    return roots


def _prune(nodes: List[_Node], top: bool) -> List[_Node]:
    """
    (3) drop empty dummies and promote the children of dummies (at the
    top only when there is a single child).
    """
    out: List[_Node] = []
    for node in nodes:
        node.children = _prune(node.children, top=False)
        for child in node.children:
            child.parent = node
        if node.item is None:
            if not node.children:
                continue
            if not top or len(node.children) == 1:
                for child in node.children:
                    child.parent = None
                out.extend(node.children)
                continue
        out.append(node)
    if top:
        for node in out:
            node.parent = None
    return out


def _groupBySubject(roots: List[_Node]) -> List[_Node]:
    """
    (5) gather roots that share a base subject.
    """
    subjects: Dict[str, _Node] = {}
    for root in roots:
        item = root.subjectItem()
        if item is None or not item.summary.baseSubject:
            continue
        subject = item.summary.baseSubject
        old = subjects.get(subject)
        if old is None:
            subjects[subject] = root
            continue
        oldItem = old.subjectItem()
        if (root.item is None and old.item is not None) or (
            oldItem is not None and oldItem.summary.isReply and not item.summary.isReply and root.item is not None
        ):
            subjects[subject] = root
    out: List[_Node] = []
    for root in roots:
        item = root.subjectItem()
        keeper = subjects.get(item.summary.baseSubject) if item is not None and item.summary.baseSubject else None
        if keeper is None or keeper is root:
            out.append(root)
            continue
        if keeper.item is None and root.item is None:
            for child in list(root.children):
                keeper.adopt(child)
        elif keeper.item is None:
            keeper.adopt(root)
        elif root.item is not None and root.item.summary.isReply and not keeper.item.summary.isReply:
            keeper.adopt(root)
        else:
            dummy = _Node()
            index = out.index(keeper) if keeper in out else None
            dummy.adopt(keeper)
            dummy.adopt(root)
            subjects[keeper.item.summary.baseSubject] = dummy
            if index is not None:
                out[index] = dummy
            else:
                out.append(dummy)
    return out


def _sortChildren(node: _Node) -> None:
    node.children.sort(key=lambda n: n.firstDate())
    for child in node.children:
        _sortChildren(child)


def _members(node: _Node) -> bytes:
    out = []
    if node.item is not None:
        out.append(b"%d" % (node.item.number,))
    if len(node.children) == 1:
        out.append(_members(node.children[0]))
    elif node.children:
        out.append(b"".join(b"(" + _members(c) + b")" for c in node.children))
    return b" ".join(out)


def formatThreads(roots: List[_Node]) -> bytes:
    """
    The threads in the wire form of the C{THREAD} response.
    """
    return b"".join(b"(" + _members(root) + b")" for root in roots)
