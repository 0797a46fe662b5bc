"""
The ESMTP envelope parameters of one mail transaction: what RFC 3461
(DSN), RFC 6531 (SMTPUTF8) and RFC 6152 (8BITMIME) add to C{MAIL} and
C{RCPT}.

The SMTP server keeps one L{Envelope} per transaction in
C{session.transaction} (see L{mailplat.smtp.server.SMTPSession}) while
it calls L{mailplat.interfaces.IDelivery.deliver}, so a delivery reads the
parameters there without any change to the C{IDelivery} signature.  The
delivery pipeline hands them on to the queue, the relay client and DSN
generation.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class RecipientParameters:
    """
    The DSN parameters of one recipient (RFC 3461 4.1, 4.2).

    @ivar notify: the C{NOTIFY} list (C{["NEVER"]} or some of C{SUCCESS},
        C{FAILURE}, C{DELAY}), or L{None} when not given (failures and
        delays are reported).
    @ivar orcpt: the original recipient as C{"addr-type;address"} with
        the xtext decoded (C{"rfc822;bob@example.test"}), or L{None}.
    """

    notify: Optional[List[str]] = None
    orcpt: Optional[str] = None

    def wants(self, kind: str) -> bool:
        """
        Whether a DSN of C{kind} (C{"SUCCESS"}, C{"FAILURE"}, C{"DELAY"})
        is wanted.
        """
        if self.notify is None:
            return kind in ("FAILURE", "DELAY")
        return kind in self.notify


@dataclass
class Envelope:
    """
    The parameters of one transaction.

    @ivar ret: C{"FULL"} or C{"HDRS"} (RFC 3461 C{RET}), or L{None}.
    @ivar envid: the envelope id (RFC 3461 C{ENVID}, decoded), or L{None}.
    @ivar smtputf8: the client gave C{SMTPUTF8} (RFC 6531): addresses and
        headers may be UTF-8.
    @ivar body: the C{BODY} value (C{"7BIT"}, C{"8BITMIME"}), or L{None}.
    @ivar size: the message size the client declared (RFC 1870 C{SIZE}),
        or L{None}.
    @ivar recipients: normalised recipient address to its
        L{RecipientParameters}; a recipient given without parameters may
        be missing.
    @ivar sender: the reverse path of C{MAIL} (normalised), L{None} for
        the null path C{<>}.
    @ivar routes: the delivery's own notes, normalised recipient address
        to where it decided at C{RCPT} that the recipient's mail goes, so
        that C{deliver} need not look each address up again (the server
        never reads it; see L{mailplat.delivery.local.LocalDelivery}).
    """

    ret: Optional[str] = None
    envid: Optional[str] = None
    smtputf8: bool = False
    body: Optional[str] = None
    size: Optional[int] = None
    recipients: Dict[str, RecipientParameters] = field(default_factory=dict)
    sender: Optional[str] = None
    routes: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def recipient(self, address: str) -> RecipientParameters:
        """
        The parameters of C{address} (empty ones when none were given).
        """
        return self.recipients.get(address) or RecipientParameters()
