"""
What a running server counts, kept in a prometheus-client registry and
served in the Prometheus text format on an optional listener
(C{[listen] metrics = "tcp:9100:interface=127.0.0.1"}, C{--metrics}).

Everything is hooked in from outside the protocol modules:

  - L{instrumentFactory} wraps a listener's factory in a protocol wrapper
    that counts connections, times every command (from the moment the
    protocol takes up the command line to its final reply: the tagged
    reply for IMAP, the reply after the data for SMTP C{DATA}/C{BDAT}),
    times TLS handshakes (STARTTLS and implicit TLS, through Twisted's
    L{IHandshakeListener}), and logs one line when a session ends;
  - L{CountingPortal} counts refused logins by protocol and mechanism;
  - L{countDeliveries} counts deliveries by result and logs one line each;
  - L{QueueCollector} reads the outbound queue's depth and oldest entry
    when the page is read.

Commands are counted and timed into plain per-command figures
(L{_CommandStats}: a few integer additions and a bisection per command,
against about a microsecond for prometheus-client's C{inc} and C{observe},
which take a lock) and added into the prometheus-client metrics by
L{Metrics.flush}: before every read of the registry (the page,
L{Metrics.value}), and, in the multiprocess mode, every L{FLUSH_INTERVAL}
seconds, when a connection ends and at shutdown, so that the page served
by another process sees them.

Each L{Metrics} has its own registry, so two servers in one process (as in
the tests) count apart.  With C{--workers N} every process writes its
values to files in one directory (prometheus-client's multiprocess mode,
L{Metrics.shareThrough}) and the parent's page shows their sum: counters
and histograms of every process that ever ran, the open connections of the
live ones; the queue gauges are the parent's own.
"""

import glob
import os
import time
from bisect import bisect_left
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from mailplat.netutil import IConnectionTransport

log = Logger()

#: Distinct command labels kept per protocol; any further verb is "other",
#: so that a client sending made-up verbs cannot grow the label set.
MAX_COMMAND_LABELS = 64

#: Upper bounds (seconds) of the command latency histogram's buckets.
COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Upper bounds (seconds) of the TLS handshake duration histogram's buckets.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The protocol each listener speaks.
LISTENER_PROTOCOLS = {"smtp": "smtp", "submission": "smtp", "smtps": "smtp", "pop3": "pop3", "pop3s": "pop3",
                      "imap": "imap", "imaps": "imap"}

#: The environment variable prometheus-client's multiprocess mode reads.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds between two flushes of the command figures into the shared
#: files, in the multiprocess mode (L{Metrics.shareThrough}).
FLUSH_INTERVAL = 1.0


def prepareDirectory(path: str, empty: bool = True) -> str:
    """
    Make C{path} a directory for the processes' metric files and, with
    C{empty}, remove the files of an earlier run (their processes are
    gone; the parent does this once, before any child starts).

    @return: C{path}, absolute.
    """
    path = os.path.abspath(path)
    os.makedirs(path, mode=0o700, exist_ok=True)
    if empty:
        for name in glob.glob(os.path.join(path, "*.db")):
            os.remove(name)
    return path


def processEnded(directory: str, pid: int) -> None:
    """
    A process that wrote to C{directory} ended: its open connections no
    longer count (its counters and histograms still do).
    """
    mark_process_dead(pid, directory)


def _useDirectory(directory: str) -> None:
    """
    Make every metric value this process creates from now on live in a
    file in C{directory} (prometheus-client chooses that per process: it is
    how other processes' values can be read and summed).  A child started
    with L{MULTIPROCESS_ENV} already set has this from the start.
    """
    os.environ[MULTIPROCESS_ENV] = directory
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


def _verb(verb: str) -> str:
    return verb.upper() if verb.isascii() and verb.isalpha() and len(verb) <= 20 else "other"


