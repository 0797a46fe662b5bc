"""
Counters and gauges of a running server, and their exposition in the
Prometheus text format (version 0.0.4) on an optional listener
(C{[listen] metrics = "tcp:9100:interface=127.0.0.1"}).

The counts are hooked in from outside the protocol modules: a factory
wrapper counts connections and commands (L{instrumentFactory}), a portal
wrapper counts refused logins (L{CountingPortal}) and a wrapper of the
delivery counts deliveries (L{countDeliveries}).  The format is written by
hand: it is a few lines of text, and it keeps the server free of one more
dependency.

Each process counts its own: with C{--workers N} the metrics listener is
served by the parent process only, so its figures are the parent's share
of the connections (the queue depth is the whole queue's).
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

#: Distinct command labels kept per protocol; any further verb is "other",
#: so that a client sending made-up verbs cannot grow the label set.
MAX_COMMAND_LABELS = 64

_Labels = Tuple[Tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labelText(labels: _Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Metrics:
    """
    A registry of counters and gauges, each a name with a help text and
    values per label set.

    @ivar help: metric name to C{(type, help text)}.
    """

    def __init__(self) -> None:
        self.help: Dict[str, Tuple[str, str]] = {}
        self._values: Dict[str, Dict[_Labels, float]] = {}
        self._callbacks: Dict[str, Callable[[], float]] = {}
        self._commandLabels: Dict[str, set] = {}
        self.describe("mailplat_connections_total", "counter", "Connections accepted, by protocol listener.")
        self.describe("mailplat_connections_open", "gauge", "Connections open now, by protocol listener.")
        self.describe("mailplat_commands_total", "counter", "Commands received, by protocol and command.")
        self.describe("mailplat_login_failures_total", "counter", "Refused logins, by protocol.")
        self.describe("mailplat_deliveries_total", "counter", "Messages taken for local delivery or the queue, by result.")
        self.describe("mailplat_queue_depth", "gauge", "Messages in the outbound queue.")

    def describe(self, name: str, kind: str, text: str) -> None:
        """
        Declare a metric (C{kind} is C{counter} or C{gauge}).
        """
        self.help[name] = (kind, text)
        self._values.setdefault(name, {})

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """
        Add C{amount} to the value of C{name} with C{labels}.
        """
        key = tuple(sorted(labels.items()))
        values = self._values[name]
        values[key] = values.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> float:
        """
        The current value of C{name} with C{labels} (0 when never counted).
        """
        if name in self._callbacks and not labels:
            return self._callbacks[name]()
        return self._values[name].get(tuple(sorted(labels.items())), 0)

    def gaugeFunction(self, name: str, function: Callable[[], float]) -> None:
        """
        Take the unlabelled value of C{name} from C{function} at each read.
        """
        self._callbacks[name] = function

    def command(self, protocol: str, verb: str) -> None:
        """
        Count one command of C{protocol}, keeping at most
        L{MAX_COMMAND_LABELS} distinct verbs.
        """
        verb = verb.upper() if verb.isascii() and verb.isalpha() and len(verb) <= 20 else "other"
        seen = self._commandLabels.setdefault(protocol, set())
        if verb not in seen:
            if len(seen) >= MAX_COMMAND_LABELS:
                verb = "other"
            seen.add(verb)
        self.inc("mailplat_commands_total", protocol=protocol, command=verb)

    def render(self) -> bytes:
        """
        Every metric in the Prometheus text exposition format.
        """
        lines: List[str] = []
        for name in sorted(self.help):
            kind, text = self.help[name]
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            if name in self._callbacks:
                try:
                    lines.append(f"{name} {float(self._callbacks[name]())!r}")
                except Exception:
                    pass
            for labels, value in sorted(self._values[name].items()):
                lines.append(f"{name}{_labelText(labels)} {float(value)!r}")
        return ("\n".join(lines) + "\n").encode("utf-8")


class MetricsResource(Resource):
    """
    C{GET /metrics}: the exposition of a L{Metrics}.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.render()


def metricsSite(metrics: Metrics) -> Site:
    """
    The web site to serve C{metrics} with, at C{/metrics} (and C{/}).
    """
    root = Resource()
    resource = MetricsResource(metrics)
    root.putChild(b"metrics", resource)
    root.putChild(b"", resource)
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site


def _innermost(protocol: Any) -> Any:
    """
    The application protocol under TLS wrappers.
    """
    while hasattr(protocol, "wrappedProtocol"):
        protocol = protocol.wrappedProtocol
    return protocol


