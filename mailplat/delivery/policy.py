"""
Policies: accept, reject or tag a message before it is delivered.

A policy is any object with a C{checkMessage} method (L{IPolicy}); the
delivery pipeline asks each in turn, after the recipients are resolved and
before anything is stored or queued.  The first rejection wins; tags
(header lines) of every policy are added to the message.  SPF, DKIM,
DMARC and spam verdicts come as further policies.
"""

from typing import BinaryIO, List, Optional, Sequence

from twisted.internet import defer
from zope.interface import Interface, implementer

from mailplat.errors import SMTPReply

ACCEPT = "accept"
REJECT = "reject"
TAG = "tag"


class Verdict:
    """
    A policy's answer about one message.

    @ivar action: L{ACCEPT}, L{REJECT} or L{TAG}.
    @ivar reply: for L{REJECT}, the L{SMTPReply} given to the client.
    @ivar headers: for L{TAG}, complete header lines (C{bytes} ending in
        CRLF) put in front of the message.
    @ivar strip: for L{TAG}, header fields of the message, exactly as they
        are in it (name to the CRLF ending the field, continuation lines
        included), taken out of it (see L{stripFields}).
    """

    def __init__(self, action: str, reply: Optional[SMTPReply] = None, headers: Sequence[bytes] = (),
                 strip: Sequence[bytes] = ()) -> None:
        if action == REJECT and reply is None:
            raise ValueError("a rejection needs a reply")
        self.action = action
        self.reply = reply
        self.headers = list(headers)
        self.strip = list(strip)

    @classmethod
    def accept(cls) -> "Verdict":
        """
        Accept the message unchanged.
        """
        return cls(ACCEPT)

    @classmethod
    def reject(cls, code: int, enhanced: Optional[str], text: str) -> "Verdict":
        """
        Refuse the message with this reply.
        """
        return cls(REJECT, SMTPReply(code, enhanced, text))

    @classmethod
    def tag(cls, *headers: bytes, strip: Sequence[bytes] = ()) -> "Verdict":
        """
        Accept the message with these header lines added (and the fields
        C{strip} taken out).
        """
        return cls(TAG, headers=headers, strip=strip)


def stripFields(message: bytes, fields: Sequence[bytes]) -> bytes:
    """
    C{message} (wire form) without the header fields C{fields}, each given
    exactly as it is in the header (see L{Verdict.strip}); the body is
    never touched, and a field not found is left alone.
    """
    end = message.find(b"\r\n\r\n")
    end = len(message) if end < 0 else end + 2
    header = message[:end]
    for field in fields:
        at = header.find(field)
        if at == 0 or (at > 0 and header[at - 2 : at] == b"\r\n"):
            header = header[:at] + header[at + len(field):]
    return header + message[end:]


class IPolicy(Interface):
    """
    A decision about whole messages.
    """

    def checkMessage(session: object, sender: Optional[str], recipients: List[str], message: BinaryIO) -> "defer.Deferred[Verdict]":
        """
        Judge one message.

        @param session: the SMTP session (L{None} for mail the server
            makes itself, such as DSNs).
        @param recipients: the forward paths as the client gave them.
        @param message: the wire form, at offset 0; the policy may read it
            and need not rewind it.
        @return: a Deferred firing with a L{Verdict} (or the verdict).
        """


class IRecipientPolicy(Interface):
    """
    A policy that can also decide at C{RCPT}, as Postfix's recipient
    restrictions do: a refusal there costs the client no message
    transfer, and is per recipient.  The delivery asks it of each
    recipient it has found deliverable; the policy's C{checkMessage} is
    still asked at the end of C{DATA}.
    """

    def checkRecipient(session: object, sender: Optional[str], recipient: str) -> "defer.Deferred[Verdict]":
        """
        Judge one recipient of the transaction of C{session} (from
        C{sender}, L{None} for C{<>}).

        @return: a Deferred firing with a L{Verdict}: a rejection refuses
            the recipient with its reply; anything else accepts it (header
            fields are only added at the end of C{DATA}).
        """


@implementer(IPolicy)
class MaxRecipientsPolicy:
    """
    Refuse a message with more than C{limit} recipients
    (C{552 5.5.3}, RFC 3463 "too many recipients").

    @ivar limit: the most recipients allowed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def checkMessage(self, session: object, sender: Optional[str], recipients: List[str], message: BinaryIO) -> "defer.Deferred[Verdict]":
        """
        See L{IPolicy.checkMessage}.
        """
        if len(recipients) > self.limit:
            return defer.succeed(Verdict.reject(552, "5.5.3", f"Too many recipients (at most {self.limit})"))
        return defer.succeed(Verdict.accept())


def readMessage(message: BinaryIO) -> bytes:
    """
    The whole message as C{bytes}, for a policy that needs it at once (a
    DKIM verifier, a spam scanner).  Messages are bounded by the SMTP size
    limit, so this holds at most that much in memory for the time of the
    check.

    @param message: the wire form, read from its current position.
    """
    return message.read()


def clientAddress(session: object) -> Optional[str]:
    """
    The client's IP address as text for a session (C{"192.0.2.1"},
    C{"2001:db8::1"}), or L{None} when there is none (mail the server
    makes itself, a UNIX socket).
    """
    if session is None:
        return None
    peer = getattr(session, "peer", None)
    host = getattr(peer, "host", None)
    if not isinstance(host, str) or not host:
        host = getattr(session, "peerHost", None)
    if not isinstance(host, str) or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower().startswith("ipv6:"):
        host = host[5:]
    return host


def isAuthenticated(session: object) -> bool:
    """
    Whether the session is trusted mail submission: a client that logged
    in with C{AUTH}, or the server itself (C{session} L{None}).  Inbound
    checks (SPF, DKIM verification, DMARC, DNSBL, spam, greylisting) skip
    such mail.
    """
    return session is None or bool(getattr(session, "authenticated", None))
