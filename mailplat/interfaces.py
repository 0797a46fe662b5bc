"""
The contracts between mailplat's layers.

Protocols (SMTP, POP3, IMAP) talk to mail only through these interfaces; a
store (Maildir, mbox, SQL, a third-party plugin) implements them.  Every store
passes the shared conformance suite in ``tests/storetests.py``.

Conventions that hold for every method below:

* Every method that may touch a disk or a database returns a L{Deferred}.
  Errors are delivered as failures carrying the exceptions defined in
  L{mailplat.errors}; a store never lets an C{OSError} or a database error
  escape as such when one of those exceptions says what went wrong.
* Mailbox names are Python C{str} (Unicode, not modified UTF-7: converting to
  and from the wire form is the IMAP layer's job).  The hierarchy delimiter is
  always C{"/"} (L{HIERARCHY_DELIMITER}), whatever the store uses on disk.
  C{INBOX} is case-insensitive and always exists.  A name is validated by
  L{mailplat.mailbox.validateMailboxName} before a store sees it; stores
  validate again and refuse with L{mailplat.errors.InvalidMailboxName}.
* Messages cross the contract in their wire form: lines end in CRLF.  A store
  may keep another form on disk (Maildir keeps LF) but C{size} is always the
  size of the wire form, and L{IMailbox.openMessage} yields the wire form.
* Flags are C{str}: system flags with their backslash (C{"\\\\Seen"},
  C{"\\\\Answered"}, C{"\\\\Flagged"}, C{"\\\\Deleted"}, C{"\\\\Draft"}) and
  keywords as given (atoms, compared case-insensitively by IMAP, stored as
  first given).  C{\\Recent} is never stored: it is session state (see
  L{IMailbox.claimRecent}).
* Internal dates are POSIX timestamps (C{float}, seconds, UTC).
"""

from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Dict, Iterable, List, NamedTuple, Optional, Protocol, Tuple, Type

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mailplat.errors import SMTPReply
    from mailplat.mailbox import MailboxStatus
    from mailplat.smtp.server import SMTPSession

HIERARCHY_DELIMITER = "/"

SYSTEM_FLAGS = frozenset(
    ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
)

# Special-use attributes (RFC 6154) a store may attach to a mailbox.
SPECIAL_USE = frozenset(
    ["\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"]
)


class IMessageInfo(Interface):
    """
    What a store knows about one message without reading it.

    Instances are immutable snapshots (L{mailplat.mailbox.MessageInfo} is the
    one every store returns).
    """

    uid = Attribute("The message's UID: a positive int, unique and never reused in its mailbox.")
    flags = Attribute("frozenset of str: system flags and keywords, never \\Recent.")
    internalDate = Attribute("float: POSIX timestamp of delivery or APPEND.")
    size = Attribute("int: size in octets of the wire (CRLF) form.")
    modseq = Attribute("int: the mailbox's modification sequence at this message's last change (CONDSTORE).")


class ConditionalFlags(NamedTuple):
    """
    What L{IMailbox.setFlags} fires with when given C{unchangedSince}.

    @ivar infos: the new L{IMessageInfo} of each message that passed the
        test, in UID order (changed or not: a message whose flags did not
        change keeps its modseq).
    @ivar modified: the UIDs, ascending, of the messages whose modseq was
        greater than C{unchangedSince}: left unchanged (RFC 7162's
        C{[MODIFIED ...]}).
    """

    infos: List[Any]
    modified: List[int]


class IMailboxListener(Interface):
    """
    Told about changes made to a mailbox, so that every session (IMAP IDLE,
    EXISTS/EXPUNGE/FETCH updates) learns of changes made by another.
    """

    def mailboxChanged(mailbox: "IMailbox") -> None:
        """
        Something in C{mailbox} changed (new messages, flags, expunges).

        Called synchronously after the change is durable, on the reactor
        thread.  The listener re-reads what it needs (usually with
        L{IMailbox.listMessages}); it must not raise.
        """


