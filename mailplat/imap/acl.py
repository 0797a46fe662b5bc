"""
Access control lists (RFC 4314) and the shared namespace, for the IMAP
server.

The store keeps each mailbox's ACL (L{mailplat.interfaces.IAccountACL})
and finds what others share with a user (L{mailplat.interfaces.IStoreACL});
everything else about rights lives here, so that the protocol module only
asks: parsing and writing rights strings (with the obsolete C{c} and C{d}
of RFC 4314 section 2.1.1), the right each command needs (section 4),
which flags a user may change, and the namespaces.

Namespaces (RFC 2342), as Dovecot's C{prefix = shared/%%u/}: the user's own
mailboxes are the personal namespace C{""}; another user's mailbox C{M}
that the user has rights on is C{shared/<owner address>/M}.  The owner
always has every right on its own mailboxes; anyone else has what the ACL
gives their address and C{anyone}.  A mailbox is never revealed to someone
who has neither C{l} nor C{r} on it (nor the right the command itself
uses, such as C{i} for APPEND to a drop box): they are answered as for a
mailbox that does not exist.

Flags are shared: a shared mailbox has one set of flags for everyone
(Dovecot can keep C{\\Seen} per user; mailplat does not).
"""

import weakref
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from twisted.internet import defer

from mailplat.address import normalizeAddress
from mailplat.errors import InvalidMailboxName, MailboxError, NoSuchAccount, NoSuchMailbox
from mailplat.interfaces import HIERARCHY_DELIMITER, IAccountACL
from mailplat.mailbox import parentNames, validateMailboxName

__all__ = [
    "ALL_RIGHTS",
    "ANYONE",
    "CAPABILITIES",
    "SHARED_PREFIX",
    "Namespaces",
    "NoPermission",
    "RightsError",
    "Target",
]

#: The rights of RFC 4314 section 2.1, in the order mailplat writes them.
ALL_RIGHTS = "lrswipkxtea"

#: The identifier that stands for every user.
ANYONE = "anyone"

#: The root of the shared namespace and the prefix of its names.
SHARED_ROOT = "shared"
SHARED_PREFIX = SHARED_ROOT + HIERARCHY_DELIMITER

#: What a session whose account keeps ACLs adds to CAPABILITY: the rights
#: t, e, x and k are distinct (RFC 4314 section 2.1.1).
CAPABILITIES = [b"ACL", b"RIGHTS=texk"]

#: The NAMESPACE response with the shared namespace.
NAMESPACE_RESPONSE = b'* NAMESPACE (("" "/")) (("' + SHARED_PREFIX.encode("ascii") + b'" "/")) NIL'

#: The obsolete rights of RFC 2086 and what they stand for (RFC 4314
#: section 2.1.1, the "k and x" / "e and t" reading, as Dovecot).
OBSOLETE_RIGHTS = {"c": "kx", "d": "et"}

#: LISTRIGHTS for anyone but the owner: nothing is required, each right
#: may be given alone (the obsolete ones too, as Dovecot lists them).
OPTIONAL_RIGHTS = "l r s w i p k x t e a c d"

#: The right each operation needs (RFC 4314 section 4).  Flags need
#: their own (L{flagRight}); C{MYRIGHTS} needs any right.
COMMAND_RIGHTS: Dict[str, str] = {
    "LIST": "l",
    "SUBSCRIBE": "l",
    "SELECT": "r",
    "EXAMINE": "r",
    "STATUS": "r",
    "APPEND": "i",
    "COPY": "i",
    "MOVE": "i",
    "MOVE-SOURCE": "te",
    "EXPUNGE": "e",
    "CREATE": "k",
    "DELETE": "x",
    "RENAME": "x",
    "SETACL": "a",
    "DELETEACL": "a",
    "GETACL": "a",
    "LISTRIGHTS": "a",
}

#: Rights that show a mailbox to MYRIGHTS: each lets some command use it.
MYRIGHTS_VISIBLE = "lria"

#: Rights that let a session change something in a selected mailbox;
#: without any of them SELECT opens it read-only.
WRITE_RIGHTS = "stwe"


class NoPermission(Exception):
    """
    The user lacks a right the command needs: answered C{NO [NOPERM]}
    (RFC 5530).
    """


class RightsError(ValueError):
    """
    A rights string or an identifier the client sent cannot be used.

    @ivar bad: the command is malformed (C{BAD}) rather than refused
        (C{NO [CANNOT]}).
    """

    def __init__(self, text: str, bad: bool = True) -> None:
        super().__init__(text)
        self.bad = bad


