"""
The queue runner: the service that delivers what is due in the outbound
queue, records each outcome, sends DSNs and removes finished entries.

Retry schedule: after the n-th temporary failure a recipient is tried
again after C{retryBase * 2 ** (n - 1)} seconds, at most C{retryMax}
(5 minutes doubling up to 4 hours by default), and never later than the
end of its lifetime.  A recipient still deferred when the message is older
than C{lifetime} (5 days) fails for good (status 4.4.7 in the bounce).  A
recipient still deferred after C{delayWarning} (4 hours) gets one delay
warning DSN.

DSN requests (RFC 3461) are honoured: a recipient with C{NOTIFY=NEVER}
is never reported, C{NOTIFY=SUCCESS} gets a "relayed" DSN when the next
hop does not offer DSN itself (one that does is passed the parameters and
reports in our place), C{RET} and C{ENVID} shape every DSN.
"""

import io
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Dict, Generator, List, Optional

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailplat.delivery.dsn import DELAYED, FAILED, RELAYED, RecipientReport, makeDSN, statusFromReply
from mailplat.errors import SMTPReply
from mailplat.queue import DEFERRED, NoSuchEntry, QueueEntry, RecipientStatus
from mailplat.queue import FAILED as QFAILED
from mailplat.queue.sql import OutboundQueue
from mailplat.relay import DELIVERED as RDELIVERED
from mailplat.relay import FAILED as RFAILED
from mailplat.relay import Job, Relay, Result

#: C{(sender, recipients, messageFile) -> Deferred}: how DSNs are sent.
Bouncer = Callable[[Optional[str], List[str], BinaryIO], defer.Deferred]