def _verbOfLine(line: Any) -> str:
    if isinstance(line, bytes):
        line = line.decode("ascii", "replace")
    return str(line).partition(" ")[0]


class _CountingFactory(ServerFactory):
    """
    Wraps a listener's factory: counts its connections and, through the
    protocol's command dispatch method, its commands.
    """

    def __init__(self, wrapped: Factory, name: str, protocol: str, metrics: Metrics) -> None:
        self.wrapped = wrapped
        self.name = name
        self.protocolName = protocol
        self.metrics = metrics
        self.noisy = False

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        return self.wrapped.logPrefix()

    def buildProtocol(self, addr: IAddress) -> Optional[Protocol]:
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:
            return None
        metrics, name = self.metrics, self.name
        metrics.inc("mailplat_connections_total", listener=name)
        metrics.inc("mailplat_connections_open", listener=name)
        lost = protocol.connectionLost

        def connectionLost(reason: Failure) -> Any:
            metrics.inc("mailplat_connections_open", -1, listener=name)
            return lost(reason)

        protocol.connectionLost = connectionLost  # type: ignore[method-assign]
        self._countCommands(_innermost(protocol))
        return protocol

    def _countCommands(self, inner: Any) -> None:
        metrics, protocolName = self.metrics, self.protocolName
        if protocolName == "imap" and hasattr(inner, "_run"):
            run = inner._run

            def counted(tag: bytes, name: bytes, *args: Any) -> Any:
                metrics.command(protocolName, _verbOfLine(name))
                return run(tag, name, *args)

            inner._run = counted
        elif hasattr(inner, "_command"):
            command = inner._command

            def countedCommand(line: Any) -> Any:
                metrics.command(protocolName, _verbOfLine(line))
                return command(line)

            inner._command = countedCommand


def instrumentFactory(factory: Factory, name: str, metrics: Metrics) -> Factory:
    """
    Wrap the factory of listener C{name} (C{smtp}, C{pop3s}, ...) so that
    its connections and commands are counted in C{metrics}.
    """
    protocol = {"submission": "smtp", "smtps": "smtp", "pop3s": "pop3", "imaps": "imap"}.get(name, name)
    return _CountingFactory(factory, name, protocol, metrics)


class CountingPortal:
    """
    Wraps the server's portal for one protocol and counts its refused
    logins; everything else is the wrapped portal's (so every protocol
    shares one portal and its login throttling).
    """

    def __init__(self, portal: Portal, protocol: str, metrics: Metrics) -> None:
        self.portal = portal
        self.protocolName = protocol
        self.metrics = metrics

    def listCredentialsInterfaces(self) -> List[Any]:
        """
        See L{Portal.listCredentialsInterfaces}.
        """
        return self.portal.listCredentialsInterfaces()

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        """
        Log in through the wrapped portal, counting a refusal.
        """

        def refused(failure: Failure) -> Failure:
            if failure.check(UnauthorizedLogin, UnhandledCredentials):
                self.metrics.inc("mailplat_login_failures_total", protocol=self.protocolName)
            return failure

        return self.portal.login(credentials, mind, *interfaces).addErrback(refused)


def countDeliveries(delivery: Any, metrics: Metrics) -> None:
    """
    Count the outcome of every C{deliver} call of C{delivery} (patched on
    the instance, so its class is left alone).
    """
    deliver = delivery.deliver

    def counted(*args: Any, **kwargs: Any) -> Any:
        d = defer.maybeDeferred(deliver, *args, **kwargs)

        def ok(result: Any) -> Any:
            metrics.inc("mailplat_deliveries_total", result="ok")
            return result

        def failed(failure: Failure) -> Failure:
            metrics.inc("mailplat_deliveries_total", result="failed")
            return failure

        return d.addCallbacks(ok, failed)

    delivery.deliver = counted


def jsonLogObserver() -> Any:
    """
    A log observer writing one JSON object per event to standard output,
    for C{twistd --logger mailplat.metrics.jsonLogObserver -n mailplat}
    (twistd's own C{--logger} takes a zero-argument observer factory, so
    no option of mailplat's is needed).  Each line is
    L{twisted.logger.eventAsJSON} of the event, readable back with
    L{twisted.logger.eventsFromJSONLogFile}.
    """
    import sys

    from twisted.logger import jsonFileLogObserver

    return jsonFileLogObserver(sys.stdout, recordSeparator="")