def canonical(rights: Iterable[str]) -> str:
    """
    Rights letters once each, in L{ALL_RIGHTS} order; letters that are not
    rights are dropped.
    """
    present = set(rights)
    return "".join(letter for letter in ALL_RIGHTS if letter in present)


def parseRights(text: str) -> str:
    """
    A client's rights string as canonical rights, C{c} and C{d} expanded.

    @raise RightsError: a letter is not a right (RFC 4314 2.1: answered
        C{BAD}).
    """
    letters: List[str] = []
    for letter in text:
        if letter in OBSOLETE_RIGHTS:
            letters.extend(OBSOLETE_RIGHTS[letter])
        elif letter in ALL_RIGHTS:
            letters.append(letter)
        else:
            raise RightsError(f"{letter!r} is not an access right; rights are {ALL_RIGHTS} (and c, d)")
    return canonical(letters)


def parseModification(text: str) -> Tuple[str, str]:
    """
    The rights argument of SETACL (RFC 4314 3.1): C{+rights} adds,
    C{-rights} removes, anything else replaces.

    @return: C{("+" | "-" | "=", canonical rights)}.
    """
    if text[:1] in ("+", "-"):
        return text[0], parseRights(text[1:])
    return "=", parseRights(text)


def modifyRights(current: str, mode: str, rights: str) -> str:
    """
    The rights after a SETACL modification of C{current}.
    """
    if mode == "+":
        return canonical(current + rights)
    if mode == "-":
        return canonical(letter for letter in current if letter not in rights)
    return canonical(rights)


def rightsWire(rights: str) -> bytes:
    """
    Rights as sent in ACL and MYRIGHTS responses: the letters, then C{c}
    when C{k} or C{x} is held and C{d} when C{t} or C{e} is (the obsolete
    rights for RFC 2086 clients, as Dovecot); C{""} for none.
    """
    out = canonical(rights)
    if set(out) & set("kx"):
        out += "c"
    if set(out) & set("te"):
        out += "d"
    return out.encode("ascii") if out else b'""'


def parseIdentifier(text: str) -> str:
    """
    An ACL identifier from the client: C{anyone} or a login address
    (normalised).

    @raise RightsError: negative rights (C{-identifier}) and anything that
        is not an address (C{NO [CANNOT]}).
    """
    if text.lower() == ANYONE:
        return ANYONE
    if text.startswith("-"):
        raise RightsError("Negative rights are not supported", bad=False)
    address = normalizeAddress(text)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(ch.isspace() or ord(ch) < 32 or ch == "/" for ch in address):
        raise RightsError(f"{text!r} is not an identifier: use a login address or {ANYONE}", bad=False)
    return address


def effectiveRights(acl: Dict[str, str], user: str) -> str:
    """
    What an ACL gives C{user} (not the owner): their entry and
    C{anyone}'s together.
    """
    return canonical(acl.get(user, "") + acl.get(ANYONE, ""))


def flagRight(flag: str) -> str:
    """
    The right needed to set or clear C{flag}: C{s} for C{\\Seen}, C{t} for
    C{\\Deleted}, C{w} for every other flag and keyword.
    """
    lowered = flag.lower()
    if lowered == "\\seen":
        return "s"
    if lowered == "\\deleted":
        return "t"
    return "w"


def allowedFlags(rights: str, flags: Iterable[str]) -> List[str]:
    """
    The flags of C{flags} the rights let the user change (APPEND and COPY
    silently drop the others, RFC 4314 section 4).
    """
    return [flag for flag in flags if flagRight(flag) in rights]


def canChangeFlags(rights: str) -> bool:
    """
    Whether the rights let the user change every flag.
    """
    return all(right in rights for right in "swt")


def storedFlags(rights: str, current: FrozenSet[str], flags: Iterable[str], mode: str) -> FrozenSet[str]:
    """
    A message's flags after a STORE by a user with C{rights}: flags the
    user may not change keep their state (RFC 4314 section 4 lets a STORE
    succeed when at least one flag may be changed).

    @param mode: C{"set"}, C{"add"} or C{"remove"}.
    """
    requested = {flag.lower(): flag for flag in flags}
    kept = {flag.lower(): flag for flag in current}
    out = {key: flag for key, flag in kept.items() if flagRight(flag) not in rights}
    for key, flag in kept.items():
        if flagRight(flag) in rights and not (mode == "remove" and key in requested) and not (mode == "set" and key not in requested):
            out[key] = flag
    if mode in ("set", "add"):
        for key, flag in requested.items():
            if flagRight(flag) in rights:
                out.setdefault(key, flag)
    return frozenset(out.values())


