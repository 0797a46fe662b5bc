"""
Message authentication and filtering policies (L{IPolicy
<mailplat.delivery.policy.IPolicy>} implementations) for the delivery
pipeline:

  - L{mailplat.policy.spf}: SPF (RFC 7208) over a C{twisted.names} resolver;
  - L{mailplat.policy.dkim}: DKIM verification and signing (dkimpy);
  - L{mailplat.policy.dmarc}: DMARC (RFC 7489) policy and alignment;
  - L{mailplat.policy.dnsbl}: DNS block lists;
  - L{mailplat.policy.authresults}: the combined L{AuthenticationPolicy
    <mailplat.policy.authresults.AuthenticationPolicy>} writing one
    C{Authentication-Results} header (RFC 8601), and the
    L{DkimSigningPolicy <mailplat.policy.authresults.DkimSigningPolicy>}
    for submitted mail;
  - L{mailplat.policy.spam}: rspamd and SpamAssassin (spamd) scanners;
  - L{mailplat.policy.greylist}: greylisting.

Every DNS question goes through the resolver given to the checker (the one
the relay uses), so tests answer from a fake resolver.
"""

from typing import Any, Generator, List

from twisted.internet import defer
from twisted.names import error as dnserror

#: Errors of a C{twisted.names} resolver that mean "this name does not
#: exist" (NXDOMAIN), as opposed to a failure to get an answer.
NXDOMAIN_ERRORS = (dnserror.DNSNameError, dnserror.DomainError, dnserror.AuthoritativeDomainError)


class DNSTempError(Exception):
    """
    A DNS question got no usable answer (timeout, SERVFAIL, refused).
    """


@defer.inlineCallbacks
def queryRecords(resolver: Any, method: str, name: str, rtype: int) -> Generator["defer.Deferred[Any]", Any, List[Any]]:
    """
    Ask C{resolver} one question and return the payloads of the answers of
    type C{rtype} (CNAME chains are followed by the resolver).

    @param method: the resolver method, e.g. C{"lookupText"}.
    @return: a Deferred firing with a list of record payloads; an empty
        list for NXDOMAIN or no data.  Fails with L{DNSTempError} when no
        answer could be had.
    """
    try:
        answers, _, _ = yield getattr(resolver, method)(name)
    except NXDOMAIN_ERRORS:
        return []
    except Exception as e:
        raise DNSTempError(f"{name}: {e.__class__.__name__}") from None
    records: List[Any] = [rr.payload for rr in answers if rr.type == rtype]
    return records


def txtStrings(payloads: List[Any]) -> List[bytes]:
    """
    Join each TXT record's character-strings into one C{bytes}.
    """
    return [b"".join(p.data) for p in payloads]


__all__ = ["NXDOMAIN_ERRORS", "DNSTempError", "queryRecords", "txtStrings"]
