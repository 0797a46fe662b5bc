"""
The delivery pipeline: what the SMTP listener does with each decision of a
transaction (L{IDelivery}).

For each message: resolve the recipients through the directory (aliases,
plus-addressing, catch-alls, forwards), ask the policies, then store a copy
in the INBOX of each local account and put the remote recipients (relayed
for an authenticated client, or forwarded by an alias) in the outbound
queue.  The SMTP C{250} comes only once every part is durable.
"""

import io
from typing import BinaryIO, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.address import normalizeAddress, splitAddress
from mailplat.delivery.directory import AliasLoop, Resolution
from mailplat.delivery.policy import REJECT, IPolicy
from mailplat.errors import SMTPReply
from mailplat.interfaces import IDelivery, IDirectory, IStore


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
    """

    _log = Logger()

    def __init__(
        self,
        directory: IDirectory,
        store: IStore,
        queue: Optional[object] = None,
        policies: Sequence[IPolicy] = (),
    ) -> None:
        self.directory = directory
        self.store = store
        self.queue = queue
        self.policies = list(policies)

    def validateSender(self, session: object, sender: Optional[str]) -> "defer.Deferred[None]":
        """
        Any syntactically valid reverse path is accepted (SPF and friends
        come with the security issue).
        """
        return defer.succeed(None)

    @defer.inlineCallbacks
    def _expand(self, address: str):
        """
        The L{Resolution} of an address of a local domain.
        """
        expand = getattr(self.directory, "expand", None)
        if expand is not None:
            resolution = yield expand(address)
        else:
            resolution = Resolution(local=list((yield self.directory.resolve(address))))
        if self.queue is None and resolution.remote:
            self._log.warn("no queue: forwards of {address} to {remote} dropped", address=address, remote=resolution.remote)
            resolution.remote = []
        return resolution

    def _mayRelay(self, session: object) -> bool:
        """
        Whether mail from this session may go to other domains: an
        authenticated client, or the server itself (C{session} L{None}).
        """
        if self.queue is None:
            return False
        return session is None or bool(getattr(session, "authenticated", None))

    @defer.inlineCallbacks
    def validateRecipient(self, session: object, recipient: str):
        """
        For a local domain: C{550 5.1.1} for an unknown user, C{550 5.4.6}
        for an alias loop, success for a known one, and a C{251 2.1.5}
        L{SMTPReply} as the I{result} (not raised) when the address only
        forwards to other domains.  For another domain: accepted for an
        authenticated client (the message is relayed through the queue),
        else C{554 5.7.1}.
        """
        local, domain = splitAddress(recipient)
        if domain and local and (yield self.directory.isLocalDomain(domain)):
            try:
                resolution = yield self._expand(recipient)
            except AliasLoop:
                raise SMTPReply(550, "5.4.6", f"<{recipient}>: Recipient address rejected: alias loop")
            if not resolution:
                raise SMTPReply(550, "5.1.1", f"<{recipient}>: Recipient address rejected: User unknown")
            if resolution.remote and not resolution.local:
                return SMTPReply(251, "2.1.5", "User not local; will forward")
            return None
        if domain and local and self._mayRelay(session):
            return None
        raise SMTPReply(554, "5.7.1", f"<{recipient}>: Relay access denied")

    @defer.inlineCallbacks
    def _route(self, session: object, recipients: List[str]):
        """
        Split the recipients into local accounts and remote addresses.

        @return: a Deferred firing with C{(accounts, remote)}.
        """
        accounts: List[str] = []
        remote: List[str] = []
        for recipient in recipients:
            recipient = normalizeAddress(recipient)
            local, domain = splitAddress(recipient)
            if domain and local and (yield self.directory.isLocalDomain(domain)):
                try:
                    resolution = yield self._expand(recipient)
                except AliasLoop:
                    continue
                targets: List[Tuple[List[str], List[str]]] = [(accounts, resolution.local), (remote, resolution.remote)]
            elif domain and local and self._mayRelay(session):
                targets = [(remote, [recipient])]
            else:
                continue
            for into, addresses in targets:
                for address in addresses:
                    if address not in into:
                        into.append(address)
        return accounts, remote

    @defer.inlineCallbacks
    def _judge(self, session: object, sender: Optional[str], recipients: List[str], message: BinaryIO):
        """
        Ask every policy; raise the first rejection.

        @return: a Deferred firing with the header lines to add.
        """
        headers: List[bytes] = []
        for policy in self.policies:
            message.seek(0)
            verdict = yield defer.maybeDeferred(policy.checkMessage, session, sender, recipients, message)
            if verdict.action == REJECT:
                raise verdict.reply
            headers.extend(verdict.headers)
        message.seek(0)
        return b"".join(headers)

    @defer.inlineCallbacks
    def deliver(self, session: object, sender: Optional[str], recipients: List[str], message: BinaryIO):
        """
        Queue the message for its remote recipients, then append it to the
        INBOX of every account the recipients resolve to (each account
        once, with a C{Return-Path} header); fires when every part is
        durable.
        """
        accounts, remote = yield self._route(session, recipients)
        if not accounts and not remote:
            raise SMTPReply(550, "5.1.1", "No recipient exists any more")
        tags = yield self._judge(session, sender, recipients, message)
        if remote:
            message.seek(0)
            source = io.BufferedReader(PrefixedReader(tags, message), 65536) if tags else message
            queueId = yield self.queue.enqueue(sender, remote, source)  # type: ignore[union-attr]
            self._log.info("queued {id} from <{sender}> for {remote}", id=queueId, sender=sender or "", remote=remote)
        returnPath = b"Return-Path: <" + (sender or "").encode("utf-8") + b">\r\n"
        for address in accounts:
            account = yield self.store.getAccount(address)
            inbox = yield account.getMailbox("INBOX")
            message.seek(0)
            yield inbox.append(io.BufferedReader(PrefixedReader(returnPath + tags, message), 65536))

    def inject(self, sender: Optional[str], recipients: List[str], message: BinaryIO) -> "defer.Deferred[None]":
        """
        Deliver a message the server itself made (a DSN): like L{deliver}
        for a trusted client, so remote recipients are queued.
        """
        return self.deliver(None, sender, recipients, message)