class QueueRunner(service.Service):
    """
    Delivers due queue entries through a L{Relay}.

    A pass (L{runOnce}) takes every due entry not already being worked on,
    groups its due recipients by destination (domain, or the smarthost),
    and hands each destination's messages to the relay as one batch (one
    connection), at most C{concurrency} destinations at a time.  An entry
    is finished (DSNs, removal) as soon as the batches carrying it are
    done, not when the whole pass is.

    When to look again: at once when the queue says new work came in (an
    enqueue here, a C{NOTIFY} from another node, a claim), and after each
    batch, when the time the queue gives for its next due entry
    (L{Queue.nextWakeup}, leaving out the entries being delivered here)
    has come; else at that time, and at most C{pollInterval} later in any
    case: the poll is only the fallback that sees what the admin command
    changed without telling anyone.  A queue that can tell cheaply whether
    another process changed it (the file queue's C{changedElsewhere}) is
    asked every C{watchInterval} seconds, and a change wakes the runner,
    so an admin command's release or flush is acted on within that time
    (the PostgreSQL queue wakes every node by C{NOTIFY} instead).  Entries
    under delivery are left out
    of that time on purpose: counting them (they are still due until
    their outcome is recorded) made the runner look again in a tight loop
    while any delivery was under way.

    @ivar queue: the L{Queue} or L{SQLQueue <mailplat.queue.sql.SQLQueue>}.
    @ivar relay: the L{Relay}.
    @ivar clock: the L{IReactorTime} that times passes and retries.
    @ivar bounce: sends a DSN: C{bounce(None, [reversePath], file)} returns
        a Deferred firing once it is durable (local delivery or queue).
    @ivar hostname: our name, for DSNs.
    """

    _log = Logger()
    name = "queue-runner"

    def __init__(
        self,
        queue: OutboundQueue,
        relay: Relay,
        clock: IReactorTime,
        hostname: str,
        bounce: Optional[Bouncer] = None,
        concurrency: int = 20,
        retryBase: float = 300.0,
        retryMax: float = 4 * 3600.0,
        lifetime: float = 5 * 86400.0,
        delayWarning: Optional[float] = 4 * 3600.0,
        pollInterval: float = 60.0,
        watchInterval: Optional[float] = 2.0,
    ) -> None:
        self.queue = queue
        self.relay = relay
        self.clock = clock
        self.hostname = hostname
        self.bounce: Bouncer = bounce if bounce is not None else self._queueBounce
        self.concurrency = concurrency
        self.retryBase = retryBase
        self.retryMax = retryMax
        self.lifetime = lifetime
        self.delayWarning = delayWarning
        self.pollInterval = pollInterval
        self.watchInterval = watchInterval
        self._watcher: Optional[task.LoopingCall] = None
        self._busy: set = set()
        self._inFlight: List[defer.Deferred] = []
        self._timer: Any = None
        self._semaphore = defer.DeferredSemaphore(concurrency)

    # Service life.

    def startService(self) -> None:
        """
        Start watching the queue, and run a first pass at once.
        """
        super().startService()
        self.queue.addObserver(self.wake)
        changedElsewhere = getattr(self.queue, "changedElsewhere", None)
        if changedElsewhere is not None and self.watchInterval:
            def watch() -> None:
                try:
                    if changedElsewhere():
                        self.wake()
                except Exception:
                    self._log.failure("could not tell whether the queue changed")

            self._watcher = task.LoopingCall(watch)
            self._watcher.clock = self.clock
            self._watcher.start(self.watchInterval, now=False)
        self.wake()

    def stopService(self) -> defer.Deferred:
        """
        Stop scheduling passes; fire once the passes under way are done.
        """
        super().stopService()
        self.queue.removeObserver(self.wake)
        if self._watcher is not None and self._watcher.running:
            self._watcher.stop()
        self._watcher = None
        self._cancelTimer()
        return defer.DeferredList(list(self._inFlight)).addCallback(lambda _: None)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def wake(self) -> None:
        """
        Run a pass soon (new work came in).
        """
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0.0, delay), self._tick)

    def _tick(self) -> None:
        self._timer = None
        d = self.runOnce()
        d.addErrback(lambda f: self._log.failure("queue runner pass failed", f))
        d.addBoth(lambda _: self._scheduleNext())
        # The next look, for what is not part of this pass (which may take
        # long: a slow destination), the poll at the latest.
        self._scheduleNext()

    def _scheduleNext(self) -> None:
        now = self.clock.seconds()
        wakeup = self.queue.nextWakeup(exclude=self._busy)
        delay = self.pollInterval if wakeup is None else min(self.pollInterval, max(0.0, wakeup - now))
        self._schedule(delay)

    # One pass.

    def runOnce(self) -> defer.Deferred:
        """
        Deliver everything due now (see the class docstring).

        @return: a Deferred firing when the pass is over.
        """
        d = self._run()
        self._inFlight.append(d)

        def done(result: object) -> object:
            self._inFlight.remove(d)
            return result

        return d.addBoth(done)

    @defer.inlineCallbacks
    def _run(self):
        now = self.clock.seconds()
        batches: Dict[str, List[Job]] = OrderedDict()
        # For each entry taken: how many of its batches are not done yet.
        outstanding: Dict[str, int] = {}
        for entry in self.queue.due(now):
            if entry.id in self._busy:
                continue
            byDestination: Dict[str, List[str]] = OrderedDict()
            for r in entry.active():
                if r.nextAttempt <= now:
                    byDestination.setdefault(self.relay.destinationOf(r.address), []).append(r.address)
            if not byDestination:
                continue
            self._busy.add(entry.id)
            outstanding[entry.id] = len(byDestination)
            for destination, recipients in byDestination.items():
                batches.setdefault(destination, []).append(self._job(entry, recipients))
        try:
            yield defer.DeferredList(
                [self._batch(destination, jobs, outstanding) for destination, jobs in batches.items()]
            )
        finally:
            # (Normally each entry left _busy when its last batch was done.)
            self._busy.difference_update(outstanding)

    @defer.inlineCallbacks
    def _batch(
        self, destination: str, jobs: List[Job], outstanding: Dict[str, int]
    ) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Deliver one destination's batch, then finish each entry whose
        batches are all done, and see whether more work is due (the
        "claim again" after a batch; see the class docstring).  Never
        fails: errors are logged.
        """
        try:
            yield self._semaphore.run(self.relay.deliver, destination, jobs, self._report)
        except Exception:
            self._log.failure("relay failed")
        for entryId in OrderedDict.fromkeys(job.entryId for job in jobs):
            outstanding[entryId] -= 1
            if outstanding[entryId]:
                continue
            try:
                yield self.finish(entryId)
            except Exception:
                self._log.failure("queue runner could not finish {id}", id=entryId)
            finally:
                self._busy.discard(entryId)
        self._scheduleNext()

    def _job(self, entry: QueueEntry, recipients: List[str]) -> Job:
        """
        The relay's L{Job} for C{recipients} of C{entry}, with its DSN and
        SMTPUTF8 parameters.
        """
        notify: Dict[str, List[str]] = {}
        orcpt: Dict[str, str] = {}
        for address in recipients:
            status = entry.recipient(address)
            if status.notify is not None:
                notify[address] = list(status.notify)
            if status.orcpt is not None:
                orcpt[address] = status.orcpt
        return Job(
            entry.id,
            entry.sender,
            recipients,
            self._opener(entry.id),
            envid=entry.envid,
            ret=entry.ret,
            notify=notify,
            orcpt=orcpt,
            smtputf8=entry.smtputf8,
        )

    def _opener(self, entryId: str) -> Callable[[], BinaryIO]:
        return lambda: self.queue.openMessage(entryId)

    @defer.inlineCallbacks
    def _report(self, job: Job, results: Dict[str, Result]) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Record a job's outcome at once (a delivered recipient is written
        right after the server's reply: the only window in which a crash
        sends a message twice).
        """
        now = self.clock.seconds()
        try:
            entry = self.queue.get(job.entryId)
        except NoSuchEntry:
            return
        groups: Dict[tuple, List[str]] = OrderedDict()
        for address, result in results.items():
            groups.setdefault((result.kind, result.reply, result.remoteMTA, result.dsn), []).append(address)
        for (kind, reply, remoteMTA, dsn), addresses in groups.items():
            if kind == RDELIVERED:
                updated = yield self.queue.markDelivered(job.entryId, addresses, reply, remoteMTA)
                self._log.info("{id}: delivered to {to} via {mta}: {reply}", id=job.entryId, to=addresses, mta=remoteMTA, reply=reply)
                if not dsn and updated is not None:
                    # RFC 3461 6.2.1: the next hop will not report success,
                    # so say now that the message was relayed.
                    wanting = [updated.recipient(a) for a in addresses if updated.recipient(a).wants("SUCCESS")]
                    if wanting:
                        yield self._notify(updated, wanting, RELAYED)
            elif kind == RFAILED:
                yield self.queue.markFailed(job.entryId, addresses, reply, remoteMTA)
                self._log.info("{id}: failed for {to}: {reply}", id=job.entryId, to=addresses, reply=reply)
            else:
                expires = entry.created + self.lifetime
                if now >= expires:
                    yield self.queue.markFailed(job.entryId, addresses, reply, remoteMTA)
                    self._log.info("{id}: expired for {to}: {reply}", id=job.entryId, to=addresses, reply=reply)
                    continue
                # Same attempt count for the group: they share a history.
                attempts = max(entry.recipient(a).attempts for a in addresses) + 1
                delay = min(self.retryBase * 2 ** (attempts - 1), self.retryMax)
                yield self.queue.markDeferred(job.entryId, addresses, reply, min(now + delay, expires), remoteMTA)
                self._log.info("{id}: deferred for {to}: {reply}", id=job.entryId, to=addresses, reply=reply)

    # DSNs and clean-up.

    @defer.inlineCallbacks
    def finish(self, entryId: str) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        After a pass over an entry: fail what expired, send the bounce for
        failed recipients and the delay warning for late ones (each once),
        and delete the entry when nothing is left to do.
        """
        try:
            entry = self.queue.get(entryId)
        except NoSuchEntry:
            return
        now = self.clock.seconds()
        expired = [r.address for r in entry.active() if r.state == DEFERRED and now >= entry.created + self.lifetime]
        if expired:
            reply = entry.recipient(expired[0]).reply or "451 4.4.7 Delivery time expired"
            entry = (yield self.queue.markFailed(entryId, expired, reply)) or entry
        failed = [r for r in entry.recipients if r.state == QFAILED and not r.notified]
        if failed:
            sent = yield self._notify(entry, [r for r in failed if r.wants("FAILURE")], FAILED)
            if sent:
                entry = (yield self.queue.markNotified(entryId, [r.address for r in failed], FAILED)) or entry
        if self.delayWarning is not None:
            late = [
                r
                for r in entry.active()
                if r.state == DEFERRED and not r.delayWarned and now - entry.created >= self.delayWarning
            ]
            if late:
                sent = yield self._notify(entry, [r for r in late if r.wants("DELAY")], DELAYED)
                if sent:
                    entry = (yield self.queue.markNotified(entryId, [r.address for r in late], DELAYED)) or entry
        if entry.isFinished():
            try:
                yield self.queue.delete(entryId)
            except NoSuchEntry:
                pass

    @defer.inlineCallbacks
    def _notify(
        self, entry: QueueEntry, recipients: List[RecipientStatus], action: str
    ) -> Generator["defer.Deferred[Any]", Any, bool]:
        """
        Send one DSN about C{recipients} to the entry's reverse path.

        @return: a Deferred firing with whether the recipients count as
            notified: C{True} when the DSN is durable or none is to be sent
            (null reverse path: a bounce is never bounced; nobody wanted
            one), C{False} when sending it failed for now.
        """
        if entry.sender is None or not recipients:
            return True
        now = self.clock.seconds()
        reports = []
        for r in recipients:
            if action == FAILED and r.reply and r.reply[:1] == "4":
                status = "4.4.7"  # still temporary, but out of time
            elif action == RELAYED:
                status = "2.0.0"
            else:
                status = statusFromReply(r.reply, permanent=action == FAILED)
            reports.append(
                RecipientReport(
                    address=r.address,
                    action=action,
                    status=status,
                    diagnostic=r.reply,
                    remoteMTA=r.remoteMTA,
                    lastAttempt=r.lastAttempt,
                    willRetryUntil=entry.created + self.lifetime if action == DELAYED else None,
                    orcpt=r.orcpt,
                )
            )
        try:
            original = self.queue.openMessage(entry.id)
        except NoSuchEntry:
            return True
        with original:
            dsn = makeDSN(self.hostname, entry.sender, reports, original, now, ret=entry.ret, envid=entry.envid, arrivalDate=entry.created)
        try:
            yield self.bounce(None, [entry.sender], io.BytesIO(dsn))
        except SMTPReply as e:
            if e.code >= 500:
                self._log.warn("{id}: DSN to <{to}> refused for good ({reply}); dropped", id=entry.id, to=entry.sender, reply=str(e))
                return True
            self._log.warn("{id}: DSN to <{to}> refused for now ({reply})", id=entry.id, to=entry.sender, reply=str(e))
            return False
        except Exception:
            self._log.failure("{id}: could not send the DSN to <{to}>", id=entry.id, to=entry.sender)
            return False
        self._log.info("{id}: {action} DSN sent to <{to}>", id=entry.id, action=action, to=entry.sender)
        return True

    def _queueBounce(self, sender: Optional[str], recipients: List[str], message: BinaryIO) -> defer.Deferred:
        return self.queue.enqueue(sender, recipients, message)
