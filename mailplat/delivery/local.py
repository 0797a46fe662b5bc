"""
The delivery pipeline: what the SMTP listener does with each decision of a
transaction (L{IDelivery}).

For each message: resolve the recipients through the directory (aliases,
plus-addressing, catch-alls, forwards), ask the policies, then store a copy
in the INBOX of each local account and put the remote recipients (relayed
for an authenticated client, or forwarded by an alias) in the outbound
queue.  The SMTP C{250} comes only once every part is durable.

The transaction's ESMTP parameters (an L{Envelope}: DSN C{RET}, C{ENVID},
C{NOTIFY}, C{ORCPT}, and C{SMTPUTF8}) are read from C{session.transaction}
(set by L{mailplat.smtp.server.SMTPServer}), or given to L{LocalDelivery.deliver}
as its optional C{envelope} argument; callers that know nothing of them
(L{LocalDelivery.inject}, older callers of L{IDelivery}) keep working and
get the defaults.  They go into the queue entry of the remote recipients
(an alias expansion keeps the original recipient's parameters, and gets
an C{ORCPT} naming the original address when the client gave none); a
local recipient with C{NOTIFY=SUCCESS} gets a "delivered" DSN once the
message is stored (RFC 3461 6.2).

With a L{SieveFilter <mailplat.sieve.SieveFilter>}, each local account's
Sieve script (C{<dataDir>/sieve/<address>.sieve}) decides, after the
policies and before the store, which mailboxes receive the message and
what else happens (redirect, reject, vacation); see L{mailplat.sieve}.
"""

import io
import shutil
import tempfile
import time
from typing import Any, BinaryIO, Dict, Generator, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.address import normalizeAddress, splitAddress
from mailplat.delivery.directory import AliasLoop, Resolution, StoreDirectory
from mailplat.delivery.dsn import DELIVERED, FAILED, RecipientReport, makeDSN, readHeaders
from mailplat.delivery.policy import REJECT, IPolicy, IRecipientPolicy, stripFields
from mailplat.errors import MailboxExists, NoSuchAccount, NoSuchMailbox, SMTPReply
from mailplat.interfaces import IDelivery, IDirectory, IMailbox, IStore
from mailplat.policy.authresults import JUNK_HEADER
from mailplat.quota import quotaUsage
from mailplat.smtp.envelope import Envelope, RecipientParameters

#: The header a Sieve redirect adds (kept in step with mailplat.sieve).
REDIRECT_HEADER = "X-Mailplat-Sieve-Redirected"

#: The route of a recipient of another domain, relayed through the queue.
_RELAY = "relay"


class PrefixedReader(io.RawIOBase):
    """
    A read-only binary file that yields C{prefix} then the rest of
    C{source} (from its current position), without copying C{source}.
    Used to put the C{Return-Path} header in front of a spooled message.
    """

    def __init__(self, prefix: bytes, source: BinaryIO) -> None:
        self._prefix = prefix
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        size = len(buffer)
        if self._prefix:
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
        else:
            chunk = self._source.read(size)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _senderOf(session: object) -> Optional[str]:
    """
    The reverse path of the transaction of C{session} (L{None} for C{<>}
    or when there is no transaction).
    """
    return getattr(getattr(session, "transaction", None), "sender", None)


