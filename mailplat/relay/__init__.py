"""
The relay: delivering queued messages to other mail servers over SMTP.

L{Relay} finds where a domain's mail goes (MX records through
C{twisted.names}, in preference order; the domain's own address when it
has no MX; RFC 7505 null MX as a permanent failure; or a configured
smarthost instead of all of that), connects, and delivers a batch of
messages over one connection: C{EHLO} (C{HELO} when refused),
opportunistic C{STARTTLS}, C{AUTH PLAIN}/C{LOGIN} to a smarthost, then
C{MAIL}/C{RCPT}/C{DATA} for each message.  Every recipient comes back
as delivered, deferred (4xx, connection trouble) or failed (5xx).

To a next hop that offers DSN (RFC 3461) the message's C{RET} and
C{ENVID} go with C{MAIL} and each recipient's C{NOTIFY} and C{ORCPT} with
C{RCPT}; a L{Result} says whether they were passed on, so that the queue
runner sends a "relayed" DSN for a C{NOTIFY=SUCCESS} recipient otherwise.
A message received with SMTPUTF8 (RFC 6531) is sent with C{MAIL ...
SMTPUTF8}, and never to a next hop that does not offer it: its recipients
fail (C{553 5.6.7} when an envelope address is not ASCII, else C{554
5.6.9}) and are bounced.

L{mailplat.relay.runner.QueueRunner} decides when to call it and what to
do with the results.
"""

import base64
import ipaddress
import random
import socket
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Generator, List, Optional, Tuple

from twisted.internet import defer, endpoints, ssl
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dnserror

from mailplat import netutil
from mailplat.relay.client import Reply, SMTPClientProtocol
from mailplat.smtp.syntax import encodeXtext

DELIVERED = "delivered"
DEFERRED = "deferred"
FAILED = "failed"


@dataclass
class Result:
    """
    What happened to one recipient in one attempt.

    @ivar kind: L{DELIVERED}, L{DEFERRED} or L{FAILED}.
    @ivar reply: the reply text (C{"550 5.1.1 No such user"}).
    @ivar remoteMTA: the host that answered, or L{None} when none did.
    @ivar dsn: the next hop offers DSN, so the recipient's DSN parameters
        were passed on and reporting is its job from now on.
    """

    kind: str
    reply: str
    remoteMTA: Optional[str] = None
    dsn: bool = False


@dataclass
class Job:
    """
    One message to send to recipients of one destination.

    @ivar entryId: the queue id.
    @ivar sender: the reverse path (L{None} for C{<>}).
    @ivar recipients: the forward paths.
    @ivar openMessage: returns the message file (wire form); the relay
        closes it.
    @ivar envid: the DSN C{ENVID} (decoded), or L{None}.
    @ivar ret: the DSN C{RET} (C{"FULL"}, C{"HDRS"}), or L{None}.
    @ivar notify: recipient to its C{NOTIFY} list, for those that have one.
    @ivar orcpt: recipient to its C{ORCPT} (C{"type;address"}, decoded),
        for those that have one.
    @ivar smtputf8: the message needs SMTPUTF8 (RFC 6531).
    """

    entryId: str
    sender: Optional[str]
    recipients: List[str]
    openMessage: Callable[[], BinaryIO]
    envid: Optional[str] = None
    ret: Optional[str] = None
    notify: Dict[str, List[str]] = field(default_factory=dict)
    orcpt: Dict[str, str] = field(default_factory=dict)
    smtputf8: bool = False