class _CommandStats:
    """
    The figures of one command label of one protocol gathered since the
    last L{Metrics.flush}, as plain numbers.

    @ivar calls: commands taken up, for C{mailplat_commands_total}.
    @ivar count: commands finished (observations of the latency histogram).
    @ivar total: the sum of their durations, seconds.
    @ivar buckets: observations by histogram bucket (not cumulative): index
        C{i} holds the durations above C{COMMAND_BUCKETS[i - 1]} up to
        C{COMMAND_BUCKETS[i]}, the last one those above every bound.
    @ivar counter: the prometheus-client counter child they go to.
    @ivar histogram: the prometheus-client histogram child they go to.
    """

    __slots__ = ("calls", "count", "total", "buckets", "counter", "histogram")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self.calls = 0
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(COMMAND_BUCKETS) + 1)
        self.counter = counter
        self.histogram = histogram

    def observe(self, duration: float) -> None:
        """
        Record one command's duration (a negative one as 0).
        """
        if not duration > 0.0:
            duration = 0.0
        self.count += 1
        self.total += duration
        # The first bound at or above the duration: prometheus-client's
        # "le" buckets.
        self.buckets[bisect_left(COMMAND_BUCKETS, duration)] += 1

    def flush(self) -> None:
        """
        Add what was gathered into the prometheus-client metrics and start
        again from zero.
        """
        if self.calls:
            calls, self.calls = self.calls, 0
            self.counter.inc(calls)
        if self.count:
            histogram, buckets = self.histogram, self.buckets
            total, self.total, self.count = self.total, 0.0, 0
            self.buckets = [0] * len(buckets)
            # A histogram child keeps its sum and one value per bucket;
            # adding to those is what observe() does, once per call.
            histogram._sum.inc(total)
            for i, n in enumerate(buckets):
                if n:
                    histogram._buckets[i].inc(n)