class IMailbox(Interface):
    """
    One folder of one account: an ordered set of messages by UID.
    """

    name = Attribute("str: the mailbox's full name, '/'-delimited; 'INBOX' for the inbox.")
    uidValidity = Attribute("int: UIDVALIDITY, fixed for the life of the mailbox (1..2**32-1).")

    def status() -> "Deferred[MailboxStatus]":
        """
        Counts for STATUS, SELECT and POP3 STAT.

        @return: a Deferred firing with a L{mailplat.mailbox.MailboxStatus}.
        """

    def listMessages() -> "Deferred[List[IMessageInfo]]":
        """
        Every message now in the mailbox, in ascending UID order.
        """

    def claimRecent() -> "Deferred[List[int]]":
        """
        Claim the \\Recent messages for the calling session.

        Returns the UIDs of messages that no session has claimed before, and
        marks them claimed, so exactly one session ever sees a message as
        \\Recent (RFC 3501 2.3.2).  A read-only session (EXAMINE) does not
        call this.
        """

    def openMessage(uid: int) -> "Deferred[BinaryIO]":
        """
        Open a message for reading in its wire (CRLF) form.

        The caller closes the file.  Reading it yields exactly C{size}
        octets (as in L{IMessageInfo}).
        @raise mailplat.errors.NoSuchMessage: (as a failure) the UID is not
            in the mailbox (any more).
        """

    def append(
        source: BinaryIO,
        flags: Iterable[str] = (),
        internalDate: Optional[float] = None,
    ) -> "Deferred[int]":
        """
        Add a message; fires with its new UID only once it is durable
        (fsynced), so the caller may acknowledge it.

        @param source: a binary file positioned at the message's start, wire
            (CRLF) form; read to its end, not closed.
        @param flags: initial flags (never \\Recent); the new message is
            \\Recent for the next session that claims it.
        @param internalDate: POSIX timestamp; now if L{None}.
        """

    def setFlags(
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchangedSince: Optional[int] = None,
    ) -> "Deferred[Any]":
        """
        Change flags of the given messages.

        @param mode: C{"set"} (replace), C{"add"} or C{"remove"}.
        @param unchangedSince: the conditional STORE of RFC 7162 3.1.3
            (C{UNCHANGEDSINCE}): a message whose modseq is greater than
            this is left as it is and reported back.  The test and the
            change are one atomic step under the store's own lock or
            transaction, so that no other session, process or node can
            change a message between them.  C{0} fails every message.
        @return: without C{unchangedSince}, a Deferred firing with the new
            L{IMessageInfo} of each message that still exists, in UID
            order (UIDs no longer there are skipped, not an error).  A
            message whose flags did not change keeps its modseq.  With
            C{unchangedSince}, a Deferred firing with a
            L{ConditionalFlags}: C{infos} as above for the messages that
            passed the test, and C{modified} the UIDs (ascending) of the
            messages still there that failed it.
        """

    def expunge(uids: Optional[Iterable[int]] = None, requireDeleted: bool = True) -> "Deferred[List[int]]":
        """
        Remove messages for good, durably, before firing.

        @param uids: only consider these UIDs (UID EXPUNGE, POP3's DELE set);
            L{None} means every message.
        @param requireDeleted: remove only messages flagged \\Deleted (IMAP);
            POP3 passes C{False} to remove exactly C{uids}.
        @return: Deferred firing with the removed UIDs, ascending.
        """

    def copyTo(uids: Iterable[int], target: "IMailbox") -> "Deferred[List[tuple]]":
        """
        Copy messages (content, flags, internal date) into C{target}, which
        may belong to another store or account; the copies are new and
        \\Recent there.

        @return: Deferred firing with C{(sourceUID, targetUID)} pairs in
            source UID order (COPYUID, RFC 4315), once every copy is durable.
        """

    def addListener(listener: IMailboxListener) -> None:
        """
        Register C{listener} to be told of every later change to this
        mailbox, whichever session or process made it.
        """

    def removeListener(listener: IMailboxListener) -> None:
        """
        Stop telling C{listener}; unknown listeners are ignored.
        """

    def lockExclusive() -> "Deferred[Callable[[], None]]":
        """
        Take the mailbox's exclusive session lock (POP3 maildrop lock,
        RFC 2449 IN-USE).  Fires with a callable that releases it.

        @raise mailplat.errors.MailboxLocked: (as a failure) another session,
            in this process or another, holds it.
        """