class DestinationError(Exception):
    """
    The destination cannot be reached for every recipient alike.

    @ivar reply: the reply text recorded for each recipient.
    @ivar permanent: whether the recipients fail for good.
    """

    def __init__(self, reply: str, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


class _HostError(Exception):
    """
    This host cannot take the mail now; try the next one.
    """


class _TLSFailed(Exception):
    """
    The TLS handshake (or the EHLO after it) failed on this host.
    """


def _kind(code: int) -> str:
    if 200 <= code < 300:
        return DELIVERED
    if 400 <= code < 500:
        return DEFERRED
    return FAILED


def _isAddressLiteral(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parseHostPort(value: str, defaultPort: int = 25) -> Tuple[str, int]:
    """
    Split C{host:port} (C{[v6]:port}, or a host alone) for the smarthost
    setting.

    @raise ValueError: not of that form.
    """
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if not host:
        raise ValueError(f"{value!r}: no host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r}: bad port")
    return host, int(port) if port else defaultPort


class Relay:
    """
    Delivers messages to other domains' mail servers.

    @ivar hostname: our name, for C{EHLO}.
    @ivar resolver: a C{twisted.names} resolver (C{lookupMailExchange},
        C{lookupAddress}, C{lookupIPV6Address}).
    @ivar reactor: the reactor to connect with (and time out on).
    @ivar port: the port of remote MX hosts (25; other values for tests).
    @ivar smarthost: C{(host, port)} that takes all mail instead of the MX
        hosts, or L{None}.
    @ivar credentials: C{(user, password)} for C{AUTH} at the smarthost, or
        L{None}.  Never sent over a cleartext connection except to a
        loopback address.
    @ivar verifyTLS: require C{STARTTLS} and verify the server's
        certificate and host name (service-identity); otherwise TLS is used
        when offered and any certificate is accepted.
    @ivar useTLS: try C{STARTTLS} when offered.
    @ivar connectTimeout: seconds to wait for a connection.
    @ivar commandTimeout: seconds to wait for each reply.
    """

    _log = Logger()

    def __init__(
        self,
        hostname: str,
        resolver: Any,
        reactor: Any = None,
        port: int = 25,
        smarthost: Optional[Tuple[str, int]] = None,
        credentials: Optional[Tuple[str, str]] = None,
        verifyTLS: bool = False,
        useTLS: bool = True,
        connectTimeout: float = 30.0,
        commandTimeout: float = 300.0,
        trustRoot: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.hostname = hostname
        self.resolver = resolver
        self.reactor = reactor
        self.port = port
        self.smarthost = smarthost
        self.credentials = credentials
        self.verifyTLS = verifyTLS
        self.useTLS = useTLS
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.trustRoot = trustRoot
        self._random = random.Random()

    # Where the mail goes.

    def destinationOf(self, address: str) -> str:
        """
        The key under which recipients share connections: the smarthost, or
        the recipient's domain.
        """
        if self.smarthost is not None:
            return "[smarthost]"
        return address.rpartition("@")[2].lower().rstrip(".")

    @defer.inlineCallbacks
    def lookup(self, destination: str) -> Generator["defer.Deferred[Any]", Any, List[Tuple[str, str, int]]]:
        """
        The hosts to try for C{destination}, best first.

        @return: a Deferred firing with a list of C{(name, address, port)}.
        @raise DestinationError: (as a failure) null MX, no such domain
            (permanent); DNS trouble or no address at all (temporary).
        """
        if self.smarthost is not None:
            host, port = self.smarthost
            names = [host]
        else:
            port = self.port
            names = yield self._exchanges(destination)
        hosts: List[Tuple[str, str, int]] = []
        for name in names:
            for address in (yield self._addresses(name)):
                hosts.append((name, address, port))
        if not hosts:
            raise DestinationError(f"451 4.4.4 No address found for the mail servers of {destination}", False)
        return hosts

    @defer.inlineCallbacks
    def _exchanges(self, domain: str) -> Generator["defer.Deferred[Any]", Any, List[str]]:
        """
        The MX host names of C{domain}, in preference order (random among
        equals, RFC 5321 5.1), or C{[domain]} without MX records.
        """
        try:
            answers, _, _ = yield self.resolver.lookupMailExchange(domain)
        except dnserror.DNSNameError:
            raise DestinationError(f"550 5.1.2 Host or domain name not found: {domain}", True)
        except dnserror.DomainError:
            answers = []
        except Exception as e:
            raise DestinationError(f"451 4.4.3 DNS lookup of {domain} failed: {e.__class__.__name__}", False)
        records = [(rr.payload.preference, str(rr.payload.name).rstrip(".").lower()) for rr in answers if rr.type == dns.MX]
        if any(name == "" for _, name in records):
            # RFC 7505: a null MX ("." at preference 0, alone) says the
            # domain takes no mail.
            real = [r for r in records if r[1]]
            if not real:
                raise DestinationError(f"556 5.1.10 Recipient address has null MX: {domain} accepts no mail", True)
            records = real
        if not records:
            return [domain]
        records.sort(key=lambda r: (r[0], self._random.random()))
        names: List[str] = []
        for _, name in records:
            if name not in names:
                names.append(name)
        return names

    @defer.inlineCallbacks
    def _addresses(self, name: str) -> Generator["defer.Deferred[Any]", Any, List[str]]:
        """
        The IPv4 then IPv6 addresses of host C{name} (an address literal is
        its own address); lookup errors give no address.
        """
        if _isAddressLiteral(name):
            return [name]
        result: List[str] = []
        for method, rtype in ((self.resolver.lookupAddress, dns.A), (self.resolver.lookupIPV6Address, dns.AAAA)):
            try:
                answers, _, _ = yield method(name)
            except Exception:
                continue
            for rr in answers:
                if rr.type != rtype:
                    continue
                if rtype == dns.A:
                    address = rr.payload.dottedQuad()
                else:
                    address = socket.inet_ntop(socket.AF_INET6, rr.payload.address)
                if address not in result:
                    result.append(address)
        return result

    # Delivering.

    @defer.inlineCallbacks
    def deliver(
        self, destination: str, jobs: List[Job], report: Callable[[Job, Dict[str, Result]], defer.Deferred]
    ) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Deliver C{jobs} to C{destination}, over one connection as long as it
        lasts.  C{report(job, results)} is called once per job, as soon as
        the job's outcome is known (right after the server's reply to the
        end of data), and waited for before the next job.

        @return: a Deferred firing when every job was reported.
        """
        remaining = list(jobs)
        try:
            hosts = yield self.lookup(destination)
        except DestinationError as e:
            kind = FAILED if e.permanent else DEFERRED
            for job in remaining:
                yield report(job, {r: Result(kind, e.reply) for r in job.recipients})
            return
        lastError = f"451 4.4.1 No mail server of {destination} could be reached"
        for name, address, port in hosts:
            if not remaining:
                break
            try:
                try:
                    conn = yield self._open(name, address, port, self.useTLS)
                except _TLSFailed as e:
                    if self.verifyTLS:
                        raise _HostError(f"451 4.7.5 TLS with {name} failed: {e}")
                    # Opportunistic TLS (RFC 7435 4): a broken TLS setup must
                    # not keep the mail forever; send in cleartext instead.
                    self._log.info("relay: TLS with {host}[{address}] failed ({error}); trying without", host=name, address=address, error=e)
                    conn = yield self._open(name, address, port, False)
            except _HostError as e:
                lastError = str(e)
                self._log.info("relay: {host}[{address}]:{port}: {error}", host=name, address=address, port=port, error=lastError)
                continue
            except Exception as e:
                lastError = f"451 4.4.1 Connection to {name}[{address}] failed: {e.__class__.__name__}"
                self._log.info("relay: {error}", error=lastError)
                continue
            try:
                while remaining:
                    job = remaining[0]
                    results = yield self._send(conn, name, job)
                    remaining.pop(0)
                    yield report(job, results)
            except _HostError as e:
                lastError = str(e)
            except Exception as e:
                lastError = f"451 4.4.2 Lost connection with {name}[{address}]: {e.__class__.__name__}"
                self._log.info("relay: {error}", error=lastError)
            else:
                try:
                    yield conn.command("QUIT")
                except Exception:
                    pass
            conn.close()
        for job in remaining:
            yield report(job, {r: Result(DEFERRED, lastError) for r in job.recipients})

    @defer.inlineCallbacks
    def _open(
        self, name: str, address: str, port: int, useTLS: bool
    ) -> Generator["defer.Deferred[Any]", Any, SMTPClientProtocol]:
        """
        Connect, read the greeting, say EHLO, start TLS (when C{useTLS} and
        offered), authenticate.

        @return: a Deferred firing with the ready L{SMTPClientProtocol}.
        @raise _HostError: (as a failure) the host refused us.
        @raise _TLSFailed: (as a failure) the TLS handshake failed.
        """
        endpoint: IStreamClientEndpoint
        if ":" in address:
            endpoint = endpoints.TCP6ClientEndpoint(self.reactor, address, port, timeout=self.connectTimeout)
        else:
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, address, port, timeout=self.connectTimeout)
        conn = SMTPClientProtocol(self.reactor.callLater, self.commandTimeout)
        yield endpoints.connectProtocol(endpoint, conn)
        try:
            greeting = yield conn.readReply()
            if greeting.code != 220:
                raise _HostError(f"{greeting.text} (greeting of {name})")
            extensions = yield self._hello(conn)
            tls = False
            if useTLS and "STARTTLS" in extensions:
                reply = yield conn.command("STARTTLS")
                if reply.code == 220:
                    conn.transport.startTLS(self._tlsOptions(name))
                    tls = True
                    try:
                        extensions = yield self._hello(conn)
                    except _HostError:
                        raise
                    except Exception as e:
                        raise _TLSFailed(e.__class__.__name__)
                elif self.verifyTLS:
                    raise _HostError(f"{reply.text} (STARTTLS refused by {name})")
            if self.verifyTLS and not tls:
                raise _HostError(f"451 4.7.5 {name} does not offer STARTTLS and TLS is required")
            if self.credentials is not None and self.smarthost is not None:
                yield self._authenticate(conn, name, extensions, tls)
        except BaseException:
            conn.close()
            raise
        conn.extensions = extensions
        return conn

    @defer.inlineCallbacks
    def _hello(self, conn: SMTPClientProtocol) -> Generator["defer.Deferred[Any]", Any, Dict[str, str]]:
        reply = yield conn.command(f"EHLO {self.hostname}")
        if reply.code == 250:
            return reply.extensions()
        if reply.code == 421:
            raise _HostError(reply.text)
        reply = yield conn.command(f"HELO {self.hostname}")
        if reply.code != 250:
            raise _HostError(f"{reply.text} (HELO refused)")
        return {}

    def _tlsOptions(self, name: str) -> Any:
        if self.verifyTLS:
            return ssl.optionsForClientTLS(name, trustRoot=self.trustRoot)
        # Opportunistic TLS (RFC 7435): encrypt, accept any certificate.
        return ssl.CertificateOptions(verify=False)

    @defer.inlineCallbacks
    def _authenticate(
        self, conn: SMTPClientProtocol, name: str, extensions: Dict[str, str], tls: bool
    ) -> Generator["defer.Deferred[Any]", Any, None]:
        assert self.credentials is not None
        user, password = self.credentials
        if not tls and not netutil.isLoopback(conn.transport.getPeer()):
            raise _HostError(f"451 4.7.0 Refusing to send credentials to {name} without TLS")
        mechanisms = extensions.get("AUTH", "").upper().split()

        def b64(text: str) -> str:
            return base64.b64encode(text.encode("utf-8")).decode("ascii")

        if "PLAIN" in mechanisms:
            reply = yield conn.command("AUTH PLAIN " + b64(f"\0{user}\0{password}"))
        elif "LOGIN" in mechanisms:
            reply = yield conn.command("AUTH LOGIN")
            if reply.code == 334:
                reply = yield conn.command(b64(user))
            if reply.code == 334:
                reply = yield conn.command(b64(password))
        else:
            raise _HostError(f"451 4.7.0 {name} offers no AUTH mechanism we know (PLAIN, LOGIN)")
        if reply.code != 235:
            # A wrong password is our configuration's fault: keep the mail.
            raise _HostError(f"451 4.7.0 Authentication at {name} failed: {reply.text}")

    @defer.inlineCallbacks
    def _send(self, conn: SMTPClientProtocol, name: str, job: Job) -> Generator["defer.Deferred[Any]", Any, Dict[str, Result]]:
        """
        One transaction: MAIL, RCPT for each recipient, DATA.

        @return: a Deferred firing with the L{Result} of each recipient.
        @raise _HostError: (as a failure) the server closed (421).
        """
        results: Dict[str, Result] = {}
        extensions = conn.extensions
        dsn = "DSN" in extensions

        def settle(recipients: List[str], reply: Reply) -> None:
            for r in recipients:
                results[r] = Result(_kind(reply.code), reply.text, name, dsn)

        mail = f"MAIL FROM:<{job.sender or ''}>"
        if job.smtputf8:
            if "SMTPUTF8" not in extensions:
                # RFC 6531 3.2: never downgrade; the message is bounced.
                addresses = [job.sender or ""] + job.recipients
                if all(a.isascii() for a in addresses):
                    text = f"554 5.6.9 {name} does not support SMTPUTF8, needed by this UTF-8 message"
                else:
                    text = f"553 5.6.7 {name} does not support SMTPUTF8, needed for a non-ASCII address"
                for r in job.recipients:
                    results[r] = Result(FAILED, text, name)
                return results
            mail += " SMTPUTF8"
        if dsn:
            if job.ret:
                mail += f" RET={job.ret}"
            if job.envid:
                mail += f" ENVID={encodeXtext(job.envid)}"
        reply = yield conn.command(mail)
        if reply.code != 250:
            settle(job.recipients, reply)
            yield self._abort(conn, reply)
            return results
        accepted: List[str] = []
        for recipient in job.recipients:
            rcpt = f"RCPT TO:<{recipient}>"
            if dsn:
                if recipient in job.notify:
                    rcpt += " NOTIFY=" + ",".join(job.notify[recipient])
                if recipient in job.orcpt:
                    kind, _, address = job.orcpt[recipient].partition(";")
                    rcpt += f" ORCPT={kind};{encodeXtext(address)}"
            reply = yield conn.command(rcpt)
            if reply.code in (250, 251):
                accepted.append(recipient)
            else:
                settle([recipient], reply)
                if reply.code == 421:
                    settle([r for r in job.recipients if r not in results and r not in accepted], reply)
                    settle(accepted, reply)
                    return results
        if not accepted:
            yield self._abort(conn, None)
            return results
        reply = yield conn.command("DATA")
        if reply.code != 354:
            settle(accepted, reply)
            yield self._abort(conn, reply)
            return results
        message = job.openMessage()
        try:
            reply = yield conn.sendMessage(message)
        finally:
            message.close()
        settle(accepted, reply)
        return results

    @defer.inlineCallbacks
    def _abort(self, conn: SMTPClientProtocol, reply: Optional[Reply]) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        End an unfinished transaction (C{RSET}); a 421 ends the connection.
        """
        if reply is not None and reply.code == 421:
            raise _HostError(reply.text)
        reply = yield conn.command("RSET")
        if reply.code != 250:
            raise _HostError(f"{reply.text} (RSET refused)")