def _checkHistogram(histogram: Any) -> None:
    """
    Make sure a histogram child is laid out as L{_CommandStats.flush}
    expects (prometheus-client keeps a C{_sum} value and one C{_buckets}
    value per bound, C{+Inf} last), so that a release that changes it is
    noticed at start, not by wrong figures.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    if (not hasattr(getattr(histogram, "_sum", None), "inc")
            or len(getattr(histogram, "_buckets", ())) != len(COMMAND_BUCKETS) + 1
            or bounds != [float(b) for b in COMMAND_BUCKETS] + [float("inf")]):
        raise RuntimeError("this prometheus-client's Histogram has no _sum and _buckets values as "
                           "mailplat.metrics expects: pin prometheus-client to a release it was tested with")


class _Flusher:
    """
    A collector registered first in a L{Metrics}' registry: every read of
    the registry (the page, L{Metrics.value}) first adds the command
    figures gathered so far, so it shows exact counts.
    """

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def describe(self) -> List[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        self.metrics.flush()
        return iter(())


class Metrics:
    """
    One server's metrics: a prometheus-client registry and the counters,
    gauges and histograms in it, with the few calls the hooks make.

    @ivar registry: what the page shows (L{render}).
    @ivar directory: with C{--workers}, the directory every process writes
        its values to (see L{shareThrough}), else L{None}.
    @ivar timer: seconds, for durations (monotonic).
    """

    def __init__(self, timer: Callable[[], float] = time.monotonic) -> None:
        self.timer = timer
        self.directory: Optional[str] = None
        self._collectors: List[Any] = []
        self._flushLoop: Optional[LoopingCall] = None
        if MULTIPROCESS_ENV not in os.environ:
            # At start, in the process that serves alone or starts the
            # workers (a throwaway histogram in a worker would write to
            # the shared files).
            _checkHistogram(Histogram("mailplat_layout_check", "", buckets=COMMAND_BUCKETS,
                                      registry=CollectorRegistry()))
        self._build()

    def _build(self) -> None:
        """
        Make the registry and the metrics, in this process alone or (with
        L{directory}) in the shared files.
        """
        self.registry = CollectorRegistry()
        # First, so that the figures gathered are added before any other
        # collector (the shared files' reader too) is read.
        self.registry.register(_Flusher(self))
        own: Optional[CollectorRegistry] = self.registry
        if self.directory is not None:
            MultiProcessCollector(self.registry, path=self.directory)
            own = None
        self._labels: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], Any] = {}
        self._commandLabels: Dict[str, set] = {}
        # (protocol, label) to its figures; protocol to {verb as the
        # protocol gives it (str or bytes): figures}, bounded.
        self._stats: Dict[Tuple[str, str], _CommandStats] = {}
        self._verbs: Dict[str, Dict[Any, _CommandStats]] = {}
        self.metrics: Dict[str, Any] = {
            "mailplat_connections_total": Counter(
                "mailplat_connections", "Connections accepted, by protocol listener.", ["listener"], registry=own),
            "mailplat_connections_open": Gauge(
                "mailplat_connections_open", "Connections open now, by protocol listener.", ["listener"],
                registry=own, multiprocess_mode="livesum"),
            "mailplat_commands_total": Counter(
                "mailplat_commands", "Commands received, by protocol and command.", ["command", "protocol"],
                registry=own),
            "mailplat_command_duration_seconds": Histogram(
                "mailplat_command_duration_seconds",
                "Time from taking up a command line to its final reply, by protocol and command.",
                ["command", "protocol"], buckets=COMMAND_BUCKETS, registry=own),
            "mailplat_login_failures_total": Counter(
                "mailplat_login_failures", "Refused logins, by protocol and credential mechanism.",
                ["mechanism", "protocol"], registry=own),
            "mailplat_deliveries_total": Counter(
                "mailplat_deliveries",
                "Messages taken for local delivery or the queue, by result (ok, rejected, deferred, failed).",
                ["result"], registry=own),
            "mailplat_tls_handshakes_total": Counter(
                "mailplat_tls_handshakes", "TLS handshakes (STARTTLS and implicit TLS), by listener and result.",
                ["listener", "protocol", "result"], registry=own),
            "mailplat_tls_handshake_duration_seconds": Histogram(
                "mailplat_tls_handshake_duration_seconds", "Duration of completed TLS handshakes, by listener.",
                ["listener", "protocol"], buckets=HANDSHAKE_BUCKETS, registry=own),
        }
        for collector in self._collectors:
            self.registry.register(collector)

    def shareThrough(self, directory: str, clock: Optional[IReactorTime] = None) -> None:
        """
        Keep this process's values in files in C{directory}, which every
        process of the server writes to, and show on the page the sum over
        all of them.  Call before serving (values counted so far are
        dropped).  The command figures are written every
        L{FLUSH_INTERVAL} seconds of C{clock} (the reactor by default),
        when a connection ends, and when C{clock} shuts down.
        """
        self.stopFlushing()
        self.directory = os.path.abspath(directory)
        _useDirectory(self.directory)
        self._build()
        source: Any = clock
        if source is None:
            from twisted.internet import reactor as source
        loop = self._flushLoop = LoopingCall(self._flushSafely)
        loop.clock = source
        loop.start(FLUSH_INTERVAL, now=False)
        trigger = getattr(source, "addSystemEventTrigger", None)
        if trigger is not None:
            trigger("before", "shutdown", self.stopFlushing)

    def stopFlushing(self) -> None:
        """
        Stop the periodic flush of L{shareThrough}, flushing one last time.
        """
        loop, self._flushLoop = self._flushLoop, None
        if loop is not None:
            if loop.running:
                loop.stop()
            self._flushSafely()

    def _flushSafely(self) -> None:
        try:
            self.flush()
        except Exception:
            log.failure("writing the command metrics failed")

    def flush(self) -> None:
        """
        Add the command figures gathered since the last flush into the
        prometheus-client metrics (in the multiprocess mode, into this
        process's files).  Every read of the registry does it first.
        """
        for stats in self._stats.values():
            if stats.calls or stats.count:
                stats.flush()

    def connectionEnded(self) -> None:
        """
        A connection ended: in the multiprocess mode, write its commands'
        figures now rather than up to L{FLUSH_INTERVAL} later.
        """
        if self.directory is not None:
            self.flush()

    def register(self, collector: Any) -> None:
        """
        Add a collector read at each scrape in this process only (such as
        L{QueueCollector}: the parent's, not summed over processes).
        """
        self._collectors.append(collector)
        self.registry.register(collector)

    def _child(self, name: str, labels: Dict[str, str]) -> Any:
        key = (name, tuple(sorted(labels.items())))
        child = self._labels.get(key)
        if child is None:
            child = self._labels[key] = self.metrics[name].labels(**labels)
        return child

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """
        Add C{amount} to counter or gauge C{name} with C{labels}.
        """
        self._child(name, labels).inc(amount)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """
        Record C{value} in histogram C{name} with C{labels}.
        """
        self._child(name, labels).observe(value)

    def value(self, name: str, **labels: str) -> float:
        """
        The value of sample C{name} (C{..._total}, C{..._count}, a gauge)
        with exactly C{labels} as the page shows it; 0 when never counted.
        """
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def _commandLabel(self, protocol: str, verb: str) -> str:
        verb = _verb(verb)
        seen = self._commandLabels.setdefault(protocol, set())
        if verb not in seen:
            if len(seen) >= MAX_COMMAND_LABELS:
                return "other"
            seen.add(verb)
        return verb

    def commandStats(self, protocol: str, verb: Any) -> _CommandStats:
        """
        The figures that command C{verb} (as the protocol gives it, C{str}
        or C{bytes}) of C{protocol} counts into: one per label (at most
        L{MAX_COMMAND_LABELS} distinct verbs, then C{other}).  Looked up
        in a per-protocol table the hooks keep (L{commandTable}).
        """
        table = self.commandTable(protocol)
        stats = table.get(verb)
        if stats is not None:
            return stats
        text = bytes(verb).decode("ascii", "replace") if isinstance(verb, (bytes, bytearray)) else str(verb)
        label = self._commandLabel(protocol, text)
        stats = self._stats.get((protocol, label))
        if stats is None:
            labels = {"command": label, "protocol": protocol}
            histogram = self._child("mailplat_command_duration_seconds", labels)
            _checkHistogram(histogram)
            stats = self._stats[(protocol, label)] = _CommandStats(
                self._child("mailplat_commands_total", labels), histogram)
        if len(table) < 4 * MAX_COMMAND_LABELS:
            table[verb if isinstance(verb, (str, bytes)) else text] = stats
        return stats

    def commandTable(self, protocol: str) -> Dict[Any, _CommandStats]:
        """
        C{protocol}'s verbs seen so far (as the protocol gives them) to
        their figures; a hook looks a verb up here first, then asks
        L{commandStats}.  The same dict for the life of the registry.
        """
        table = self._verbs.get(protocol)
        if table is None:
            table = self._verbs[protocol] = {}
        return table

    def command(self, protocol: str, verb: str) -> "CommandTimer":
        """
        Count one command of C{protocol} (at most L{MAX_COMMAND_LABELS}
        distinct verbs, then C{other}) and start its timer.
        """
        stats = self.commandStats(protocol, verb)
        stats.calls += 1
        return CommandTimer(self, stats)

    def render(self, accept: str = "") -> Tuple[bytes, str]:
        """
        The page: every metric in the format the C{Accept} header asks for
        (the Prometheus text format by default), and its content type.
        """
        encoder, contentType = choose_encoder(accept)
        return encoder(self.registry), contentType


class CommandTimer:
    """
    The timer of one command; L{finished} records its duration once.
    """

    __slots__ = ("_metrics", "_stats", "_start")

    def __init__(self, metrics: Metrics, stats: _CommandStats) -> None:
        self._metrics = metrics
        self._stats = stats
        self._start: Optional[float] = metrics.timer()

    def finished(self) -> None:
        """
        The command's final reply is written.
        """
        if self._start is not None:
            self._stats.observe(self._metrics.timer() - self._start)
            self._start = None


class QueueCollector:
    """
    The outbound queue's depth and the age of its oldest entry, read at
    each scrape from the queue's C{depth} and C{oldest}: the SQL queue
    keeps them from its claim rounds (reading the table here would block
    the reactor), the file queue from its entries in memory, brought in
    line with its directory; a queue without them is listed.
    """

    def __init__(self, queue: Any, clock: Any) -> None:
        self.queue = queue
        self.clock = clock

    def figures(self) -> Tuple[int, Optional[float]]:
        """
        C{(depth, age of the oldest entry in seconds or None)}.
        """
        depth = getattr(self.queue, "depth", None)
        if isinstance(depth, int):
            oldest = getattr(self.queue, "oldest", None)
        else:
            entries = self.queue.list()
            depth = len(entries)
            oldest = min((e.created for e in entries), default=None)
        if not depth:
            return 0, 0.0
        age = None if not isinstance(oldest, (int, float)) else max(0.0, self.clock.seconds() - oldest)
        return depth, age

    def describe(self) -> List[Any]:
        return [
            GaugeMetricFamily("mailplat_queue_depth", "Messages in the outbound queue."),
            GaugeMetricFamily("mailplat_queue_oldest_age_seconds", "Age of the oldest message in the outbound queue."),
        ]

    def collect(self) -> Iterator[Any]:
        try:
            depth, age = self.figures()
        except Exception:
            log.failure("reading the queue for the metrics page failed")
            return
        yield GaugeMetricFamily("mailplat_queue_depth", "Messages in the outbound queue.", value=depth)
        if age is not None:
            yield GaugeMetricFamily("mailplat_queue_oldest_age_seconds",
                                    "Age of the oldest message in the outbound queue.", value=age)


class MetricsResource(Resource):
    """
    C{GET /metrics}: the page of a L{Metrics}.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        body, contentType = self.metrics.render(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return body


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
    The application protocol under protocol wrappers.
    """
    for _ in range(8):
        inner = getattr(protocol, "wrappedProtocol", None)
        if inner is None:
            break
        protocol = inner
    return protocol


def _passThrough(stats: _CommandStats, timer: Callable[[], float], start: float) -> Callable[[Any], Any]:
    def finished(result: Any) -> Any:
        stats.observe(timer() - start)
        return result

    return finished


def _hookSMTP(inner: Any, session: "_Instrumented") -> None:
    """
    SMTP answers one command at a time (later pipelined lines wait in the
    buffer), so the command is the one taken up last; its final reply is
    the first that is not an intermediate C{334} (AUTH) or C{354} (DATA).
    """
    command, reply = inner._command, inner._reply

    def timedCommand(line: str) -> Any:
        session.started(line.partition(" ")[0])
        return command(line)

    def timedReply(r: Any) -> Any:
        result = reply(r)
        if getattr(r, "code", None) not in (334, 354):
            session.finished()
        return result

    inner._command, inner._reply = timedCommand, timedReply


def _hookPOP3(inner: Any, session: "_Instrumented") -> None:
    """
    A POP3 command is done when C{_command} returns, or when the Deferred
    it returns (a command that waits on the store or streams a message)
    fires.  An unknown or misplaced command raises, and is answered with
    C{-ERR} at once.

    This runs for every command, RETR of a small message included: the
    figures are looked up by the verb's bytes in a dict and added to as
    plain numbers (L{_CommandStats}), with no object made per command.
    """
    command = inner._command
    metrics = session.factory.metrics
    timer = metrics.timer
    table = metrics.commandTable("pop3")

    def timedCommand(line: bytes) -> Any:
        verb = line.partition(b" ")[0]
        stats = table.get(verb)
        if stats is None:
            stats = metrics.commandStats("pop3", verb)
        stats.calls += 1
        session.commands += 1
        if session.user is None:
            # Seen before each command: QUIT forgets the account before
            # the connection ends.
            session.user = _userOf(inner)
        start = timer()
        try:
            result = command(line)
        except BaseException:
            stats.observe(timer() - start)
            raise
        # (The None test first: Deferred is an ABC, whose isinstance check
        # is a Python call.)
        if result is not None and isinstance(result, defer.Deferred):
            result.addBoth(_passThrough(stats, timer, start))
            return result
        # stats.observe(), inline: this is every RETR of a small message.
        elapsed = timer() - start
        if not elapsed > 0.0:
            elapsed = 0.0
        stats.count += 1
        stats.total += elapsed
        stats.buckets[bisect_left(COMMAND_BUCKETS, elapsed)] += 1
        return result

    inner._command = timedCommand


def _hookIMAP(inner: Any, session: "_Instrumented") -> None:
    """
    An IMAP command runs in C{_run}, whose Deferred fires once the tagged
    reply is written.
    """
    run = inner._run
    timer = session.factory.metrics.timer

    def timedRun(tag: bytes, name: bytes, *args: Any) -> Any:
        stats = session.started(name)
        return run(tag, name, *args).addBoth(_passThrough(stats, timer, session.startedAt))

    inner._run = timedRun


#: Protocol name to the methods its hook wraps, and the hook.  A protocol
#: without them (a connection refused by the limits) is counted, not timed.
_HOOKS = {"smtp": (("_command", "_reply"), _hookSMTP), "pop3": (("_command",), _hookPOP3),
          "imap": (("_run",), _hookIMAP)}


def _userOf(inner: Any) -> Optional[str]:
    """
    The address a session logged in as, if it did.
    """
    session = getattr(inner, "session", None)
    user = getattr(session, "authenticated", None)
    if user:
        return str(user)
    for name in ("account", "_account"):
        address = getattr(getattr(inner, name, None), "address", None)
        if address:
            return str(address)
    return None


@implementer(IHandshakeListener)
class _Instrumented(ProtocolWrapper):
    """
    One connection of an instrumented listener: counts it while open, times
    its commands and its TLS handshake, and logs one line when it ends.

    Sits directly under the TLS layer of an implicit-TLS listener, and
    outermost on the others, so that C{transport.startTLS} wraps it: in both
    cases Twisted tells it when the handshake is done.
    """

    factory: "InstrumentedFactory"
    transport: IConnectionTransport

    def __init__(self, factory: "InstrumentedFactory", wrappedProtocol: Protocol) -> None:
        super().__init__(factory, wrappedProtocol)
        metrics = self._metrics = factory.metrics
        self._opened = metrics.timer()
        self._table = metrics.commandTable(factory.protocolName)
        # The command taken up last, until its final reply (SMTP).
        self._stats: Optional[_CommandStats] = None
        self.startedAt = 0.0
        self._tlsStarted: Optional[float] = None
        self._tlsDone = False
        self.commands = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.user: Optional[str] = None
        inner = _innermost(wrappedProtocol)
        names, hook = _HOOKS[factory.protocolName]
        self._inner: Any = None
        if all(hasattr(inner, name) for name in names):
            hook(inner, self)
            self._inner = inner

    # Commands.

    def started(self, verb: Any) -> _CommandStats:
        """
        The protocol took up command C{verb} (the first word of its line,
        C{str} or C{bytes}): count it and note when (L{startedAt}).

        @return: the figures its duration goes to.
        """
        self.commands += 1
        if self.user is None:
            # Seen before each command: a POP3 QUIT or IMAP LOGOUT forgets
            # the account before the connection ends.
            self.user = _userOf(self._inner)
        stats = self._table.get(verb)
        if stats is None:
            stats = self._metrics.commandStats(self.factory.protocolName, verb)
        stats.calls += 1
        self._stats = stats
        self.startedAt = self._metrics.timer()
        return stats

    def finished(self) -> None:
        """
        The command taken up last has its final reply.
        """
        stats = self._stats
        if stats is not None:
            self._stats = None
            stats.observe(self._metrics.timer() - self.startedAt)

    # TLS.

    def makeConnection(self, transport: Any) -> None:
        if isinstance(transport, TLSMemoryBIOProtocol):
            # Implicit TLS: the handshake starts now.
            self._tlsStarted = self.factory.metrics.timer()
        super().makeConnection(transport)

    def __getattr__(self, name: str) -> Any:
        if name == "startTLS":
            start = getattr(self.transport, "startTLS")

            def startTLS(contextFactory: Any, normal: bool = True) -> Any:
                began = self.factory.metrics.timer()
                result = start(contextFactory, normal)
                # Twisted tells the protocol the TLS layer wraps, which is
                # this one unless another wrapper was put outside it.
                layer = getattr(self.transport, "protocol", None)
                if isinstance(layer, TLSMemoryBIOProtocol) and layer.wrappedProtocol is self:
                    self._tlsStarted = began
                return result

            return startTLS
        return getattr(self.transport, name)

    def handshakeCompleted(self) -> None:
        """
        See L{IHandshakeListener}: count the handshake and its duration.
        """
        if self._tlsStarted is not None and not self._tlsDone:
            self._tlsDone = True
            metrics, listener = self.factory.metrics, self.factory.name
            protocol = self.factory.protocolName
            metrics.inc("mailplat_tls_handshakes_total", listener=listener, protocol=protocol, result="ok")
            metrics.observe("mailplat_tls_handshake_duration_seconds", max(0.0, metrics.timer() - self._tlsStarted),
                            listener=listener, protocol=protocol)
        # Wrappers in between copy this one's interfaces (ProtocolWrapper
        # does): tell only the application protocol, if it listens.
        inner = _innermost(self.wrappedProtocol)
        if not isinstance(inner, ProtocolWrapper) and IHandshakeListener.providedBy(inner):
            inner.handshakeCompleted()

    # Bytes.

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        self.bytesOut += len(data)
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:
        data = list(data)
        self.bytesOut += sum(map(len, data))
        self.transport.writeSequence(data)

    # End.

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner is not None:
            self.user = _userOf(self._inner) or self.user
        try:
            super().connectionLost(reason)
        finally:
            self._ended(self.user)

    def _ended(self, user: Optional[str]) -> None:
        factory = self.factory
        metrics = factory.metrics
        if self._tlsStarted is not None and not self._tlsDone:
            self._tlsDone = True
            metrics.inc("mailplat_tls_handshakes_total", listener=factory.name, protocol=factory.protocolName,
                        result="failed")
        self._stats = None
        metrics.connectionEnded()
        if self._inner is None:
            return
        peer = getattr(self.getPeer(), "host", "?") if self.transport is not None else "?"
        log.info(
            "{protocol} session from {peer} ended: user {user}, {commands} commands, {bytesIn} bytes in, "
            "{bytesOut} bytes out, {duration:.3f}s",
            event="session", protocol=factory.protocolName, listener=factory.name, peer=peer, user=user or "-",
            commands=self.commands, bytesIn=self.bytesIn, bytesOut=self.bytesOut,
            duration=max(0.0, metrics.timer() - self._opened), tls=self._tlsDone and self._tlsStarted is not None,
        )


class InstrumentedFactory(WrappingFactory[_Instrumented]):
    """
    Wraps a listener's factory: see L{_Instrumented}.

    @ivar name: the listener (C{smtp}, C{submission}, C{imaps}, ...).
    @ivar protocolName: the protocol it speaks (C{smtp}, C{pop3}, C{imap}).
    """

    protocol = _Instrumented
    noisy = False

    def __init__(self, wrappedFactory: "Factory[Any]", name: str, metrics: Metrics) -> None:
        super().__init__(wrappedFactory)
        self.name = name
        self.protocolName = LISTENER_PROTOCOLS.get(name, name)
        if self.protocolName not in _HOOKS:
            raise ValueError(f"no metrics hooks for listener {name!r}")
        self.metrics = metrics

    # WrappingFactory says it always builds a wrapper, but the factory
    # contract (the listening port) lets it give None to drop the connection.
    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[_Instrumented]:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        """
        A connection begins (not kept in a dict: the gauge is the count).
        """
        self.metrics.inc("mailplat_connections_total", listener=self.name)
        self.metrics.inc("mailplat_connections_open", listener=self.name)

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        """
        A connection ended.
        """
        self.metrics.inc("mailplat_connections_open", -1, listener=self.name)


def instrumentFactory(factory: "Factory[Any]", name: str, metrics: Metrics) -> InstrumentedFactory:
    """
    Wrap the factory of listener C{name} (C{smtp}, C{pop3s}, ...) so that
    its connections, commands and TLS handshakes are counted in
    C{metrics}.  For an implicit-TLS listener, wrap the factory I{inside}
    the C{TLSMemoryBIOFactory}.
    """
    return InstrumentedFactory(factory, name, metrics)


def _mechanism(credentials: Any) -> str:
    """
    A bounded name for the kind of credentials a login used.
    """
    kind = type(credentials).__name__
    if "SCRAM" in kind:
        return "SCRAM-SHA-256"
    if "CramMD5" in kind:
        return "CRAM-MD5"
    if "APOP" in kind:
        return "APOP"
    if "UsernamePassword" in kind:
        return "password"
    return "other"


class CountingPortal:
    """
    Wraps the server's portal for one protocol and counts its refused
    logins by mechanism; everything else is the wrapped portal's (so every
    protocol shares one portal and its login throttling).
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
                self.metrics.inc("mailplat_login_failures_total", protocol=self.protocolName,
                                 mechanism=_mechanism(credentials))
            return failure

        return self.portal.login(credentials, mind, *interfaces).addErrback(refused)


def _deliveryResult(failure: Failure) -> str:
    code = getattr(failure.value, "code", None)
    if isinstance(code, int) and 400 <= code < 500:
        return "deferred"
    if isinstance(code, int) and 500 <= code < 600:
        return "rejected"
    return "failed"


def _size(message: Any) -> Optional[int]:
    """
    The size of a message file, found by seeking: never by C{fileno()},
    which makes a C{SpooledTemporaryFile} (the SMTP spool) roll over to a
    file on disk, a file created and removed per message.
    """
    try:
        here = message.tell()
        size = message.seek(0, os.SEEK_END)
        message.seek(here)
        return int(size)
    except (AttributeError, OSError, ValueError, TypeError):
        return None


def countDeliveries(delivery: Any, metrics: Metrics) -> None:
    """
    Count the outcome of every C{deliver(session, sender, recipients,
    message, ...)} call of C{delivery}, and log one line for each
    (patched on the instance, so its class is left alone).  The result is
    C{ok}, C{rejected} (a 5xx reply), C{deferred} (a 4xx reply) or
    C{failed} (an unexpected error).
    """
    deliver = delivery.deliver

    def counted(*args: Any, **kwargs: Any) -> Any:
        started = metrics.timer()
        session = args[0] if args else kwargs.get("session")
        sender = args[1] if len(args) > 1 else kwargs.get("sender")
        recipients = args[2] if len(args) > 2 else kwargs.get("recipients", ())
        message = args[3] if len(args) > 3 else kwargs.get("message")
        size = _size(message) if message is not None else None
        d = defer.maybeDeferred(deliver, *args, **kwargs)

        def record(result: Any, outcome: str) -> None:
            metrics.inc("mailplat_deliveries_total", result=outcome)
            reason = "" if outcome == "ok" else getattr(result, "getErrorMessage", lambda: "")()
            reason = f" ({reason})" if reason else ""
            recipientList = list(recipients or ())
            shownSize = size if size is not None else "?"
            duration = max(0.0, metrics.timer() - started)
            # The line is written once per message: made here with one
            # f-string, as the text log shows it, rather than by the
            # logger's field-by-field formatting (several times dearer);
            # the fields are in the event all the same.
            log.info(
                "{text}",
                text=f"delivery from <{sender or ''}> to {recipientList}: {outcome}{reason}, {shownSize} bytes, "
                     f"{duration:.3f}s",
                event="delivery", sender=sender or "", recipients=recipientList, result=outcome,
                reason=reason, size=shownSize, peer=getattr(session, "peerHost", None),
                user=getattr(session, "authenticated", None), duration=duration,
            )

        def ok(result: Any) -> Any:
            record(result, "ok")
            return result

        def failed(failure: Failure) -> Failure:
            record(failure, _deliveryResult(failure))
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
    L{twisted.logger.eventsFromJSONLogFile}; the session and delivery
    lines carry their figures as fields (C{event}, C{protocol}, C{peer},
    C{user}, C{duration}, ...).
    """
    import sys

    from twisted.logger import jsonFileLogObserver

    return jsonFileLogObserver(sys.stdout, recordSeparator="")
