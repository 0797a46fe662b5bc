"""
Assembling a running server from a L{Config}: the store, the cred portal,
the delivery pipeline and one listening service per protocol.  The twistd
plugin only calls L{makeService}.
"""

import gc
import os
import signal
import sys
import threading
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional

from twisted.application import service, strports
from twisted.application.service import MultiService
from twisted.internet import defer, reactor
from twisted.names import client as dnsclient
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailplat.auth.realm import MailRealm
from mailplat.config import DEFAULT_LISTENERS, DISABLED, IMPLICIT_TLS_LISTENERS, Config, ConfigOptions, workerCount
from mailplat.delivery.directory import StoreDirectory
from mailplat.delivery.sqldirectory import directoryFor
from mailplat.delivery.local import LocalDelivery
from mailplat.imap.index import MessageIndex
from mailplat.delivery.policy import MaxRecipientsPolicy
from mailplat.errors import ConfigError
from mailplat.interfaces import IStore
from mailplat.auth.throttle import LoginThrottle, ThrottledPortal
from mailplat.limits import ConnectionLimitFactory, SharedCounts, limitConnections, prepareSharedCounts, refusalLine
from mailplat.policy.authresults import AuthenticationPolicy, DkimSigningPolicy
from mailplat.policy.dkim import DKIMSigner
from mailplat.policy.greylist import GreylistPolicy
from mailplat.policy.spam import RspamdPolicy, SpamdPolicy
from mailplat.sieve import SieveFilter
from mailplat.metrics import (
    CountingPortal, Metrics, QueueCollector, countDeliveries, instrumentFactory, metricsSite, prepareDirectory,
)
from mailplat.plugins import makeCheckers, makeStore
from mailplat.queue.sql import queueFor
from mailplat.relay import Relay, parseHostPort
from mailplat.relay.runner import QueueRunner
from mailplat.tls import ServerTLSContext, contextForConfig

log = Logger()


