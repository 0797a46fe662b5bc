"""
Delivery status notifications (RFC 3464): the bounces and delay warnings
the relay sends back to a message's reverse path.

A DSN is a C{multipart/report; report-type=delivery-status} message
(RFC 6522) with three parts: a human-readable explanation, the
C{message/delivery-status} report, and the original message's headers
(C{text/rfc822-headers}) or, with C{RET=FULL}, the whole original message
(C{message/rfc822}).

A DSN is always sent with the null reverse path C{<>}, and nothing is ever
sent to the null reverse path, so a DSN can never cause another one
(RFC 5321 4.5.5, 6.1): that is what keeps bounce loops from forming.
"""

import email.utils
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO, List, Optional, Sequence

FAILED = "failed"
DELAYED = "delayed"
#: Success DSNs (RFC 3464 2.3.3): delivered here (a local mailbox), or
#: relayed to a next hop that does not offer DSN (RFC 3461 6.2.1).
DELIVERED = "delivered"
RELAYED = "relayed"

_ENHANCED = re.compile(r"^([245])\d\d[ -]([245]\.\d{1,3}\.\d{1,3})\b")
_BASIC = re.compile(r"^([245])\d\d\b")
_MAX_HEADERS = 256 * 1024


@dataclass
class RecipientReport:
    """
    What a DSN says about one recipient.

    @ivar address: the final recipient (forward path as relayed).
    @ivar action: C{"failed"}, C{"delayed"}, C{"delivered"} or
        C{"relayed"}.
    @ivar status: the RFC 3463 status code (C{"5.1.1"}).
    @ivar diagnostic: the remote server's reply (C{"550 5.1.1 No such
        user"}) or our own explanation, or L{None}.
    @ivar remoteMTA: the host that gave C{diagnostic}, or L{None}.
    @ivar lastAttempt: POSIX time of the last attempt, or L{None}.
    @ivar willRetryUntil: for a delay, when the relay gives up; or L{None}.
    @ivar orcpt: the original recipient (RFC 3461 C{ORCPT}) as
        C{"addr-type;address"} (a bare address is taken as C{rfc822}), or
        L{None}.
    """

    address: str
    action: str
    status: str
    diagnostic: Optional[str] = None
    remoteMTA: Optional[str] = None
    lastAttempt: Optional[float] = None
    willRetryUntil: Optional[float] = None
    orcpt: Optional[str] = None


def statusFromReply(reply: Optional[str], permanent: bool) -> str:
    """
    The RFC 3463 status code for an SMTP reply text: its enhanced code
    when it has one, else one derived from its class; C{5.0.0}/C{4.0.0}
    when there is no reply at all.
    """
    if reply:
        m = _ENHANCED.match(reply)
        if m and m.group(1) == m.group(2)[0]:
            return m.group(2)
        m = _BASIC.match(reply)
        if m and m.group(1) in "45":
            return f"{m.group(1)}.0.0"
    return "5.0.0" if permanent else "4.0.0"


def _date(when: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(when, timezone.utc))


def _clean(text: str) -> str:
    """
    A value safe on one header line: no CR, LF or other control characters.
    """
    return "".join(c if c.isprintable() else " " for c in text)


def readHeaders(message: BinaryIO) -> bytes:
    """
    The header section of C{message} (from its start, up to and including
    the blank line; at most 256 KiB).
    """
    message.seek(0)
    out = bytearray()
    while len(out) < _MAX_HEADERS:
        line = message.readline(_MAX_HEADERS)
        if not line:
            break
        if line in (b"\r\n", b"\n"):
            break
        out += line
    if out and not out.endswith(b"\n"):
        out += b"\r\n"
    return bytes(out)