def permanentFlags(rights: str) -> bytes:
    """
    The PERMANENTFLAGS list for a session with C{rights} (RFC 4314 section
    4: only the flags the user can change).
    """
    flags = []
    if "w" in rights:
        flags.extend(["\\Answered", "\\Flagged"])
    if "t" in rights:
        flags.append("\\Deleted")
    if "s" in rights:
        flags.append("\\Seen")
    if "w" in rights:
        flags.extend(["\\Draft", "\\*"])
    return ("(" + " ".join(flags) + ")").encode("ascii")


# -- names ------------------------------------------------------------------


def isShared(name: str) -> bool:
    """
    Whether C{name} is in the shared namespace (C{shared} or under
    C{shared/}).
    """
    return name == SHARED_ROOT or name.startswith(SHARED_PREFIX)


def sharedName(owner: str, mailbox: str) -> str:
    """
    The name in the shared namespace of C{owner}'s mailbox C{mailbox}.
    """
    return SHARED_PREFIX + owner + HIERARCHY_DELIMITER + mailbox


@dataclass(frozen=True)
class SharedName:
    """
    A name of the shared namespace, parsed.

    @ivar owner: the owner's address, L{None} for the namespace root.
    @ivar mailbox: the owner's mailbox name, L{None} for C{shared/<owner>}.
    """

    owner: Optional[str]
    mailbox: Optional[str]


def parseShared(name: str) -> Optional[SharedName]:
    """
    Split a name of the shared namespace; L{None} for a personal name.

    Strict: the owner level must be an address in its normal form (so a
    mailbox has one name), and the rest a valid mailbox name (no empty,
    C{.} or C{..} level, no control character).

    @raise InvalidMailboxName: the name is malformed.
    """
    if not isShared(name):
        return None
    if name == SHARED_ROOT:
        return SharedName(None, None)
    owner, _, mailbox = name[len(SHARED_PREFIX):].partition(HIERARCHY_DELIMITER)
    local, at, domain = owner.rpartition("@")
    if not at or not local or not domain or normalizeAddress(owner) != owner or owner in (".", ".."):
        raise InvalidMailboxName(f"{owner!r} is not the address of a user: shared names are shared/<address>/<mailbox>")
    if not mailbox:
        if name.endswith(HIERARCHY_DELIMITER):
            raise InvalidMailboxName("Mailbox name has an empty level")
        return SharedName(owner, None)
    return SharedName(owner, validateMailboxName(mailbox))


def patternMayReachShared(pattern: str) -> bool:
    """
    Whether a LIST pattern (reference joined) can match a name of the
    shared namespace, so the store need not be asked when it cannot.
    """
    literal = pattern
    for wildcard in "*%":
        cut = literal.find(wildcard)
        if cut >= 0:
            literal = literal[:cut]
    return SHARED_PREFIX.startswith(literal) or literal.startswith(SHARED_PREFIX)


# -- resolving names --------------------------------------------------------


@dataclass
class Target:
    """
    A mailbox name as the session sees it, resolved.

    @ivar name: the name the client uses.
    @ivar account: the L{IAccount} that holds the mailbox (the owner's).
    @ivar mailbox: the mailbox's name in that account.
    @ivar rights: the session user's rights on it.
    @ivar shared: whether it is another user's mailbox.
    """

    name: str
    account: Any
    mailbox: str
    rights: str
    shared: bool

    def require(self, rights: str, what: str) -> None:
        """
        Refuse with L{NoPermission} unless every one of C{rights} is held.

        @param what: the operation, for the message (C{"read"}).
        """
        missing = [right for right in rights if right not in self.rights]
        if missing:
            raise NoPermission(f"You may not {what} {self.name} (the right {''.join(missing)} is needed)")