class IMessageReader(Interface):
    """
    A fast seam of a mailbox: a small message's wire form read at once,
    without a L{Deferred}, for a store that can do so cheaply on the
    calling (reactor) thread: a local file or memory.  POP3 answers a
    C{RETR} of a small message this way, with no Deferred, file object or
    thread hop per message.  The one exception to "a method that may touch
    a disk returns a Deferred": a read of a few KiB from a local file costs
    less than the Deferred.

    Optional in the contract: a protocol takes it with
    C{IMessageReader(mailbox, None)} and falls back on
    L{IMailbox.openMessage} without it, or when it answers L{None}.  A
    store whose reads wait on a network or a database thread (SQL) does
    not provide it.
    """

    def readMessage(uid: int, limit: int) -> Optional[bytes]:
        """
        The wire form of message C{uid} (exactly what
        L{IMailbox.openMessage} yields), or L{None} when it is longer than
        C{limit} octets (the caller then streams it).

        @raise mailplat.errors.NoSuchMessage: the UID is not in the
            mailbox (any more).
        @raise mailplat.errors.StoreError: the message could not be read.
        """


class IMailboxImport(IMailbox):
    """
    The import seam of a mailbox: what a migration (C{mailplat migrate})
    needs beyond L{IMailbox} to copy a mailbox from another store without
    changing what IMAP clients have cached: its UIDVALIDITY and each
    message's UID.

    Optional in the contract: a store that cannot offer it still serves
    mail, it just cannot be a migration's target.  mailplat's own stores
    (memory, maildir, mbox, sql) all provide it on their mailboxes, which
    are obtained as usual (L{IAccount.getMailbox}) and adapted with
    C{IMailboxImport(mailbox, None)}.

    The methods only ever keep UIDs increasing: an imported UID is never
    below the mailbox's UIDNEXT, so a UID is still never reused.

    Modseqs (CONDSTORE, RFC 7162) can be kept too, so that a client's
    cached HIGHESTMODSEQ stays valid: a message may be imported with the
    modseq it had (L{importMessage}'s C{modseq}), and HIGHESTMODSEQ raised
    to the source's (L{raiseHighestModseq}).  HIGHESTMODSEQ never goes
    down and stays at least every message's modseq; every later change
    gets a modseq above it.  An imported modseq may be below HIGHESTMODSEQ
    (a migration imports in UID order, and modseqs do not follow UIDs), so
    an import with modseqs is for a mailbox no client has synchronised
    with yet (a migration's target), before it is served.
    """

    def setUIDValidity(uidValidity: int) -> "Deferred[None]":
        """
        Give the mailbox the UIDVALIDITY C{uidValidity} (1..2**32-1),
        durably.  Allowed only while the mailbox holds no message; its
        UIDNEXT is left as it is.

        @raise mailplat.errors.MailboxError: (as a failure) the mailbox
            holds messages, or the value is out of range.
        """

    def importMessage(
        uid: int,
        source: BinaryIO,
        flags: Iterable[str] = (),
        internalDate: Optional[float] = None,
        modseq: Optional[int] = None,
    ) -> "Deferred[int]":
        """
        Add a message under the given UID, as L{IMailbox.append} does
        otherwise (durable before firing, flags without \\Recent, the
        message is \\Recent for the next claimer, listeners are told).
        UIDNEXT becomes C{uid + 1}; UIDs between the old UIDNEXT and C{uid}
        are skipped for good.

        @param uid: at least the mailbox's UIDNEXT.
        @param modseq: the message's modseq (1..2**63-1); HIGHESTMODSEQ
            becomes at least this.  L{None}: a new modseq above
            HIGHESTMODSEQ, as an append gets.
        @return: a Deferred firing with C{uid}.
        @raise mailplat.errors.MailboxError: (as a failure) C{uid} is below
            UIDNEXT (it is taken, or was once), or C{modseq} is out of
            range.
        """

    def raiseUIDNext(uidNext: int) -> "Deferred[None]":
        """
        Make UIDNEXT at least C{uidNext}, durably (a mailbox whose last
        messages were expunged keeps the UIDNEXT its clients know).  A
        lower value changes nothing.
        """

    def raiseHighestModseq(modseq: int) -> "Deferred[None]":
        """
        Make HIGHESTMODSEQ at least C{modseq} (1..2**63-1), durably (a
        mailbox whose last change was an expunge keeps the HIGHESTMODSEQ
        its clients know); the next change gets a modseq above it.  A
        lower value changes nothing.

        @raise mailplat.errors.MailboxError: (as a failure) C{modseq} is
            out of range.
        """