@implementer(IDelivery)
class LocalDelivery:
    """
    Accepts mail for addresses the directory knows, and relays mail to
    other domains only for authenticated clients (and for forwards set up
    by an alias), so the server is never an open relay.

    @ivar directory: the L{IDirectory} answering which addresses exist
        (with an C{expand} method, as L{StoreDirectory
        <mailplat.delivery.directory.StoreDirectory>} has, for forwards).
    @ivar store: the L{IStore} holding the accounts.
    @ivar queue: the outbound L{Queue <mailplat.queue.Queue>}, or L{None}
        (then nothing is relayed or forwarded).
    @ivar policies: the L{IPolicy} objects asked about each message.
    @ivar hostname: our host name, for the DSNs this pipeline makes.
    @ivar clock: gives the time for DSN dates (anything with C{seconds()}).
    @ivar sieve: the L{SieveFilter <mailplat.sieve.SieveFilter>} running
        each account's script, or L{None} (everything goes to INBOX).
    @ivar index: the IMAP L{MessageIndex <mailplat.imap.index.MessageIndex>}
        told of each stored message (after it is durable, without
        waiting), or L{None}.
    """

    _log = Logger()

    def __init__(
        self,
        directory: IDirectory,
        store: IStore,
        queue: Optional[object] = None,
        policies: Sequence[IPolicy] = (),
        hostname: str = "localhost",
        clock: Optional[object] = None,
        sieve: Optional[Any] = None,
        quota: int = 0,
        index: Optional[Any] = None,
    ) -> None:
        self.index = index
        self.sieve = sieve
        self.quota = quota
        self.directory = directory
        self.store = store
        self.queue = queue
        self.policies = list(policies)
        self.hostname = hostname
        self.clock = clock

    def validateSender(self, session: object, sender: Optional[str]) -> "defer.Deferred[None]":
        """
        Any syntactically valid reverse path is accepted (SPF and friends
        come with the security issue).
        """
        return defer.succeed(None)

    def _expand(self, address: str, accounts: Optional[Dict[str, bool]] = None) -> "defer.Deferred[Resolution]":
        """
        The L{Resolution} of an address of a domain just found local.

        @param accounts: what L{_isLocal} learnt of the accounts of the
            addresses it was asked about (a L{StoreDirectory} does not ask
            the store again).
        """
        expand = getattr(self.directory, "expand", None)
        if expand is not None:
            if accounts and isinstance(self.directory, StoreDirectory):
                d = defer.maybeDeferred(expand, address, domainIsLocal=True, accounts=accounts)
            else:
                d = defer.maybeDeferred(expand, address, domainIsLocal=True)
        else:
            d = defer.maybeDeferred(self.directory.resolve, address).addCallback(
                lambda local: Resolution(local=list(local))
            )
        return d.addCallback(self._keepForwards, address)

    def _keepForwards(self, resolution: Resolution, address: str) -> Resolution:
        """
        Drop the remote forwards of C{resolution} when there is no queue to
        send them through (logged).
        """
        if self.queue is None and resolution.remote:
            self._log.warn("no queue: forwards of {address} to {remote} dropped", address=address, remote=resolution.remote)
            resolution.remote = []
        return resolution

    def _isLocal(self, address: str, domain: str, accounts: Optional[Dict[str, bool]] = None) -> "defer.Deferred[bool]":
        """
        Whether C{address}, in C{domain}, is in a local domain: asked of the
        directory by address when it can answer that way (see
        L{StoreDirectory.isLocalAddress
        <mailplat.delivery.directory.StoreDirectory.isLocalAddress>}),
        else by domain.

        @param accounts: filled, by a L{StoreDirectory}, with whether the
            store found an account for C{address} when it was asked (for
            L{_expand}).
        """
        isLocalAddress = getattr(self.directory, "isLocalAddress", None)
        if isLocalAddress is not None:
            if accounts is not None and isinstance(self.directory, StoreDirectory):
                return isLocalAddress(address, accounts)
            return isLocalAddress(address)
        return self.directory.isLocalDomain(domain)

    def _mayRelay(self, session: object) -> bool:
        """
        Whether mail from this session may go to other domains: an
        authenticated client, or the server itself (C{session} L{None}).
        """
        if self.queue is None:
            return False
        return session is None or bool(getattr(session, "authenticated", None))

    @defer.inlineCallbacks
    def validateRecipient(self, session: object, recipient: str) -> Generator["defer.Deferred[Any]", Any, Optional[SMTPReply]]:
        """
        For a local domain: C{551 5.1.6} for an address the directory
        marks as moved (naming the new one), C{550 5.1.1} for an unknown user, C{550 5.4.6}
        for an alias loop, success for a known one, and a C{251 2.1.5}
        L{SMTPReply} as the I{result} (not raised) when the address only
        forwards to other domains.  For another domain: accepted for an
        authenticated client (the message is relayed through the queue),
        else C{554 5.7.1}.

        The route decided for an accepted recipient is noted in the
        transaction's L{Envelope} (C{routes}), which L{deliver} follows
        rather than looking the address up again.  A recipient found
        deliverable is then put to the policies that decide at C{RCPT}
        (L{IRecipientPolicy}: greylisting, a DNSBL or SPF refusal).
        """
        routes = getattr(getattr(session, "transaction", None), "routes", None)
        local, domain = splitAddress(recipient)
        # The store is asked once whether the recipient has an account, not
        # again by the expansion.
        accounts: Dict[str, bool] = {}
        if domain and local and (yield self._isLocal(recipient, domain, accounts)):
            movedTo = getattr(self.directory, "movedTo", None)
            if movedTo is not None:
                target = yield movedTo(recipient)
                if target:
                    # RFC 5321 3.4: the user has moved; the client is told
                    # where, and nothing is forwarded.
                    raise SMTPReply(551, "5.1.6", f"User not local; please try <{target}>")
            try:
                resolution = yield self._expand(recipient, accounts)
            except AliasLoop:
                raise SMTPReply(550, "5.4.6", f"<{recipient}>: Recipient address rejected: alias loop")
            if not resolution:
                raise SMTPReply(550, "5.1.1", f"<{recipient}>: Recipient address rejected: User unknown")
            if self.quota:
                for address in resolution.local:
                    account = yield self.store.getAccount(address)
                    octets, messages = yield quotaUsage(account)
                    if octets >= self.quota:
                        # Temporary: the sender retries while the user
                        # makes room (RFC 3463 X.2.2, mailbox full).
                        raise SMTPReply(452, "4.2.2", f"<{recipient}>: Mailbox full")
            route: Any = resolution
            reply = SMTPReply(251, "2.1.5", "User not local; will forward") if resolution.remote and not resolution.local else None
        elif domain and local and self._mayRelay(session):
            route, reply = _RELAY, None
        else:
            raise SMTPReply(554, "5.7.1", f"<{recipient}>: Relay access denied")
        for policy in self._recipientPolicies():
            verdict = yield policy.checkRecipient(session, _senderOf(session), recipient)
            if verdict.action == REJECT:
                raise verdict.reply
        if routes is not None:
            routes[recipient] = route
        return reply

    def _recipientPolicies(self) -> List[Any]:
        """
        The policies that decide at C{RCPT} too (L{IRecipientPolicy}), in
        order; each is asked of a recipient found deliverable, and the
        first refusal refuses it.
        """
        return [policy for policy in self.policies if IRecipientPolicy.providedBy(policy)]

    def _route(self, session: object, recipients: List[str], routes: Dict[str, Any]) -> defer.Deferred:
        """
        Split the recipients into local accounts and remote addresses.

        @param routes: the routes L{validateRecipient} noted for this
            transaction; a recipient without one is looked up.
        @return: a Deferred firing with C{(accounts, remote, origin)}:
            C{origin} maps each account and remote address to the first
            recipient (of C{recipients}) that led to it.
        """
        recipients = [normalizeAddress(r) for r in recipients]
        missing = [r for r in recipients if r not in routes]
        if not missing:
            return defer.succeed(self._split(recipients, routes))
        return self._lookUp(session, missing).addCallback(lambda found: self._split(recipients, {**routes, **found}))

    @defer.inlineCallbacks
    def _lookUp(self, session: object, recipients: List[str]) -> Generator["defer.Deferred[Any]", Any, Dict[str, Any]]:
        """
        The routes of recipients no route was noted for: a L{Resolution},
        or L{_RELAY}; a recipient mail cannot go to has none.
        """
        routes: Dict[str, Any] = {}
        for recipient in recipients:
            local, domain = splitAddress(recipient)
            if domain and local and (yield self._isLocal(recipient, domain)):
                try:
                    routes[recipient] = yield self._expand(recipient)
                except AliasLoop:
                    pass
            elif domain and local and self._mayRelay(session):
                routes[recipient] = _RELAY
        return routes

    @staticmethod
    def _split(recipients: List[str], routes: Dict[str, Any]) -> Tuple[List[str], List[str], Dict[str, str]]:
        """
        The accounts and remote addresses the recipients' routes lead to
        (each once, in order), with the recipient each came from first.
        """
        accounts: List[str] = []
        remote: List[str] = []
        origin: Dict[str, str] = {}
        for recipient in recipients:
            route = routes.get(recipient)
            if route is None:
                continue
            if route is _RELAY:
                targets: List[Tuple[List[str], List[str]]] = [(remote, [recipient])]
            else:
                targets = [(accounts, route.local), (remote, route.remote)]
            for into, addresses in targets:
                for address in addresses:
                    if address not in into:
                        into.append(address)
                    origin.setdefault(address, recipient)
        return accounts, remote, origin

    @defer.inlineCallbacks
    def _judge(self, session: object, sender: Optional[str], recipients: List[str],
               message: BinaryIO) -> Generator["defer.Deferred[Any]", Any, Tuple[bytes, BinaryIO]]:
        """
        Ask every policy; raise the first rejection.

        @return: a Deferred firing with the header lines to add and the
            message to deliver: C{message}, or a copy without the fields
            the policies strip (L{Verdict.strip}), such as a forged
            C{Authentication-Results}.
        """
        headers: List[bytes] = []
        strip: List[bytes] = []
        for policy in self.policies:
            message.seek(0)
            verdict = yield defer.maybeDeferred(policy.checkMessage, session, sender, recipients, message)
            if verdict.action == REJECT:
                raise verdict.reply
            headers.extend(verdict.headers)
            strip.extend(getattr(verdict, "strip", ()))
        message.seek(0)
        if strip:
            message = io.BytesIO(stripFields(message.read(), strip))
        return b"".join(headers), message

    @staticmethod
    def _parametersFor(envelope: Envelope, address: str, original: str) -> RecipientParameters:
        """
        The DSN parameters of C{address}, reached from the recipient
        C{original}: the original's, with C{ORCPT} naming the original
        address when it was expanded and the client gave none.
        """
        given = envelope.recipient(original)
        orcpt = given.orcpt
        if orcpt is None and address != original:
            orcpt = f"rfc822;{original}"
        return RecipientParameters(notify=given.notify, orcpt=orcpt)

    @defer.inlineCallbacks
    def deliver(
        self,
        session: object,
        sender: Optional[str],
        recipients: List[str],
        message: BinaryIO,
        envelope: Optional[Envelope] = None,
    ) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Queue the message for its remote recipients, then append it to the
        INBOX of every account the recipients resolve to (each account
        once, with a C{Return-Path} header); fires when every part is
        durable.

        @param envelope: the transaction's ESMTP parameters; by default
            C{session.transaction}, or none at all.
        """
        if envelope is None:
            envelope = getattr(session, "transaction", None) or Envelope()
        accounts, remote, origin = yield self._route(session, recipients, envelope.routes)
        if not accounts and not remote:
            raise SMTPReply(550, "5.1.1", "No recipient exists any more")
        tags, message = yield self._judge(session, sender, recipients, message)
        if remote:
            message.seek(0)
            source = io.BufferedReader(PrefixedReader(tags, message), 65536) if tags else message
            parameters = {a: self._parametersFor(envelope, a, origin[a]) for a in remote}
            queueId = yield self.queue.enqueue(  # type: ignore[union-attr]
                sender, remote, source, envid=envelope.envid, ret=envelope.ret,
                parameters=parameters, smtputf8=envelope.smtputf8,
            )
            self._log.info("queued {id} from <{sender}> for {remote}", id=queueId, sender=sender or "", remote=remote)
        returnPath = b"Return-Path: <" + (sender or "").encode("utf-8") + b">\r\n"
        stored = []
        for address in accounts:
            if (yield self._store(address, sender, message, returnPath + tags)):
                stored.append(address)
        if not stored and not remote:
            raise SMTPReply(550, "5.1.1", "No recipient exists any more")
        reported = self._successReports(sender, envelope, stored, origin, message)
        if reported is not None:
            yield reported

    @defer.inlineCallbacks
    def _store(self, address: str, sender: Optional[str], message: BinaryIO, prefix: bytes) -> Generator["defer.Deferred[Any]", Any, bool]:
        """
        Store the message in the account of C{address}: in INBOX, or where
        the account's Sieve script says (and do the script's other
        actions).

        @return: a Deferred firing with C{False} when the account is gone
            (since its recipient was accepted: the route was decided at
            C{RCPT}), else with C{True} once the message is stored.
        """
        try:
            account = yield self.store.getAccount(address)
        except NoSuchAccount:
            self._log.info("{address} has no account any more; no copy stored for it", address=address)
            return False
        # A policy's junk verdict (in the header lines the policies added,
        # never the message's own headers) files the message into the
        # account's \Junk mailbox instead of INBOX; a Sieve script decides
        # for itself.
        inbox = "INBOX"
        if JUNK_HEADER in prefix:
            inbox = yield self._junkMailbox(account)
        targets: List[Tuple[str, bool]] = [(inbox, False)]
        actions = None
        if self.sieve is not None:
            message.seek(0, io.SEEK_END)
            size = message.tell()
            message.seek(0)
            actions = self.sieve.evaluate(address, sender, message, size)
        if actions is not None:
            targets = []
            for action in actions:
                if action.name in ("keep", "fileinto"):
                    target = (action.mailbox or inbox, action.create)
                    if target not in targets:
                        targets.append(target)
                elif action.name == "redirect":
                    if not (yield self._redirect(address, sender, message, action.address)):
                        if (inbox, False) not in targets:
                            targets.append((inbox, False))
                elif action.name == "reject":
                    yield self._reject(address, sender, message, action.reason or "")
                elif action.name == "vacation":
                    yield self._vacation(address, sender, message, action)
        for name, create in targets:
            if name == "INBOX":
                mailbox = yield account.getMailbox(name)
            else:
                mailbox = yield self._mailbox(account, address, name, create)
            message.seek(0)
            uid = yield mailbox.append(io.BufferedReader(PrefixedReader(prefix, message), 65536))
            if self.index is not None:
                self.index.delivered(account, mailbox, uid, prefix, message)
        return True

    @defer.inlineCallbacks
    def _junkMailbox(self, account: Any) -> Generator["defer.Deferred[Any]", Any, str]:
        """
        The name of the account's \\Junk special-use mailbox; C{Junk}
        (made if missing) when none is marked.
        """
        for entry in (yield account.listMailboxes()):
            if "\\Junk" in entry.attributes and "\\Noselect" not in entry.attributes:
                return entry.name
        try:
            yield account.createMailbox("Junk", "\\Junk")
        except MailboxExists:
            pass
        return "Junk"

    @defer.inlineCallbacks
    def _mailbox(self, account: Any, address: str, name: str, create: bool) -> Generator["defer.Deferred[Any]", Any, IMailbox]:
        """
        The mailbox C{name} of C{account}; created when missing with
        C{create}, else INBOX (logged).
        """
        try:
            return (yield account.getMailbox(name))
        except NoSuchMailbox:
            pass
        except Exception:
            self._log.failure("sieve: mailbox {name!r} of {address} unusable; filing into INBOX", name=name, address=address)
            return (yield account.getMailbox("INBOX"))
        if create:
            try:
                yield account.createMailbox(name)
                return (yield account.getMailbox(name))
            except Exception:
                self._log.failure("sieve: could not create {name!r} for {address}; filing into INBOX", name=name, address=address)
        else:
            self._log.warn("sieve: fileinto {name!r} for {address}: no such mailbox; filed into INBOX", name=name, address=address)
        return (yield account.getMailbox("INBOX"))

    @defer.inlineCallbacks
    def _redirect(self, address: str, sender: Optional[str], message: BinaryIO, target: Optional[str]) -> Generator["defer.Deferred[Any]", Any, bool]:
        """
        Send the message on to C{target} (through the queue for another
        domain) with the original sender, marked as redirected by
        C{address}.

        @return: a Deferred firing with whether it was sent; not when the
            message was already redirected by this account (a loop) or
            sending failed.
        """
        if not target:
            return False
        marker = f"{REDIRECT_HEADER}: {address}".lower().encode("utf-8")
        message.seek(0)
        headers = readHeaders(message).lower().replace(b"\r\n", b"\n")
        if any(line.strip() == marker for line in headers.split(b"\n")):
            self._log.warn("sieve: redirect loop for {address} to {target}; kept in INBOX", address=address, target=target)
            return False
        message.seek(0)
        copy = tempfile.SpooledTemporaryFile(max_size=65536)
        try:
            copy.write(f"{REDIRECT_HEADER}: {address}\r\n".encode("utf-8"))
            shutil.copyfileobj(message, copy)
            copy.seek(0)
            yield self.deliver(None, sender, [normalizeAddress(target)], copy, envelope=Envelope())  # type: ignore[arg-type]
        except Exception:
            self._log.failure("sieve: redirect of mail for {address} to {target} failed; kept in INBOX", address=address, target=target)
            return False
        finally:
            copy.close()
        return True

    @defer.inlineCallbacks
    def _reject(self, address: str, sender: Optional[str], message: BinaryIO, reason: str) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        RFC 5429 C{reject}: a refusal in DSN form to the sender (never to
        C{<>}).
        """
        if sender is None:
            return
        report = RecipientReport(address=address, action=FAILED, status="5.7.1", diagnostic=f"550 5.7.1 {reason}".strip())
        dsn = makeDSN(self.hostname, sender, [report], message, self._now())
        try:
            yield self.inject(None, [sender], io.BytesIO(dsn))
        except Exception:
            self._log.failure("sieve: could not send the rejection of mail for {address} to <{to}>", address=address, to=sender)

    @defer.inlineCallbacks
    def _vacation(self, address: str, sender: Optional[str], message: BinaryIO, action: Any) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        RFC 5230 C{vacation}: the auto-reply, sent from C{<>} when due.
        """
        try:
            reply = self.sieve.vacationReply(address, sender, message, action)  # type: ignore[union-attr]
            if reply is not None:
                yield self.inject(None, [sender], io.BytesIO(reply))  # type: ignore[list-item]
        except Exception:
            self._log.failure("sieve: vacation reply of {address} to <{to}> failed", address=address, to=sender)

    def _now(self) -> float:
        seconds = getattr(self.clock, "seconds", None)
        return seconds() if seconds is not None else time.time()

    def _successReports(
        self, sender: Optional[str], envelope: Envelope, accounts: List[str], origin: Dict[str, str], message: BinaryIO
    ) -> Optional[defer.Deferred]:
        """
        Send one "delivered" DSN (RFC 3461 6.2) for the local accounts
        whose recipient asked for C{NOTIFY=SUCCESS}; never to the null
        sender.  The message is already stored: a DSN that cannot be sent
        is logged, never a failure of the delivery.

        @return: L{None} when there is none to send (the usual case), else
            a Deferred firing once it is sent or its failure logged.
        """
        if sender is None:
            return None
        reports = []
        for address in accounts:
            parameters = self._parametersFor(envelope, address, origin[address])
            if parameters.wants("SUCCESS"):
                reports.append(RecipientReport(address=address, action=DELIVERED, status="2.0.0", orcpt=parameters.orcpt))
        if not reports:
            return None
        return self._sendSuccessReports(sender, envelope, reports, message)

    @defer.inlineCallbacks
    def _sendSuccessReports(
        self, sender: str, envelope: Envelope, reports: List[RecipientReport], message: BinaryIO
    ) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Send the "delivered" DSN of L{_successReports}.
        """
        now = self._now()
        dsn = makeDSN(self.hostname, sender, reports, message, now, ret=envelope.ret, envid=envelope.envid, arrivalDate=now)
        try:
            yield self.inject(None, [sender], io.BytesIO(dsn))
        except Exception:
            self._log.failure("could not send the delivery DSN to <{to}>", to=sender)

    def inject(self, sender: Optional[str], recipients: List[str], message: BinaryIO) -> "defer.Deferred[None]":
        """
        Deliver a message the server itself made (a DSN): like L{deliver}
        for a trusted client, so remote recipients are queued.
        """
        return self.deliver(None, sender, recipients, message)