def makeDSN(
    reportingMTA: str,
    to: str,
    reports: Sequence[RecipientReport],
    original: BinaryIO,
    now: float,
    ret: Optional[str] = None,
    envid: Optional[str] = None,
    arrivalDate: Optional[float] = None,
    boundary: Optional[str] = None,
) -> bytes:
    """
    Build a DSN (wire form, CRLF lines).

    @param reportingMTA: our host name (C{Reporting-MTA}, C{From}).
    @param to: the original message's reverse path, which receives the DSN
        (never the null sender: the caller does not build one then).
    @param reports: one L{RecipientReport} per recipient reported; all of
        the same action.
    @param original: the original message, wire form.
    @param now: POSIX time used for C{Date}.
    @param ret: C{"FULL"} to return the whole message, else the headers
        (RFC 3461 4.3: C{HDRS}, or not given).
    @param envid: the original envelope id (C{Original-Envelope-Id}).
    @param arrivalDate: when the original message arrived.
    @param boundary: the MIME boundary (random when L{None}).
    """
    if not reports:
        raise ValueError("a DSN reports on at least one recipient")
    action = reports[0].action
    boundary = boundary or f"{secrets.token_hex(12)}/{reportingMTA}"
    messageId = f"<{secrets.token_hex(12)}@{reportingMTA}>"
    if action == FAILED:
        subject = "Undelivered Mail Returned to Sender"
        human = [
            f"This is the mail system at host {reportingMTA}.",
            "",
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
            "",
        ]
    elif action in (DELIVERED, RELAYED):
        subject = "Successful Mail Delivery Report"
        human = [
            f"This is the mail system at host {reportingMTA}.",
            "",
            "Your message was successfully delivered to the destination(s)",
            "listed below."
            + (
                " The next mail system does not send delivery reports, so"
                " this is the last one you will get for it."
                if action == RELAYED
                else ""
            ),
            "",
        ]
    else:
        subject = "Delayed Mail (still being retried)"
        human = [
            f"This is the mail system at host {reportingMTA}.",
            "",
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            "Your message could not be delivered for some time to the",
            "recipients below. Delivery will be tried again.",
            "",
        ]
    for r in reports:
        line = f"<{r.address}>"
        if r.diagnostic:
            where = f" (host {r.remoteMTA} said)" if r.remoteMTA else ""
            line += f":{where} {_clean(r.diagnostic)}"
        human.append(line)
        if r.willRetryUntil is not None and action == DELAYED:
            human.append(f"    delivery will be tried until {_date(r.willRetryUntil)}")

    headers = [
        f"From: MAILER-DAEMON@{reportingMTA} (Mail Delivery System)",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: {messageId}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
    ]

    status: List[str] = [f"Reporting-MTA: dns; {reportingMTA}"]
    if envid:
        status.append(f"Original-Envelope-Id: {_clean(envid)}")
    if arrivalDate is not None:
        status.append(f"Arrival-Date: {_date(arrivalDate)}")
    for r in reports:
        status.append("")
        if r.orcpt:
            kind, semi, address = r.orcpt.partition(";")
            if not semi:
                kind, address = "rfc822", r.orcpt
            status.append(f"Original-Recipient: {_clean(kind)}; {_clean(address.strip())}")
        status.append(f"Final-Recipient: rfc822; {_clean(r.address)}")
        status.append(f"Action: {r.action}")
        status.append(f"Status: {r.status}")
        if r.remoteMTA:
            status.append(f"Remote-MTA: dns; {_clean(r.remoteMTA)}")
        if r.diagnostic:
            status.append(f"Diagnostic-Code: smtp; {_clean(r.diagnostic)}")
        if r.lastAttempt is not None:
            status.append(f"Last-Attempt-Date: {_date(r.lastAttempt)}")
        if r.willRetryUntil is not None and r.action == DELAYED:
            status.append(f"Will-Retry-Until: {_date(r.willRetryUntil)}")

    crlf = "\r\n"
    out = bytearray()
    out += (crlf.join(headers) + crlf + crlf).encode("utf-8")
    out += b"This is a MIME-encapsulated message.\r\n\r\n"
    out += f"--{boundary}\r\n".encode("ascii")
    out += b"Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    out += (crlf.join(human) + crlf + crlf).encode("utf-8")
    out += f"--{boundary}\r\n".encode("ascii")
    out += b"Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
    out += (crlf.join(status) + crlf + crlf).encode("utf-8")
    out += f"--{boundary}\r\n".encode("ascii")
    if (ret or "").upper() == "FULL":
        out += b"Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n"
        out += b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        original.seek(0)
        body = original.read()
        out += body
        if body and not body.endswith(b"\r\n"):
            out += b"\r\n"
    else:
        out += b"Content-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n"
        out += b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        out += readHeaders(original)
    out += f"\r\n--{boundary}--\r\n".encode("ascii")
    return bytes(out)