class IMailboxEntry(Interface):
    """
    One line of a mailbox listing (L{IAccount.listMailboxes}).
    """

    name = Attribute("str: full '/'-delimited name.")
    attributes = Attribute(
        "frozenset of str: LIST attributes: \\Noselect for a hierarchy-only name,"
        " \\HasChildren/\\HasNoChildren, and special-use attributes."
    )


class IAccount(Interface):
    """
    One user's mail: the IMAP avatar, and the holder of the POP3 maildrop
    (its INBOX).
    """

    address = Attribute("str: the account's address, which is also its login name.")

    def listMailboxes() -> "Deferred[List[IMailboxEntry]]":
        """
        Every mailbox of the account, INBOX included, sorted by name, with
        intermediate hierarchy names that do not exist as mailboxes given
        \\Noselect.
        """

    def getMailbox(name: str) -> "Deferred[IMailbox]":
        """
        @raise mailplat.errors.NoSuchMailbox: (as a failure).
        @raise mailplat.errors.InvalidMailboxName: (as a failure).
        """

    def createMailbox(name: str, specialUse: Optional[str] = None) -> "Deferred[None]":
        """
        Create a mailbox (and any missing superiors, RFC 3501 6.3.3).

        @raise mailplat.errors.MailboxExists: (as a failure).
        @raise mailplat.errors.InvalidMailboxName: (as a failure).
        """

    def deleteMailbox(name: str) -> "Deferred[None]":
        """
        Delete a mailbox and its messages.  INBOX cannot be deleted.  A
        mailbox with children is kept as a \\Noselect name with its messages
        removed (RFC 3501 6.3.4); deleting a \\Noselect name with children is
        refused.

        @raise mailplat.errors.NoSuchMailbox: (as a failure).
        @raise mailplat.errors.MailboxError: (as a failure) when refused.
        """

    def renameMailbox(old: str, new: str) -> "Deferred[None]":
        """
        Rename a mailbox with all its children.  Renaming INBOX moves its
        messages into a new mailbox and leaves INBOX empty (RFC 3501 6.3.5).
        UIDVALIDITY of a renamed mailbox may change.
        """

    def subscribe(name: str) -> "Deferred[None]":
        """
        Add C{name} to the subscriptions (it need not exist).
        """

    def unsubscribe(name: str) -> "Deferred[None]":
        """
        Remove C{name} from the subscriptions.

        @raise mailplat.errors.NoSuchMailbox: (as a failure) not subscribed.
        """

    def listSubscriptions() -> "Deferred[List[str]]":
        """
        The subscribed names, sorted.
        """


