"""Profile etcd-dr's hot paths on real etcd: the initial copy, and the replay under a live writer.

    .venv/bin/python -m bench.profile_mirror copy [--keys 100000] [--data-dir DIR] [--profile py-spy|cprofile]
    .venv/bin/python -m bench.profile_mirror replay [--writes 20000] [--data-dir DIR] [--profile ...]

Not a benchmark against make-mirror (that is bench/mirror_bench.py): it runs etcd-dr alone, as a
subprocess exactly as a user runs it, optionally under py-spy (a flame graph SVG, `--format raw` text
with --raw) or cProfile (a .pstats file and its top functions printed), and prints the tool's time and
CPU, so that a change to the engine can be measured before and after on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

from etcd_dr.local import binaries as etcd_binaries

from .mirror_bench import (
    DATA,
    EtcdDr,
    Proc,
    Storage,
    Tools,
    backlog_drain,
    copy_with_etcd_dr,
    describe_copy,
    describe_load,
    fresh_pair,
    load_keys,
    replay_run,
    say,
)

OUT = Path(__file__).resolve().parent / "results"


class Spy:
    """py-spy attached by PID to the next etcd-dr the bench starts (py-spy running the command itself
    would take the bench's SIGTERM, and leave etcd-dr running)."""

    def __init__(self, tools: Tools, out: Path, raw: bool) -> None:
        self.armed = False
        self.procs: list[subprocess.Popen[bytes]] = []
        start = tools.mirror

        def mirror(tag: str, src: str, dest: str, *, once: bool) -> Proc:
            proc = start(tag, src, dest, once=once)
            if self.armed:
                self.armed = False
                spy = Path(sys.executable).with_name("py-spy")
                fmt = ["--format", "raw"] if raw else []
                argv = [str(spy), "record", "--rate", "250", "--nonblocking", "-o", str(out), *fmt]
                argv += ["--pid", str(proc.pid)]
                self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
            return proc

        tools.mirror = mirror  # type: ignore[method-assign]

    def finish(self) -> None:
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def profiled(base: EtcdDr, how: str, out: Path) -> EtcdDr:
    if how == "cprofile":
        code = "import sys; from etcd_dr.cli import main; sys.argv[0] = 'etcd-dr'; main()"
        argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-c", code]
        return EtcdDr(argv, base.env, base.source + f" under cProfile -> {out}")
    return base


async def run(args: argparse.Namespace) -> None:
    bins = etcd_binaries.find(args.etcd_version)
    storage = Storage(Path(args.data_dir) if args.data_dir else None)
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = {"py-spy": ".txt" if args.raw else ".svg", "cprofile": ".pstats"}.get(args.profile, "")
    out = OUT / f"profile-{args.scenario}{suffix}"
    with tempfile.TemporaryDirectory(prefix="etcd-dr-profile-") as tmp:
        base = EtcdDr.at_revision(args.rev, Path(tmp)) if args.rev else EtcdDr.installed()
        # Only the measured run is profiled: the replay's backlog run is profiled when asked for.
        tools = Tools(bins, Path(tmp), base, storage, quiet_wait=not args.no_quiet_wait)
        spy = Spy(tools, out, args.raw) if args.profile == "py-spy" else None
        say(f"etcd-dr: {base.source}; etcd {bins.version}; data: {storage.describe(bins)}")
        for i in range(args.repeat):
            async with fresh_pair(tools, args.scenario) as pair:
                if args.scenario == "copy":
                    n = args.keys
                    secs = await load_keys(pair.src_client, DATA, n, batch=100, inflight=8)
                    say(f"loaded {n:,} keys in {secs:.1f} s")
                    tools.etcd_dr = profiled(base, args.profile, out)
                    if spy is not None:
                        spy.armed = True
                    run = await copy_with_etcd_dr(tools, "copy", pair, pair.dst_addr, n, 600.0)
                    say(describe_copy(f"run {i + 1}", run, n))
                else:
                    tools.etcd_dr = base
                    if spy is not None:
                        spy.armed = not args.backlog
                    r = await replay_run(tools, "replay", pair, pair.dst_addr, "etcd-dr", args.writes, 120.0)
                    say(describe_load(f"run {i + 1}", r))
                    tools.etcd_dr = profiled(base, args.profile, out) if args.backlog else base
                    if spy is not None:
                        spy.armed = args.backlog
                    d = await backlog_drain(tools, "backlog", pair, pair.dst_addr, args.writes, 600.0)
                    say(
                        f"  backlog of {args.writes:,}: --once {d.seconds:.2f} s, replay "
                        f"{d.replay_seconds or 0:.2f} s ({d.rate:,.0f} rev/s), CPU {d.cpu_seconds:.2f} s"
                    )
    if spy is not None:
        spy.finish()
    if args.profile == "cprofile":
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    elif args.profile != "none":
        say(f"profile: {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["copy", "replay"])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--writes", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--etcd-version", default="3.4")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rev", default=None, help="profile etcd-dr as of this git revision")
    p.add_argument("--profile", choices=["none", "py-spy", "cprofile"], default="none")
    p.add_argument("--raw", action="store_true", help="py-spy: collapsed stacks (text), not an SVG")
    p.add_argument("--backlog", action="store_true", help="replay: profile the backlog run, not the live one")
    p.add_argument("--no-quiet-wait", action="store_true")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