class Namespaces:
    """
    The mailboxes one session reaches: its account's own and, when the
    account keeps ACLs, those other accounts share with it.

    @ivar account: the session's L{IAccount}.
    @ivar enabled: whether ACLs and the shared namespace are served (the
        account provides L{IAccountACL}).
    """

    def __init__(self, account: Any) -> None:
        """
        @param account: the session's L{IAccount}.
        """
        self.account = account
        self.address: str = account.address
        self.enabled = IAccountACL.providedBy(account)
        self._owners: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()

    def ownerOf(self, mailbox: Any) -> str:
        """
        The address of the owner of a mailbox this session opened.
        """
        try:
            return self._owners.get(mailbox, self.address)
        except TypeError:
            return self.address

    def _personal(self, name: str) -> Target:
        return Target(name, self.account, name, ALL_RIGHTS, False)

    @defer.inlineCallbacks
    def _owner(self, owner: str) -> Any:
        try:
            account = yield self.account.store.getAccount(owner)
        except NoSuchAccount:
            raise NoSuchMailbox("Mailbox does not exist")
        return account

    @defer.inlineCallbacks
    def resolve(self, name: str, need: str = "", what: str = "use", visibleWith: str = "lr") -> Any:
        """
        Resolve a (validated) mailbox name to a L{Target}, checking rights.

        @param need: the rights the operation needs.
        @param what: the operation, for the refusal's text.
        @param visibleWith: rights any one of which reveals the mailbox
            (besides C{need} itself, all held).
        @raise NoSuchMailbox: (as a failure) no such mailbox, or one the
            user may not know of.
        @raise NoPermission: (as a failure) it is known, a right is missing.
        """
        shared = parseShared(name) if self.enabled else None
        if shared is None:
            return self._personal(name)
        if shared.owner is None or shared.mailbox is None or shared.owner == self.address:
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        account = yield self._owner(shared.owner)
        try:
            acl = yield account.getACL(shared.mailbox)
        except NoSuchMailbox:
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        rights = effectiveRights(acl, self.address)
        visible = any(right in rights for right in visibleWith) or (need and all(right in rights for right in need))
        if not visible:
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        target = Target(name, account, shared.mailbox, rights, True)
        target.require(need, what)
        return target

    @defer.inlineCallbacks
    def open(self, name: str, need: str, what: str) -> Any:
        """
        Resolve C{name} and open its mailbox.

        @return: a Deferred firing with C{(target, mailbox)}.
        """
        target = yield self.resolve(name, need, what)
        mailbox = yield target.account.getMailbox(target.mailbox)
        if target.shared:
            try:
                self._owners[mailbox] = target.account.address
            except TypeError:
                pass
        return target, mailbox

    @defer.inlineCallbacks
    def _creatable(self, name: str) -> Any:
        """
        Where a new mailbox C{name} goes, checked: a L{Target} for it (its
        rights are those on its nearest existing parent), and that
        parent's name in the owner's account (L{None} when it has none).

        @raise NoPermission: (as a failure) C{k} is missing on that parent,
            or a shared mailbox would have none.
        @raise InvalidMailboxName: (as a failure) a name of the shared
            namespace that is not a mailbox's.
        """
        shared = parseShared(name) if self.enabled else None
        if shared is None:
            account = self.account
            mailbox = name
            parents = parentNames(name)
        else:
            if shared.owner is None or shared.mailbox is None:
                raise InvalidMailboxName(f"{name} is a level of the shared namespace, not a mailbox")
            if shared.owner == self.address:
                raise InvalidMailboxName(f"Your own mailboxes are not in the shared namespace: use {shared.mailbox}")
            account = yield self._owner(shared.owner)
            mailbox = shared.mailbox
            parents = parentNames(mailbox)
        for parent in reversed(parents):
            if not IAccountACL.providedBy(account):
                break
            try:
                acl = yield account.getACL(parent)
            except NoSuchMailbox:
                continue
            rights = ALL_RIGHTS if shared is None else effectiveRights(acl, self.address)
            target = Target(name, account, mailbox, rights, shared is not None)
            target.require(COMMAND_RIGHTS["CREATE"], "create mailboxes under the parent of")
            return target, parent
        if shared is not None:
            raise NoPermission(f"You may not create {name}: only the owner makes mailboxes at the top")
        return self._personal(name), None

    @defer.inlineCallbacks
    def _inherit(self, target: Target, parent: Optional[str]) -> Any:
        """
        Give a new mailbox its parent's ACL (as Dovecot does), so that a
        mailbox made in a shared folder is shared as the folder is.
        """
        owner = target.account.address
        if parent is None or not IAccountACL.providedBy(target.account):
            return
        acl = yield target.account.getACL(parent)
        for identifier, rights in sorted(acl.items()):
            if identifier != owner:
                yield target.account.setACL(target.mailbox, identifier, rights)

    @defer.inlineCallbacks
    def create(self, name: str, specialUse: Optional[str] = None) -> Any:
        """
        CREATE: C{k} on the nearest existing parent for a shared name; the
        new mailbox gets that parent's ACL.
        """
        target, parent = yield self._creatable(name)
        if specialUse:
            yield target.account.createMailbox(target.mailbox, specialUse)
        else:
            yield target.account.createMailbox(target.mailbox)
        yield self._inherit(target, parent)

    @defer.inlineCallbacks
    def delete(self, name: str) -> Any:
        """
        DELETE: C{x} on the mailbox.

        @return: a Deferred firing with the owner's address and the
            mailbox's name in the owner's account, once it is deleted.
        """
        target = yield self.resolve(name, COMMAND_RIGHTS["DELETE"], "delete")
        yield target.account.deleteMailbox(target.mailbox)
        return target.account.address, target.mailbox

    @defer.inlineCallbacks
    def rename(self, old: str, new: str) -> Any:
        """
        RENAME, within one account: C{x} on the old mailbox, C{k} on the
        new one's nearest existing parent.

        @return: a Deferred firing with the owner's address and the old
            name in the owner's account, once it is renamed.
        """
        source = yield self.resolve(old, COMMAND_RIGHTS["RENAME"], "rename")
        destination, _ = yield self._creatable(new)
        if destination.account.address != source.account.address:
            raise InvalidMailboxName("A mailbox cannot be moved to another user's mailboxes")
        yield source.account.renameMailbox(source.mailbox, destination.mailbox)
        return source.account.address, source.mailbox

    @defer.inlineCallbacks
    def listShared(self) -> Any:
        """
        The names of the shared namespace this user may see (C{l}), for
        LIST: a dict of name to attributes, with the levels above them
        (C{shared}, C{shared/<owner>}, parents not shared) as
        C{\\Noselect}.
        """
        if not self.enabled:
            return {}
        entries = yield self.account.store.sharedWith(self.address)
        names: Set[str] = set()
        levels: Set[str] = set()
        for owner, mailbox, rights in entries:
            if "l" not in rights:
                continue
            name = sharedName(owner, mailbox)
            names.add(name)
            parts = name.split(HIERARCHY_DELIMITER)
            for k in range(1, len(parts)):
                levels.add(HIERARCHY_DELIMITER.join(parts[:k]))
        out: Dict[str, Set[str]] = {}
        for name in names | levels:
            attrs = set() if name in names else {"\\Noselect"}
            attrs.add("\\HasChildren" if name in levels else "\\HasNoChildren")
            out[name] = attrs
        return out

    # -- ACL commands

    @defer.inlineCallbacks
    def getACL(self, name: str) -> Any:
        """
        GETACL: the entries, the owner first with every right.

        @return: a Deferred firing with C{(identifier, rights)} pairs.
        """
        target = yield self.resolve(name, COMMAND_RIGHTS["GETACL"], "read the access rights of")
        acl = yield target.account.getACL(target.mailbox)
        return [(target.account.address, ALL_RIGHTS)] + sorted(acl.items())

    @defer.inlineCallbacks
    def setACL(self, name: str, identifier: str, modification: Optional[str]) -> Any:
        """
        SETACL (C{modification} a rights string with its C{+}/C{-}) and
        DELETEACL (C{modification} L{None}).

        @raise RightsError: the owner's rights cannot change.
        """
        mode, rights = parseModification(modification) if modification is not None else ("=", "")
        target = yield self.resolve(name, COMMAND_RIGHTS["SETACL"], "change the access rights of")
        if identifier == target.account.address:
            raise RightsError("The owner of a mailbox always has every right on it", bad=False)
        acl = yield target.account.getACL(target.mailbox)
        new = modifyRights(acl.get(identifier, ""), mode, rights)
        if new != acl.get(identifier, ""):
            try:
                yield target.account.setACL(target.mailbox, identifier, new or None)
            except NoSuchMailbox:
                raise
            except MailboxError as e:
                raise RightsError(str(e), bad=False)

    @defer.inlineCallbacks
    def listRights(self, name: str, identifier: str) -> Any:
        """
        LISTRIGHTS: the rights always held and those that may be given.

        @return: a Deferred firing with C{(required, optional)}: canonical
            rights, and the groups as one space-separated string.
        """
        target = yield self.resolve(name, COMMAND_RIGHTS["LISTRIGHTS"], "read the access rights of")
        yield target.account.getACL(target.mailbox)
        if identifier == target.account.address:
            return ALL_RIGHTS, ""
        return "", OPTIONAL_RIGHTS

    @defer.inlineCallbacks
    def myRights(self, name: str) -> Any:
        """
        MYRIGHTS: the user's rights.  RFC 4314 lets any right ask; the
        mailbox is shown only to those whose rights reveal it anyway (C{l},
        C{r}, C{i} of a drop box, C{a}), so that other rights alone (C{w},
        C{p}...) do not tell that it exists.
        """
        target = yield self.resolve(name, "", "use", visibleWith=MYRIGHTS_VISIBLE)
        if not target.shared:
            yield target.account.getMailbox(target.mailbox)
        return target.rights