class IStore(Interface):
    """
    A backend that holds accounts.  Chosen by name through an
    L{IStoreFactory} plugin.
    """

    def getAccount(address: str, create: bool = False) -> "Deferred[IAccount]":
        """
        The account for C{address} (already normalised by
        L{mailplat.address.normalizeAddress}).  With C{create}, a missing
        account is created with its INBOX (and the special-use mailboxes the
        store makes by default).

        @raise mailplat.errors.NoSuchAccount: (as a failure).
        """

    def hasAccount(address: str) -> "Deferred[bool]":
        """
        Whether an account exists for C{address}.
        """

    def listAccounts() -> "Deferred[List[str]]":
        """
        Every account's address, sorted.
        """

    def hasDomain(domain: str) -> "Deferred[bool]":
        """
        Whether at least one account's address is in C{domain}
        (lower-case, as the addresses are): how the directory tells a
        local domain when none is configured, asked for every recipient,
        so it must not cost a listing of every account.
        """

    def deleteAccount(address: str) -> "Deferred[None]":
        """
        Remove an account and all its mail.

        @raise mailplat.errors.NoSuchAccount: (as a failure).
        """

    def close() -> "Deferred[None]":
        """
        Release files, connections and threads; called once at shutdown.
        """


class IAccountACL(Interface):
    """
    Access control lists (RFC 4314) on an account's mailboxes: which other
    users may see and use which of its mailboxes, and how.

    Optional in the contract: an account that does not provide it is served
    without ACL commands and without a shared namespace.  mailplat's own
    stores (memory, maildir, mbox, sql) all provide it on their accounts,
    and their stores provide L{IStoreACL}.

    An ACL maps identifiers to rights.  An identifier is C{"anyone"} or a
    login address (normalised).  Rights are a string of the RFC 4314
    letters C{lrswipkxtea}, kept canonical (each letter once, in that
    order); an empty string stands for no entry.  The owner is never an
    entry: the owner always has every right on its own mailboxes, which is
    the protocol layer's rule, not the store's.  The ACL belongs to the
    mailbox: L{IAccount.renameMailbox} carries it (and its children's) to
    the new names, and L{IAccount.deleteMailbox} drops it (renaming INBOX
    leaves INBOX's ACL with INBOX).  Another program adding a mailbox under
    a name that once had an ACL does not revive it.
    """

    store = Attribute(
        "The L{IStore} holding this account (and providing L{IStoreACL}):"
        " the way from a session's account to the owners of the mailboxes"
        " shared with it."
    )

    def getACL(name: str) -> "Deferred[Dict[str, str]]":
        """
        The ACL of mailbox C{name}: a new dict of identifier to canonical
        rights, without the owner; empty when nothing was granted.

        @raise mailplat.errors.NoSuchMailbox: (as a failure) no selectable
            mailbox C{name}.
        """

    def setACL(name: str, identifier: str, rights: Optional[str]) -> "Deferred[None]":
        """
        Give C{identifier} exactly C{rights} on mailbox C{name}, durably;
        C{None} or C{""} removes its entry (removing a missing entry is not
        an error).

        @param rights: letters of C{lrswipkxtea} in any order; the store
            keeps them canonical.
        @raise mailplat.errors.NoSuchMailbox: (as a failure) no selectable
            mailbox C{name}.
        @raise mailplat.errors.MailboxError: (as a failure) C{identifier}
            is empty or holds white space or control characters, or is the
            owner's own address, or C{rights} holds another letter.
        """


