"""
SMTP durable acceptance, mailplat beside Postfix, measured in the same run.

    /work/venv/bin/python bench/compare_smtp.py [--repeats 3] [--quick] [--no-plot]
                                                [--json bench/results/smtp_vs_postfix.json]
                                                [--png bench/results/smtp_vs_postfix.png]
                                                [--commit REV | --mailplat-source DIR] [--baseline REV]
                                                [--sessions 10 50] [--sizes 2 100] [--drivers py smtp-source]

Needs root (for the scratch Postfix) and Postfix's C{smtp-source} and
C{smtp-sink}.  Everything listens on 127.0.0.1, in scratch directories
removed at the end, and every server started here is stopped here.

Servers, all started by this script and up for the whole run:

  - mailplat under C{twistd} with its Maildir store, C{--workers 1} and
    C{--workers 2}, the users made with C{mailplat user add};
  - Postfix (C{bench/peers/postfix.py}): C{smtpd} and the C{virtual(8)}
    agent delivering into a Maildir;
  - C{smtp-sink}, which discards every message: the protocol-only ceiling.

Each point (parallel sessions, message size) is sent to every server in
turn with the same client, C{bench/smtp_accept.py} (pipelined
MAIL/RCPT/DATA, one message at a time per session, all sessions on one
event loop): messages/s acknowledged with 250 and the latency from the end
of DATA to the 250.  The 2 KB points at 10 and 50 sessions (and the
100 KB ones) are also driven with Postfix's own C{smtp-source} (C, no
pipelining) for a second throughput figure.  Each point goes to a user of
its own, so a Maildir holds only that point's messages.

Postfix acknowledges a message when its queue file is fsynced and delivers
it to the Maildir later; mailplat acknowledges it once it is in the
INBOX.  So after each run the script also waits until all the messages
are in the recipient's Maildir and reports that rate too ("in Maildir").
It also reads the CPU time of each server's processes (children that
exited included) to give the server's CPU per message.

With C{--baseline REV}, mailplat as committed at REV runs too (C{baseline}
rows, C{--workers 1} and C{2}), in the same rotation: a change measured
before and after, side by side, on the same machine at the same time.

Every point is repeated (C{--repeats}, default 3), the servers in a
different order each time; the table gives the median of the repeats.
Prints one table; writes every run to the JSON file and the plot of
throughput against sessions (2 KB) to the PNG.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench import smtp_accept  # noqa: E402
from bench.peers.mailplat import Mailplat  # noqa: E402
from bench.peers.system import cpuSeconds, settle  # noqa: E402
from bench.peers.postfix import Postfix, SMTPSink, accountMaildir, countMaildir  # noqa: E402

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
DOMAIN = "example.test"
KB = 1024


class MailplatSMTP(Mailplat):
    """
    mailplat serving SMTP only (L{bench.peers.mailplat.Mailplat} with
    C{listen=("smtp",)}), started as the README says:

        twistd -n --pidfile= mailplat --config C --data-dir D --smtp tcp:PORT:interface=127.0.0.1 \\
            --submission none ... --workers N --auth mailplat --hostname mailplat.bench.test

    with its users made first by C{mailplat --data-dir D user add ADDRESS
    --password-stdin}.  Everything else is the default configuration.
    """

    def __init__(self, addresses: Sequence[str], workers: int, source: str = REPO,
                 extra: Sequence[str] = (), name: Optional[str] = None) -> None:
        """
        @param source: the mailplat tree to run (put first on C{PYTHONPATH}):
            this checkout by default, or e.g. a C{git archive} of a commit.
        @param extra: more C{twistd mailplat} options (e.g. C{--domain}).
        @param name: the server's name in the table (C{mailplat wN}).
        """
        super().__init__({address: "bench password" for address in addresses}, workers=workers, argon2=True,
                         listen=("smtp",), source=source,
                         extra=["--hostname", "mailplat.bench.test", *extra])
        self.name = name or f"mailplat w{workers}"
        self.port = self.ports["smtp"]

    def maildir(self, address: str) -> str:
        return accountMaildir(self.mailRoot, address)

    def delivered(self, address: str) -> int:
        return countMaildir(self.maildir(address))


def address(sessions: int, size: int, driver: str) -> str:
    """
    The recipient of one point: a user of its own per sessions, size and
    driver.
    """
    return f"p{sessions}s{size // KB}k{driver}@{DOMAIN}"


def smtpSource(port: int, sessions: int, messages: int, size: int, recipient: str,
               seconds: float) -> Dict[str, object]:
    """
    Send with Postfix's C{smtp-source -d} (one connection per session kept
    for all its messages, no pipelining): C{messages} in all, a payload
    making the message about C{size} octets with the headers it adds.
    """
    argv = [SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(max(1, size - 250)),
            "-M", "bench.test", "-f", "bench@far.test", "-t", recipient, f"127.0.0.1:{port}"]
    began = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds + 60)
    elapsed = time.monotonic() - began
    errors = [done.stderr[-300:]] if done.returncode else []
    return {"sessions": sessions, "size": size, "messages": 0 if errors else messages, "seconds": elapsed,
            "latencies": [], "errors": errors}


def waitDelivered(server: object, recipient: str, expected: int, began: float, seconds: float = 120.0) -> float:
    """
    Wait until C{recipient}'s Maildir holds C{expected} messages.

    @return: seconds from C{began} to when they were all there (to the
        nearest 10 ms), or NaN if they were not within C{seconds}.
    """
    deadline = time.monotonic() + seconds
    while True:
        if server.delivered(recipient) >= expected:  # type: ignore[attr-defined]
            return time.monotonic() - began
        if time.monotonic() > deadline:
            return float("nan")
        time.sleep(0.01)


def runPoint(server: object, driver: str, sessions: int, size: int, messages: int,
             seconds: float) -> Dict[str, object]:
    """
    One run of one point against one server; returns its figures.
    """
    recipient = address(sessions, size, driver)
    stores = hasattr(server, "delivered")
    before = server.delivered(recipient) if stores else 0  # type: ignore[attr-defined]
    pids = server.pids()  # type: ignore[attr-defined]
    cpuBefore = cpuSeconds(pids)
    clientBefore = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    if driver == "py":
        result = smtp_accept.run(server.port, sessions, messages, size, recipient, seconds)  # type: ignore
    else:
        result = smtpSource(server.port, sessions, messages, size, recipient, seconds)  # type: ignore
    clientAfter = resource.getrusage(resource.RUSAGE_SELF)
    accepted = int(result["messages"])  # type: ignore[arg-type]
    inMaildir = float("nan")
    if stores and accepted:
        inMaildir = waitDelivered(server, recipient, before + accepted, began)
    # What the server still does for these messages (mailplat's message
    # index after a burst, Postfix's queue manager) is theirs, and must
    # not run into the next server's turn.
    settle(server.pids)  # type: ignore[attr-defined]
    # Postfix's processes come and go: read the tree again (the exited
    # ones are in their parent's children times).
    cpu = cpuSeconds(set(pids) | set(server.pids())) - cpuBefore  # type: ignore[attr-defined]
    latencies = sorted(result["latencies"])  # type: ignore[arg-type]
    return {
        "server": server.name, "driver": driver, "sessions": sessions, "size": size,  # type: ignore
        "messages": accepted, "seconds": result["seconds"],
        "rate": accepted / result["seconds"] if accepted else 0.0,  # type: ignore[operator]
        "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99": smtp_accept.percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
        "inMaildir": inMaildir,
        "maildirRate": accepted / inMaildir if accepted and inMaildir == inMaildir else float("nan"),
        "serverCpuMsPerMessage": cpu * 1000 / accepted if accepted else float("nan"),
        "clientCpuUsPerMessage": ((clientAfter.ru_utime + clientAfter.ru_stime)
                                  - (clientBefore.ru_utime + clientBefore.ru_stime)) * 1e6 / accepted
        if accepted and driver == "py" else float("nan"),
        "errors": [e.decode(errors="replace") if isinstance(e, bytes) else str(e)
                   for e in result["errors"]][:3],  # type: ignore[union-attr]
        "load": open("/proc/loadavg").read().split()[0],
    }


def plan(quick: bool, sessions: Optional[Sequence[int]] = None, sizes: Optional[Sequence[int]] = None,
         drivers: Optional[Sequence[str]] = None) -> List[Tuple[str, int, int, int]]:
    """
    The points: (driver, sessions, size, messages); only those with the
    given sessions, sizes (KB) and drivers when these are given.
    """
    points: List[Tuple[str, int, int, int]] = []
    scale = 4 if quick else 1
    for count in (1, 5, 10, 20, 50):
        points.append(("py", count, 2 * KB, min(2000, max(400, 200 * count)) // scale))
    for count in (10, 50):
        points.append(("py", count, 100 * KB, 400 // scale))
    for count in (10, 50):
        points.append(("smtp-source", count, 2 * KB, 2000 // scale))
        points.append(("smtp-source", count, 100 * KB, 400 // scale))
    return [p for p in points if (sessions is None or p[1] in sessions) and (sizes is None or p[2] // KB in sizes)
            and (drivers is None or p[0] in drivers)]


def median(runs: List[Dict[str, object]], key: str) -> float:
    values = [float(r[key]) for r in runs if r[key] == r[key]]  # type: ignore[arg-type]
    return statistics.median(values) if values else float("nan")


def summarise(runs: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """
    One row per (server, driver, sessions, size): the medians of the
    repeats, and the ratios to Postfix's medians for the same point.
    """
    groups: Dict[Tuple, List[Dict[str, object]]] = {}
    for r in runs:
        groups.setdefault((r["server"], r["driver"], r["sessions"], r["size"]), []).append(r)
    rows = []
    for (server, driver, sessions, size), rs in groups.items():
        rows.append({
            "server": server, "driver": driver, "sessions": sessions, "size": size, "repeats": len(rs),
            "messages": int(median(rs, "messages")),
            "rate": median(rs, "rate"), "rateMin": min(float(r["rate"]) for r in rs),  # type: ignore
            "rateMax": max(float(r["rate"]) for r in rs),  # type: ignore[arg-type]
            "p50": median(rs, "p50"), "p99": median(rs, "p99"),
            "maildirRate": median(rs, "maildirRate"), "cpu": median(rs, "serverCpuMsPerMessage"),
            "clientCpu": median(rs, "clientCpuUsPerMessage"),
            "errors": sum(len(r["errors"]) for r in rs),  # type: ignore[arg-type]
        })
    postfix = {(r["driver"], r["sessions"], r["size"]): r for r in rows if r["server"] == "postfix"}
    for r in rows:
        p = postfix.get((r["driver"], r["sessions"], r["size"]))
        r["ratio"] = r["rate"] / p["rate"] if p and p["rate"] else float("nan")  # type: ignore[operator]
        r["maildirRatio"] = (r["maildirRate"] / p["maildirRate"]  # type: ignore[operator]
                             if p and p["maildirRate"] == p["maildirRate"] and p["maildirRate"] else float("nan"))
    order = {"baseline w1": 0, "baseline w2": 1, "mailplat w1": 2, "mailplat w2": 3, "postfix": 4, "smtp-sink": 5}
    rows.sort(key=lambda r: (r["driver"] != "py", r["size"], r["sessions"], order.get(r["server"], 9)))
    return rows


def fmt(value: object, digits: int = 0, suffix: str = "") -> str:
    if isinstance(value, float) and value != value:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def table(rows: List[Dict[str, object]]) -> str:
    """
    The Markdown table of the summary rows.
    """
    out = ["| server | workers | client | sessions | size | messages | msg/s (range) | p50 ms | p99 ms "
           "| in Maildir msg/s | server CPU ms/msg | ratio to Postfix: 250s | : in Maildir |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = str(r["server"])
        workers = name[-1] if name.startswith(("mailplat", "baseline")) else ("-" if name == "smtp-sink" else "n/a")
        out.append(
            f"| {name.split(' ')[0]} | {workers} | {r['driver'].replace('py', 'smtp_accept')} | {r['sessions']} "
            f"| {int(r['size']) // KB} KB | {r['messages']} "
            f"| {fmt(r['rate'])} ({fmt(r['rateMin'])}-{fmt(r['rateMax'])}) | {fmt(r['p50'], 1)} | {fmt(r['p99'], 1)} "
            f"| {fmt(r['maildirRate'])} | {fmt(r['cpu'], 2)} | {fmt(r['ratio'], 2, 'x')} | {fmt(r['maildirRatio'], 2, 'x')} |"
            + (f" errors: {r['errors']}" if r["errors"] else "")
        )
    return "\n".join(out)


def plot(rows: List[Dict[str, object]], path: str, title: str) -> None:
    """
    Messages/s against parallel sessions at 2 KB, one line per server (and
    Postfix's in-Maildir rate), log scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"baseline w1": ("C0", "o:"), "baseline w2": ("C1", "s:"), "mailplat w1": ("C0", "o-"),
              "mailplat w2": ("C1", "s-"), "postfix": ("C2", "^-"), "smtp-sink": ("C7", "x--")}
    for server, (color, style) in styles.items():
        points = sorted((int(r["sessions"]), float(r["rate"]), float(r["maildirRate"])) for r in rows  # type: ignore
                        if r["server"] == server and r["driver"] == "py" and r["size"] == 2 * KB)
        if not points:
            continue
        label = {"smtp-sink": "smtp-sink (discards; protocol ceiling)",
                 "postfix": "Postfix 3.7: 250 (queue fsynced)"}.get(server, server + ": 250 (in INBOX)")
        ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color, label=label)
        if server == "postfix":
            ax.plot([p[0] for p in points], [p[2] for p in points], "^:", color=color,
                    label="Postfix 3.7: all in Maildir")
    ax.set_xlabel("parallel SMTP sessions (2 KB messages, pipelined, one client process)")
    ax.set_ylabel("messages/s (median of repeats)")
    ax.set_yscale("log")
    ax.set_xticks([1, 5, 10, 20, 50])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> Dict[str, str]:
    df = subprocess.run(["df", "-h", tempfile.gettempdir()], capture_output=True, text=True).stdout.strip()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    postfix = subprocess.run(["postconf", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    try:
        with open("/proc/pressure/cpu") as f:
            pressure = f.readline().strip()
    except OSError:
        pressure = "n/a"
    return {"nproc": str(os.cpu_count()), "kernel": platform.release(), "df": df, "uptime": uptime,
            "cpuPressure": pressure, "postfix": postfix, "python": platform.python_version()}


def revision(source: str) -> str:
    """
    Which mailplat is measured: the tree's path, and for a git checkout its
    commit and whether it has changes not committed.
    """
    done = subprocess.run(["git", "-C", source, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if done.returncode:
        return source
    dirty = subprocess.run(["git", "-C", source, "status", "--porcelain", "--untracked-files=no", "mailplat"],
                           capture_output=True, text=True).stdout.strip()
    return f"{source} at {done.stdout.strip()}" + (" with uncommitted changes to mailplat/" if dirty else "")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each point (median reported)")
    parser.add_argument("--quick", action="store_true", help="a quarter of the messages, for a smoke test")
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit of one run")
    parser.add_argument("--json", default=os.path.join(REPO, "bench", "results", "smtp_vs_postfix.json"))
    parser.add_argument("--png", default=os.path.join(REPO, "bench", "results", "smtp_vs_postfix.png"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--mailplat-source", default=REPO, metavar="DIR",
                        help="the mailplat tree to run (default: this checkout; e.g. a 'git archive' of a commit)")
    parser.add_argument("--commit", metavar="REV",
                        help="run mailplat as committed at REV (a 'git archive' into a scratch directory), "
                             "not the working tree")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run mailplat as committed at REV ('baseline' rows), in the same rotation: "
                             "before and after a change measured side by side")
    parser.add_argument("--sessions", type=int, nargs="+", metavar="N", help="only the points with these sessions")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="KB", help="only the points of these sizes (2, 100)")
    parser.add_argument("--drivers", nargs="+", choices=("py", "smtp-source"),
                        help="only these clients (py: bench/smtp_accept.py)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("compare_smtp.py needs root for the scratch Postfix", file=sys.stderr)
        return 2

    snapshots = []
    try:
        if args.commit:
            snapshots.append(_snapshot(args.commit))
            args.mailplat_source = snapshots[-1]
        args.baseline_source = None
        if args.baseline:
            snapshots.append(_snapshot(args.baseline))
            args.baseline_source = snapshots[-1]
        return _main(args)
    finally:
        for snapshot in snapshots:
            shutil.rmtree(snapshot, ignore_errors=True)


def _snapshot(rev: str) -> str:
    """
    A scratch directory holding mailplat as committed at C{rev}.
    """
    snapshot = tempfile.mkdtemp(prefix="mpbsrc")
    archive = subprocess.run(["git", "-C", REPO, "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", snapshot], input=archive.stdout, check=True)
    return snapshot


def _commitName(rev: str) -> str:
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", rev], capture_output=True,
                            text=True).stdout.strip()
    return f"commit {commit} (git archive)"


def _main(args: argparse.Namespace) -> int:
    points = plan(args.quick, args.sessions, args.sizes, args.drivers)
    addresses = sorted({address(s, size, d) for d, s, size, _ in points} | {f"warm@{DOMAIN}"})
    before = machine()
    before["mailplat"] = revision(os.path.abspath(args.mailplat_source))
    if args.commit:
        before["mailplat"] = _commitName(args.commit)
    print(f"# mailplat from {before['mailplat']}", flush=True)
    if args.baseline:
        before["baseline"] = _commitName(args.baseline)
        print(f"# baseline from {before['baseline']}", flush=True)
    print(f"# nproc {before['nproc']}, kernel {before['kernel']}, {before['postfix'] and 'Postfix ' + before['postfix']}",
          flush=True)
    print(f"# {before['uptime']}", flush=True)
    servers: List[object] = []
    runs: List[Dict[str, object]] = []
    began = time.monotonic()
    try:
        source = os.path.abspath(args.mailplat_source)
        makers = [lambda: MailplatSMTP(addresses, 1, source), lambda: MailplatSMTP(addresses, 2, source),
                  lambda: Postfix(addresses), lambda: SMTPSink()]
        if args.baseline_source:
            baseline = args.baseline_source
            makers[:0] = [lambda: MailplatSMTP(addresses, 1, baseline, name="baseline w1"),
                          lambda: MailplatSMTP(addresses, 2, baseline, name="baseline w2")]
        for make in makers:
            server = make()
            servers.append(server)
            server.start()  # type: ignore[attr-defined]
        for server in servers:
            # Warm up: Postfix starts its smtpd and cleanup processes, and
            # both mailplat workers take connections.
            smtp_accept.run(server.port, 10, 200, 2 * KB, f"warm@{DOMAIN}", 30)  # type: ignore[attr-defined]
        for repeat in range(args.repeats):
            for driver, sessions, size, messages in points:
                turn = servers[repeat % len(servers):] + servers[:repeat % len(servers)]
                for server in turn:
                    if driver == "smtp-source" and server.name == "smtp-sink":  # type: ignore[attr-defined]
                        continue
                    r = runPoint(server, driver, sessions, size, messages, args.seconds)
                    runs.append(r)
                    print(f"# run {repeat + 1}/{args.repeats} {r['server']:<12} {driver:<11} {sessions:>2} sessions "
                          f"{size // KB:>3} KB: {r['messages']:>5} in {r['seconds']:.2f} s, {r['rate']:.0f}/s, "
                          f"p50 {fmt(r['p50'], 1)} p99 {fmt(r['p99'], 1)} ms, in Maildir {fmt(r['maildirRate'])}/s, "
                          f"server CPU {fmt(r['serverCpuMsPerMessage'], 2)} ms/msg, load {r['load']}"
                          + (f" ERRORS {r['errors']}" if r["errors"] else ""), flush=True)
    finally:
        for server in reversed(servers):
            server.cleanup()  # type: ignore[attr-defined]
    after = machine()
    rows = summarise(runs)
    print()
    print(f"nproc {before['nproc']}, kernel {before['kernel']}, Postfix {before['postfix']}, "
          f"Python {before['python']}; {len(runs)} runs in {time.monotonic() - began:.0f} s, "
          f"median of {args.repeats} each")
    print(f"before: {before['uptime']}; CPU pressure {before['cpuPressure']}")
    print(f"after:  {after['uptime']}; CPU pressure {after['cpuPressure']}")
    print(before["df"])
    print()
    print(table(rows))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": before, "after": after, "runs": runs, "summary": rows}, f, indent=1)
    if not args.no_plot:
        load = [m["uptime"].split("load average:")[-1].split(",")[0].strip() for m in (before, after)]
        plot(rows, args.png, f"SMTP durable acceptance on 127.0.0.1, nproc {before['nproc']}, median of "
             f"{args.repeats}; load {load[0]} at start, {load[1]} at end")
        print(f"\nplot: {args.png}")
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