class ServerOptions(ConfigOptions):
    """
    C{twistd mailplat} options.  Each overrides the config file's key.
    """

    synopsis = "[options]"
    longdesc = (
        "Run the mailplat mail server (SMTP, POP3, IMAP). With no options it "
        "serves unprivileged ports on 127.0.0.1 from ./data. See README.md."
    )
    optParameters = [
        ["hostname", None, None, "Host name to greet with and put in headers [server.hostname]."],
        ["store", None, None, "Mailbox store, NAME[:ARGS] (maildir, memory, or a plugin's) [server.store]."],
        ["smtp", None, None, "SMTP (MX) listener endpoint, or 'none' [listen.smtp]. Default " + DEFAULT_LISTENERS["smtp"]],
        ["submission", None, None, "Submission (STARTTLS, AUTH required) listener endpoint, or 'none' [listen.submission]. Default " + DEFAULT_LISTENERS["submission"]],
        ["smtps", None, None, "Submission over implicit TLS listener endpoint, or 'none' [listen.smtps]. Default " + DEFAULT_LISTENERS["smtps"]],
        ["pop3", None, None, "POP3 listener endpoint, or 'none' [listen.pop3]. Default " + DEFAULT_LISTENERS["pop3"]],
        ["pop3s", None, None, "POP3 over implicit TLS listener endpoint, or 'none' [listen.pop3s]. Default " + DEFAULT_LISTENERS["pop3s"]],
        ["imap", None, None, "IMAP listener endpoint, or 'none' [listen.imap]. Default " + DEFAULT_LISTENERS["imap"]],
        ["imaps", None, None, "IMAP over implicit TLS listener endpoint, or 'none' [listen.imaps]. Default " + DEFAULT_LISTENERS["imaps"]],
        ["tls-cert", None, None, "TLS certificate, PEM, chain after it [tls.cert]. Default: self-signed in <data-dir>/tls/"],
        ["tls-key", None, None, "The certificate's private key, PEM [tls.key]."],
        ["workers", None, None, "Processes serving the listeners, sharing their sockets; 1 is a single process [server.workers]. Default: one per CPU core."],
        ["metrics", None, None, "Prometheus metrics page endpoint (GET /metrics), or 'none' [listen.metrics]. Default none."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["domain"] = []
        self["auth"] = []

    def opt_domain(self, domain: str) -> None:
        """
        A domain to receive mail for; repeat for more [server.domains].
        """
        self["domain"].append(domain)

    def opt_auth(self, spec: str) -> None:
        """
        A checker, CHECKER[:ARGS] (Twisted strcred style: mailplat, memory,
        file, unix, or a plugin's); repeat for more [server.auth].
        """
        self["auth"].append(spec)

    def opt_help_auth(self) -> None:
        """
        List the installed checkers and exit.
        """
        from mailplat.plugins import checkerFactories

        for name, factory in sorted(checkerFactories().items()):
            print(f"{name}: {factory.authHelp.strip().splitlines()[0]}")
        sys.exit(0)

    def opt_help_stores(self) -> None:
        """
        List the installed stores and exit.
        """
        from mailplat.plugins import storeFactories

        for name, factory in sorted(storeFactories().items()):
            print(f"{name}: {factory.storeHelp}")
        sys.exit(0)

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, then stop with one clear line on any error (no usage dump).
        """
        from twisted.python import usage

        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"mailplat: {e} (see twistd mailplat --help)")

    def applyCommandLine(self, config: Config) -> Config:
        from mailplat.config import _SCHEMA

        changes: dict = {}
        if self["hostname"]:
            changes["hostname"] = _SCHEMA["server"]["hostname"][1]("--hostname", self["hostname"])
        if self["domain"]:
            changes["domains"] = tuple(_SCHEMA["server"]["domains"][1]("--domain", d)[0] for d in self["domain"])
        if self["store"]:
            changes["store"] = self["store"]
        if self["auth"]:
            changes["auth"] = tuple(self["auth"])
        for option, attr in (("tls-cert", "tlsCert"), ("tls-key", "tlsKey")):
            if self[option]:
                changes[attr] = os.path.abspath(self[option])
        if self["workers"]:
            try:
                workers = int(self["workers"])
            except ValueError:
                raise ConfigError(f"--workers: expected a positive whole number, got {self['workers']!r}") from None
            changes["workers"] = _SCHEMA["server"]["workers"][1]("--workers", workers)
        if self["metrics"]:
            changes["metricsListener"] = _SCHEMA["listen"]["metrics"][1]("--metrics", self["metrics"])
        listeners = dict(config.listeners)
        for name in DEFAULT_LISTENERS:
            if self[name]:
                listeners[name] = _SCHEMA["listen"][name][1](f"--{name}", self[name])
        changes["listeners"] = listeners
        return replace(config, **changes)


class StoreService(service.Service):
    """
    Closes the store, and the parts that hold connections or threads of
    their own (a SQL queue, a SQL directory), when the server stops.
    """

    def __init__(self, store: IStore, *others: Any) -> None:
        self.store = store
        self.others = others

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        for other in self.others:
            close = getattr(other, "close", None)
            if close is not None:
                yield close()
        yield self.store.close()


class TLSReloadService(service.Service):
    """
    Reads the TLS certificates again on SIGHUP, without dropping a
    connection; a broken file is logged and the old certificates stay.

    @ivar context: the L{ServerTLSContext} to reload.
    """

    def __init__(self, context: ServerTLSContext) -> None:
        self.context = context
        self._previous: Any = None
        self._installed = False
        self.onReload: List[Callable[[], None]] = []

    def reload(self) -> bool:
        """
        Reload now; whether it worked (a failure is logged).
        """
        try:
            self.context.reload()
        except ConfigError as e:
            log.error("TLS reload failed, still using the previous certificates: {error}", error=str(e))
            return False
        log.info("TLS certificates reloaded from {cert}", cert=self.context.certPath)
        return True

    def _onSignal(self, signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(self.reload)  # type: ignore[attr-defined]
        for call in self.onReload:
            reactor.callFromThread(call)  # type: ignore[attr-defined]

    def startService(self) -> None:
        """
        Install the SIGHUP handler (when there is SIGHUP and we are the main
        thread).
        """
        service.Service.startService(self)
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGHUP, self._onSignal)
            self._installed = True

    def stopService(self) -> Any:
        """
        Put back the handler that was there before.
        """
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
        return service.Service.stopService(self)


class InterpreterService(service.Service):
    """
    Tunes the interpreter for serving while the server runs, and puts
    things back when it stops:

      - B{a shorter thread switch interval.}  The reactor thread drops the
        GIL at each system call it makes (a socket read or write, an
        C{lstat}, a log line); when a store's or the message index's pool
        thread takes it meanwhile, the reactor waits until that thread
        makes a system call of its own, or until the switch interval
        forces it to let go: by default 5 ms, longer than the whole of an
        SMTP delivery's group commit.  At 0.5 ms, ten SMTP sessions
        delivering 2 KB messages got their 250s sooner (p50 4.3 -> 3.7 ms)
        and 5-9% more messages a second, in paired runs; 0.25 ms did no
        better, 1 ms worse.
      - B{the objects made while starting are frozen} (L{gc.freeze}, after
        a collection): the modules, classes and wiring of a server that
        stay for its life.  They are about two thirds of the objects the
        garbage collector tracks in a server that has just served a
        10,000-message mailbox, and a full collection no longer walks
        them: that one took 45 ms, in the middle of the next IMAP command
        (C{bench/results/all_00ea282.md}).  A frozen object is still
        freed when nothing refers to it; only a cycle among them that
        becomes garbage waits for the service to stop (most of them live
        as long as the process: modules, classes, the wiring).

    @ivar interval: seconds, for L{sys.setswitchinterval}.
    """

    interval = 0.0005

    def __init__(self) -> None:
        self._previous: Optional[float] = None

    def startService(self) -> None:
        service.Service.startService(self)
        self._previous = sys.getswitchinterval()
        sys.setswitchinterval(self.interval)
        gc.collect()
        gc.freeze()

    def stopService(self) -> Any:
        if self._previous is not None:
            sys.setswitchinterval(self._previous)
            self._previous = None
            gc.unfreeze()
        return service.Service.stopService(self)


class _SystemResolver:
    """
    The system's DNS resolver (C{/etc/resolv.conf}), made at the first
    lookup: Twisted's resolver starts a timer to re-read its config the
    moment it exists, which a server that never relays does not need.
    """

    def __init__(self) -> None:
        self._resolver: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._resolver is None:
            self._resolver = dnsclient.createResolver()
        return getattr(self._resolver, name)


class Server:
    """
    The parts of one server, wired together from a L{Config}: the store, the
    portal, the delivery pipeline and a protocol factory per listener.
    Tests use it to serve the same wiring on ephemeral ports.

    @ivar config: the L{Config}.
    @ivar store: the L{IStore}.
    @ivar portal: the cred L{Portal} (L{MailRealm} and the checkers).
    @ivar delivery: the SMTP L{IDelivery}.
    @ivar tls: the L{ServerTLSContext} every listener shares.
    @ivar factories: listener name (C{smtp}, C{submission}, C{smtps},
        C{pop3}, C{pop3s}, C{imap}, C{imaps}) to the factory to listen
        with; the implicit-TLS ones are wrapped in a
        L{TLSMemoryBIOFactory}.
    @ivar metrics: this process's L{Metrics}; the listeners' factories are
        wrapped to count into it when they listen.
    """

    def __init__(self, config: Config) -> None:
        from mailplat.imap.server import IMAPFactory
        from mailplat.pop3.server import POP3Factory
        from mailplat.smtp.server import SMTPFactory

        self.config = config
        try:
            os.makedirs(config.dataDir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"data directory {config.dataDir!r}: cannot create it ({e.strerror})") from None
        where = config.source or "command line"
        self.store = makeStore(config.store, config.dataDir, f"{where}: server.store")
        checkers = makeCheckers(list(config.auth), config.dataDir, f"{where}: server.auth")
        # One portal for every protocol, so failed logins are counted (and
        # slowed down) per account and per client address across all.
        self.throttle = LoginThrottle(
            reactor, delayAfter=config.loginDelayAfter, refuseAfter=config.loginRefuseAfter,
            window=config.loginWindow, maxDelay=config.loginMaxDelay, exemptLoopback=config.exemptLoopback,
            # Shared by the worker processes, which count each failure once;
            # by every node when the store is on PostgreSQL.
            path=os.path.join(config.dataDir, "login-failures.sqlite"), database=_sharedDatabase(self.store),
        )
        self.portal = ThrottledPortal(MailRealm(self.store), checkers, throttle=self.throttle)
        self.metrics = Metrics()
        portals = {name: CountingPortal(self.portal, name, self.metrics) for name in ("smtp", "pop3", "imap")}
        resolver = _SystemResolver()
        # Several nodes on one PostgreSQL share its queue; otherwise the
        # queue is files in the data directory.
        self.queue = queueFor(config.store, config.dataDir, reactor, threaded=True)
        # Domains, aliases and moved users: in the store's database for a
        # SQL store (every node sees the same), else a file in the data dir.
        self.directoryFile = directoryFor(config.store, config.dataDir)
        self.directory = StoreDirectory(
            self.store, config.domains, file=self.directoryFile, plusDelimiter=config.plusDelimiter,
        )
        # One message index per process (summaries and full-text search
        # for IMAP), filled by delivery and by the IMAP sessions; without
        # it ([imap] index = false) every session parses what it needs.
        self.index: Optional[MessageIndex] = None
        if config.imapIndex:
            self.index = MessageIndex(config.indexDirectory, reactor)
        self.delivery = LocalDelivery(
            self.directory, self.store, self.queue, policies=self._policies(config, resolver, self.store),
            hostname=config.hostname, clock=reactor,
            sieve=SieveFilter(config.dataDir, config.hostname, reactor) if config.sieve else None,
            quota=config.quota, index=self.index,
        )
        countDeliveries(self.delivery, self.metrics)
        # The queue's gauges: read in the process serving the page only.
        self.metrics.register(QueueCollector(self.queue, reactor))
        if config.metricsListener != DISABLED and workerCount(config) > 1:
            # Made here, as the user the server runs as (twistd -u);
            # emptied when the parent starts serving (service()).
            prepareDirectory(os.path.join(config.dataDir, "metrics"), empty=False)
        if workerCount(config) > 1:
            # The same for the files the processes share their connection
            # counts in: the parent fills it in service() (still root under
            # twistd -u), giving the files to the directory's owner.
            os.makedirs(os.path.join(config.dataDir, "connections"), mode=0o700, exist_ok=True)
        credentials = None
        if config.relayUser is not None or config.relayPassword is not None:
            if not (config.relayUser and config.relayPassword and config.relaySmarthost):
                raise ConfigError(f"{where}: relay.smarthost_user and relay.smarthost_password go together, with relay.smarthost")
            credentials = (config.relayUser, config.relayPassword)
        self.relay = Relay(
            config.hostname, resolver, reactor,
            smarthost=parseHostPort(config.relaySmarthost) if config.relaySmarthost else None,
            credentials=credentials, verifyTLS=config.relayVerifyTLS,
            connectTimeout=config.relayConnectTimeout, commandTimeout=config.relayCommandTimeout,
        )
        self.runner = QueueRunner(
            self.queue, self.relay, reactor, config.hostname, bounce=self.delivery.inject,
            concurrency=config.relayConcurrency, retryBase=config.relayRetryBase, retryMax=config.relayRetryMax,
            lifetime=config.relayLifetime, delayWarning=config.relayDelayWarning or None,
        )
        self.tls = contextForConfig(
            config.dataDir, config.hostname, config.tlsCert, config.tlsKey, config.tlsSNI, where=f"{where}: tls"
        )
        tls = self.tls
        plain = config.allowPlaintext

        def smtp(role: str) -> "Factory[Any]":
            return SMTPFactory(
                self.delivery, config.hostname, maxMessageSize=config.maxMessageSize, timeout=config.smtpTimeout,
                portal=portals["smtp"], contextFactory=tls, role=role, allowPlaintext=plain,
            )

        def pop3() -> "Factory[Any]":
            return POP3Factory(portals["pop3"], config.hostname, timeout=config.pop3Timeout,
                               contextFactory=tls, allowPlaintext=plain)

        def imap() -> "Factory[Any]":
            factory = IMAPFactory(portals["imap"], config.hostname, timeout=config.imapTimeout,
                                  maxLiteralSize=config.maxMessageSize, contextFactory=tls, quotaBytes=config.quota,
                                  index=self.index)
            # The IMAP server asks netutil.cleartextAllowed with this.
            factory.allowPlaintext = plain
            return factory

        makers: Dict[str, Callable[[], "Factory[Any]"]] = {
            "smtp": lambda: smtp("mx"),
            "submission": lambda: smtp("submission"),
            "smtps": lambda: smtp("smtps"),
            "pop3": pop3,
            "pop3s": pop3,
            "imap": imap,
            "imaps": imap,
        }
        self.factories: Dict[str, "Factory[Any]"] = {}
        self.limiters: Dict[str, ConnectionLimitFactory] = {}
        for name, make in makers.items():
            # The limit wraps the protocol inside TLS, so the refusal line
            # of an implicit-TLS listener goes over TLS.
            protocolFactory = make()
            # Errors one session may cause before it is closed.
            protocolFactory.maxErrors = config.maxErrors  # type: ignore[attr-defined]
            limiter = limitConnections(
                protocolFactory, config.maxConnectionsPerAddress, config.maxConnections,
                refusalLine(name, config.hostname), exemptLoopback=config.exemptLoopback,
            )
            self.limiters[name] = limiter
            factory: "Factory[Any]" = limiter
            # Counted (connections, commands, TLS handshakes) inside TLS,
            # so that Twisted tells the counter when a handshake is done.
            factory = instrumentFactory(factory, name, self.metrics)
            if name in IMPLICIT_TLS_LISTENERS:
                factory = TLSMemoryBIOFactory(tls, False, factory)
            self.factories[name] = factory

    @staticmethod
    def _policies(config: Config, resolver: Any, store: Any = None) -> list:
        """
        The delivery policies, cheapest first and signing last: recipient
        limit, greylisting, SPF/DKIM/DMARC/DNSBL with Authentication-Results
        (skipped for authenticated clients), spam scanners, DKIM signing of
        authenticated clients' mail.

        @param store: the store; when its database is PostgreSQL (several
            nodes), the greylisting state is kept there.
        """
        policies: list = [MaxRecipientsPolicy(config.maxRecipientsPerMessage)]
        if config.greylist:
            policies.append(GreylistPolicy(os.path.join(config.dataDir, "greylist.sqlite"), reactor, delay=config.greylistDelay,
                                           trustLoopback=config.policyTrustLoopback, database=_sharedDatabase(store)))
        policies.append(AuthenticationPolicy(
            config.hostname, resolver, spf=config.policySpf, dkimVerify=config.policyDkimVerify,
            dmarc=config.policyDmarc, dnsblZones=list(config.policyDnsblZones), dnsbl=config.policyDnsbl,
            trustLoopback=config.policyTrustLoopback,
        ))
        spam: Dict[str, Any] = dict(rejectScore=config.spamRejectScore, addHeaderScore=config.spamAddHeaderScore,
                    onFailure=config.spamUnavailable)
        if config.rspamdUrl:
            policies.append(RspamdPolicy(config.rspamdUrl, reactor, **spam))
        if config.spamd:
            host, port = parseHostPort(config.spamd)
            policies.append(SpamdPolicy(host, port, reactor, **spam))
        policies.append(DkimSigningPolicy(DKIMSigner(config.dataDir, config.dkimSelector)))
        return policies

    def listening(self) -> Dict[str, "Factory[Any]"]:
        """
        The configured listeners' factories (they count connections,
        commands and TLS handshakes into L{metrics}).
        """
        return {
            name: factory
            for name, factory in self.factories.items()
            if self.config.listeners.get(name, DISABLED) != DISABLED
        }

    def service(self, workers: int = 1) -> MultiService:
        """
        The services twistd runs: one listener per configured endpoint,
        the queue runner, the metrics page when configured, and the store's
        shutdown.  With C{workers} above 1 the listeners are bound at once
        and shared with C{workers - 1} child processes (L{WorkerPool}).
        """
        from mailplat.workers import WorkerPool, listen, shareable

        top = service.MultiService()
        InterpreterService().setServiceParent(top)
        StoreService(self.store, self.queue, self.directoryFile, self.index).setServiceParent(top)
        reloader = TLSReloadService(self.tls)
        reloader.setServiceParent(top)
        self.runner.setServiceParent(top)
        metricsDirectory = None
        if self.config.metricsListener != DISABLED and workers > 1:
            # Every process writes its figures here; the page sums them.
            metricsDirectory = prepareDirectory(os.path.join(self.config.dataDir, "metrics"))
            self.metrics.shareThrough(metricsDirectory)
        if self.config.metricsListener != DISABLED:
            metrics = strports.service(self.config.metricsListener, metricsSite(self.metrics))
            metrics.setName("metrics")
            metrics.setServiceParent(top)
        countsDirectory = None
        if workers > 1:
            # Every process publishes its open connections here and adds
            # the others' before it takes one more.
            countsDirectory = prepareSharedCounts(os.path.join(self.config.dataDir, "connections"),
                                                  self.listening(), workers)
            self.shareConnectionCounts(countsDirectory, 0, workers)
        sockets = {}
        for name, factory in self.listening().items():
            endpoint = self.config.listeners[name]
            if workers > 1:
                try:
                    port = listen(reactor, endpoint, factory)
                except Exception as e:
                    raise ConfigError(f"listener {name} ({endpoint}): cannot listen ({e})") from None
                shared = shareable(port, factory)
                if shared is None:
                    log.warn("listener {name} ({endpoint}) is served by the main process only", name=name, endpoint=endpoint)
                else:
                    sockets[name] = shared
                _PortService(port).setServiceParent(top)
                continue
            listener = strports.service(endpoint, factory)
            listener.setName(name)
            listener.setServiceParent(top)
        if workers > 1:
            pool = WorkerPool(reactor, self.config, workers - 1, sockets, self.runner.wake,
                              metricsDirectory=metricsDirectory, countsDirectory=countsDirectory)
            pool.setServiceParent(top)
            reloader.onReload.append(lambda: pool.signalAll("HUP"))
        return top

    def shareConnectionCounts(self, directory: str, slot: int, slots: int) -> None:
        """
        Count the connection limits over every worker process: this one,
        in C{slot} of the C{slots} whose counts are in C{directory}
        (L{prepareSharedCounts}), adds the others' open connections.
        """
        for name in self.listening():
            self.limiters[name].shareThrough(SharedCounts(directory, name, slot, slots))

    def workerService(self, sockets: Dict[str, Any]) -> MultiService:
        """
        A worker process's services: the listeners adopted from the
        parent's sockets (C{name: (descriptor, address family)}) and the
        store's shutdown; no queue runner and no metrics page.
        """
        top = service.MultiService()
        InterpreterService().setServiceParent(top)
        StoreService(self.store, self.queue, self.directoryFile, self.index).setServiceParent(top)
        TLSReloadService(self.tls).setServiceParent(top)
        factories = self.listening()
        for name, (fd, family) in sockets.items():
            _AdoptedService(fd, family, factories[name]).setServiceParent(top)
        return top


def _sharedDatabase(store: Any) -> Any:
    """
    The store's database when several nodes may share it (PostgreSQL):
    where state that every node needs (greylisting, failed logins) is
    kept; L{None} otherwise (the data directory's files).
    """
    database = getattr(store, "database", None)
    if getattr(getattr(database, "dialect", None), "name", None) != "postgresql":
        return None
    return database


class _PortService(service.Service):
    """
    Stops listening on a port bound before the services started.
    """

    def __init__(self, port: Any) -> None:
        self.port = port

    def stopService(self) -> Any:
        service.Service.stopService(self)
        return self.port.stopListening()


class _AdoptedService(service.Service):
    """
    Serves a listening socket inherited from the parent process.
    """

    def __init__(self, fd: int, family: int, factory: "Factory[Any]") -> None:
        self.fd = fd
        self.family = family
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        service.Service.startService(self)
        self.port = reactor.adoptStreamPort(self.fd, self.family, self.factory)  # type: ignore[attr-defined]
        os.close(self.fd)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self.port is not None:
            return self.port.stopListening()
        return None


def buildService(config: Config, uid: Optional[int] = None, gid: Optional[int] = None) -> service.MultiService:
    """
    Make the server's services from a resolved configuration.

    @param uid: with C{gid}, the user twistd switches to after binding
        (C{twistd -u/-g}): everything the server creates in its data
        directory is created as that user, while the listening sockets are
        still bound with the privileges twistd started with.
    @raise ConfigError: the store, a checker or a listener cannot be made.
    """
    from mailplat.auth.startup import runAs, startupChecks

    startupChecks(config, uid, gid)
    workers = workerCount(config)
    with runAs(uid, gid):
        server = Server(config)
    top = server.service(workers)
    log.info(
        "mailplat on {hostname}: data in {dataDir}, store {store}, listeners {listeners}, {workers} process(es)",
        hostname=config.hostname, dataDir=os.path.abspath(config.dataDir), store=config.store,
        listeners=", ".join(f"{k}={v}" for k, v in config.listeners.items()), workers=workers,
    )
    return top


def makeService(options: ServerOptions) -> service.MultiService:
    """
    twistd's entry: resolve the configuration and build the services; any
    configuration error stops the start with one line.
    """
    parent = getattr(options, "parent", None) or {}
    try:
        return buildService(options.resolveConfig(), parent.get("uid"), parent.get("gid"))
    except ConfigError as e:
        raise SystemExit(f"mailplat: {e}")


# twistd's ServiceMaker looks these names up in this module.
Options = ServerOptions