class IStoreACL(Interface):
    """
    The store-wide side of L{IAccountACL}: which mailboxes of other
    accounts a user may reach, found without opening every account.
    """

    def sharedWith(identifier: str) -> "Deferred[List[Tuple[str, str, str]]]":
        """
        The mailboxes other accounts have shared with C{identifier} (a
        login address) or with C{"anyone"}.

        @return: a Deferred firing with C{(owner, mailboxName, rights)}
            triples sorted by owner and name, where C{rights} is the union
            (canonical) of what the ACL gives C{identifier} and
            C{"anyone"}, never empty; C{identifier}'s own mailboxes are
            not included.
        """


class IStoreFactory(Interface):
    """
    A Twisted plugin that makes a store from its argument string
    (C{--store NAME:ARGS}); found with C{getPlugins(IStoreFactory)}.
    """

    storeName = Attribute("str: the name used in --store and the config.")
    storeHelp = Attribute("str: one paragraph for --help-stores.")
    argStringFormat = Attribute("str: what ARGS looks like, for help.")

    def makeStore(argstring: str, dataDir: str) -> IStore:
        """
        Make the store.  C{argstring} is what followed C{NAME:} (may be
        empty); C{dataDir} is the server's data directory, the default home
        of any file the store keeps.

        @raise mailplat.errors.ConfigError: the arguments are wrong; its
            message names what and why.
        """


class IDirectory(Interface):
    """
    Which addresses receive mail here, and for whom.  Separate from checkers
    so that a custom checker does not have to answer it.
    """

    def isLocalDomain(domain: str) -> "Deferred[bool]":
        """
        Whether mail for C{domain} (lower-case, no trailing dot) is ours.
        """

    def resolve(address: str) -> "Deferred[List[str]]":
        """
        The account addresses that mail for C{address} (normalised) is
        delivered to; an empty list when nobody here receives it.
        """


class IDelivery(Interface):
    """
    What the SMTP protocol calls for each decision of a transaction
    (after aiosmtpd's handler and twisted.mail's IMessageDelivery split).
    Any method may raise (or fail with) L{mailplat.errors.SMTPReply} to
    refuse with a given code.
    """

    def validateSender(session: "SMTPSession", sender: Optional[str]) -> "Deferred[None]":
        """
        Accept or refuse the reverse path (C{None} for the null sender C{<>}).
        """

    def validateRecipient(session: "SMTPSession", recipient: str) -> "Deferred[Optional[SMTPReply]]":
        """
        Accept or refuse one forward path (normalised address).
        Refusals: C{550 5.1.1} unknown user, C{554 5.7.1} relay denied.
        Fires with L{None} to accept with C{250}, or with a 2xx
        L{SMTPReply} to accept in its words (C{251 2.1.5 User not local;
        will forward}).
        """

    def deliver(session: "SMTPSession", sender: Optional[str], recipients: List[str], message: BinaryIO) -> "Deferred[None]":
        """
        Deliver one message, already accepted recipient by recipient.
        C{message} is a binary file at offset 0 holding the wire form
        (CRLF lines, dot-unstuffed, with the C{Received} header the protocol
        added).  Fires once the message is durable for every recipient;
        only then does the protocol reply 250.
        """


class ISMTPAvatar(Interface):
    """
    The avatar of an authenticated SMTP client (submission, issue 5).
    """

    address = Attribute("str: the authenticated address.")


class LoginPortal(Protocol):
    """
    What the protocols need of the portal they log in through: a
    C{twisted.cred} L{Portal <twisted.cred.portal.Portal>}, or a wrapper that
    keeps one as C{.portal} (L{mailplat.metrics.CountingPortal}).  A type for
    mypy rather than a zope interface, so that a Portal needs no declaration.
    """

    def login(self, credentials: Any, mind: object, *interfaces: Type[Interface]) -> "Deferred[Any]":
        """
        See L{Portal.login <twisted.cred.portal.Portal.login>}.
        """

    def listCredentialsInterfaces(self) -> List[Type[Interface]]:
        """
        See L{Portal.listCredentialsInterfaces
        <twisted.cred.portal.Portal.listCredentialsInterfaces>}.
        """
