"""Benchmark `convtune prepare --format prompt-completion` against a notebook baseline and the floor.

For an SGD file of 156k exchanges (by default tests/data's 200 SGD dialogues concatenated 84
times, 16 MB; `--input` takes the real 16 MB file or any other) and a synthetic file ten times
larger (its conversations concatenated 10 times, one header, cached in bench/results/), runs each command as its own
subprocess and measures its wall time (perf_counter around the child), CPU time, and peak RSS
of its whole process tree (see `run_once`: neither RUSAGE_CHILDREN, a running maximum over all
children, nor a plain wait4 on a child of this process gives the command's own figure):

  convtune             convtune prepare INPUT -o TMP --format prompt-completion --force
  convtune --no-tokens the same without token counting
  pandas baseline      bench/notebook_baseline.py (read_csv, iterrows, list of dicts, json.dumps)
  floor                bench/floor.py (a bare csv.reader loop, one json.dumps per reply)

Commands run round-robin, `--repeat` times; the table keeps the best (lowest) wall time and the
highest peak RSS seen. Every output is checked on the first round: the baseline must be byte for
byte the floor's output, convtune's train + valid files must hold as many lines and bytes.

  .venv/bin/python bench/prepare.py [--repeat 3] [--skip-pandas-large] [--write]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"  # git-ignored: the synthetic file and scratch outputs live here
# The real 16 MB SGD file (156k exchanges) is not in the repository: by default the benchmark
# builds a file of the same size from the 200 dialogues of tests/data (x84: 157k exchanges).
SMALL_INPUT = ROOT / "tests" / "data" / "sgd_taskoriented_small.csv"
SMALL_SCALE = 84
VENV_BIN = ROOT / ".venv" / "bin"
MARK_START = "<!-- bench/prepare.py: start -->"
MARK_END = "<!-- bench/prepare.py: end -->"
SEPARATOR_ROW = "###;###"


@dataclass
class Command:
    name: str
    argv: list[str]  # INPUT and OUT are replaced per run
    kind: str  # "convtune" (writes a folder) or "file" (writes OUT as one JSONL file)


@dataclass
class Result:
    command: Command
    label: str  # the file's label
    exchanges: int
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    processes: int = 1  # most processes seen at once in the command's tree
    note: str = ""

    @property
    def wall(self) -> float:
        return min(self.walls)

    @property
    def cpu(self) -> float:
        return self.cpus[self.walls.index(self.wall)]

    @property
    def rss_mb(self) -> float:
        return max(self.rss_kib) * 1024 / 1e6


def commands() -> list[Command]:
    py = str(VENV_BIN / "python")
    cv = str(VENV_BIN / "convtune")
    base = [cv, "prepare", "INPUT", "-o", "OUT", "--format", "prompt-completion", "--force"]
    return [
        Command("convtune prepare", base, "convtune"),
        Command("convtune prepare --no-tokens", [*base, "--no-tokens"], "convtune"),
        Command(
            "pandas baseline", [py, str(BENCH / "notebook_baseline.py"), "INPUT", "OUT"], "file"
        ),
        Command("floor", [py, str(BENCH / "floor.py"), "INPUT", "OUT"], "file"),
    ]


# ---------------------------------------------------------------------------------------------
# Inputs


def count_exchanges(path: Path) -> tuple[int, int]:
    """(exchanges, conversations): rows that are not the separator, and separated blocks."""
    exchanges = separators = 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter=";")
        next(rows)
        for row in rows:
            if row and row[0].strip() == "###":
                separators += 1
            elif row:
                exchanges += 1
    return exchanges, separators + 1


def build_scaled(src: Path, times: int) -> Path:
    """`src`'s conversations `times` times over, one header, `###;###` between the copies.

    Bytes are kept as they are (BOM, CRLF). Cached: rebuilt only when missing, older than the
    source, or of the wrong size.
    """
    dst = RESULTS / f"{src.stem}_x{times}{src.suffix}"
    data = src.read_bytes()
    bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""
    newline = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
    head_end = data.index(b"\n") + 1
    header, body = data[len(bom) : head_end], data[head_end:]
    if not body.endswith(b"\n"):
        body += newline
    sep = SEPARATOR_ROW.encode() + newline
    expected = len(bom) + len(header) + times * len(body) + (times - 1) * len(sep)
    if (
        dst.exists()
        and dst.stat().st_size == expected
        and dst.stat().st_mtime >= src.stat().st_mtime
    ):
        return dst
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.write(bom + header)
        for i in range(times):
            if i:
                out.write(sep)
            out.write(body)
    os.replace(tmp, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Running and measuring


# Peak memory must be the command's own, all of it.
# - Its own process: Python starts children with vfork, so a child of *this* process would start
#   with this process's high-water mark (52 MB here after building the x10 file) and ru_maxrss
#   keeps it across exec. A small intermediate that forks the command and reads os.wait4's
#   ru_maxrss avoids that: GNU time (about 2 MB), or without it a bare interpreter (-I -S).
# - Its children: `convtune prepare` counts tokens in a second process on inputs over 2 MiB.
#   ru_maxrss is the largest single process, not the sum, so a sampler thread also adds up the
#   resident sets (/proc/PID/statm) of the whole tree every 10 ms. The figure reported is the
#   larger of the two: the tree's peak sum (shared library pages counted once per process).
GNU_TIME = shutil.which("time", path="/usr/bin:/bin")
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {usage.ru_utime} {usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
SAMPLE_S = 0.010


def _parents() -> dict[int, int]:
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    stat = f.read()
                parents[int(d)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return parents


class TreeSampler(threading.Thread):
    """Samples the summed RSS of `root`'s descendants (not `root`, the measuring wrapper)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.done = threading.Event()
        self.peak_kib = 0
        self.most = 0

    def run(self) -> None:
        tree: list[int] = []
        tick = 0
        while not self.done.is_set():
            if tick % 5 == 0:  # look for new processes every 50 ms
                parents = _parents()
                tree, frontier = [], [self.root]
                while frontier:
                    pid = frontier.pop()
                    kids = [c for c, pp in parents.items() if pp == pid]
                    tree += kids
                    frontier += kids
            total = 0
            alive = 0
            for pid in tree:
                try:
                    with open(f"/proc/{pid}/statm", "rb") as f:
                        total += int(f.read().split()[1]) * PAGE_KIB
                    alive += 1
                except (OSError, ValueError, IndexError):
                    pass
            self.peak_kib = max(self.peak_kib, total)
            self.most = max(self.most, alive)
            tick += 1
            self.done.wait(SAMPLE_S)


def run_once(cmd: Command, src: Path, scratch: Path) -> tuple[float, float, int, int, Path]:
    """Run `cmd` on `src`: (wall s, CPU s, peak RSS KiB, most processes, output path)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    out = scratch / "out" if cmd.kind == "convtune" else scratch / "out.jsonl"
    argv = [str(src) if a == "INPUT" else str(out) if a == "OUT" else a for a in cmd.argv]
    log, usage_file = scratch / "log.txt", scratch / "usage.txt"
    if GNU_TIME:
        argv = [GNU_TIME, "-f", "%M %U %S", "-o", str(usage_file), *argv]
    else:
        argv = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(usage_file), *argv]
    with open(log, "wb") as logf:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
    if code != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{cmd.name} failed on {src.name} (exit {code}):\n{tail}")
    # GNU time may write "Command exited ..." first: the figures are on the last line
    maxrss, utime, stime = usage_file.read_text().splitlines()[-1].split()
    peak = max(int(maxrss), sampler.peak_kib)  # KiB (ru_maxrss on Linux)
    return wall, float(utime) + float(stime), peak, max(sampler.most, 1), out


def output_files(out: Path) -> list[Path]:
    return sorted(out.glob("*.jsonl")) if out.is_dir() else [out]


def lines_and_bytes(paths: list[Path]) -> tuple[int, int]:
    lines = size = 0
    for p in paths:
        size += p.stat().st_size
        with open(p, "rb") as f:
            lines += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return lines, size


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_outputs(outputs: dict[str, Path], label: str) -> list[str]:
    """Compare every output with the floor's; return notes, raise on a mismatch."""
    floor = outputs["floor"]
    f_lines, f_bytes = lines_and_bytes([floor])
    f_digest = digest(floor)
    notes = [f"{label}: floor wrote {f_lines:,} examples ({f_bytes / 1e6:,.1f} MB)"]
    for name, out in outputs.items():
        if name == "floor":
            continue
        files = output_files(out)
        lines, size = lines_and_bytes(files)
        if (lines, size) != (f_lines, f_bytes):
            raise SystemExit(
                f"{name} on {label}: {lines:,} lines / {size:,} bytes,"
                f" the floor {f_lines:,} lines / {f_bytes:,} bytes"
            )
        if len(files) == 1 and digest(files[0]) == f_digest:
            notes.append(f"{label}: {name}: byte-identical to the floor")
        else:
            notes.append(
                f"{label}: {name}: same examples count and bytes as the floor"
                f" (split over {len(files)} files)"
            )
    return notes


# ---------------------------------------------------------------------------------------------
# Reporting


def table(results: list[Result]) -> str:
    floors = {r.label: r.wall for r in results if r.command.name == "floor" and r.walls}
    pandas = {r.label: r.wall for r in results if r.command.name == "pandas baseline" and r.walls}
    rows = [
        "| command | file | exchanges | wall s | exchanges/s | peak RSS MB | ratio vs floor"
        " | speedup vs pandas | CPU s | processes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if not r.walls:
            rows.append(
                f"| {r.command.name} | {r.label} | {r.exchanges:,} | — | — | — | — | {r.note} | — | — |"
            )
            continue
        floor = floors.get(r.label)
        ratio = f"{r.wall / floor:.2f}x" if floor else "—"
        p = pandas.get(r.label)
        speedup = f"{p / r.wall:.1f}x" if p else "—"
        rows.append(
            f"| {r.command.name} | {r.label} | {r.exchanges:,} | {r.wall:.2f}"
            f" | {r.exchanges / r.wall:,.0f} | {r.rss_mb:.1f} | {ratio} | {speedup}"
            f" | {r.cpu:.2f} | {r.processes} |"
        )
    return "\n".join(rows)


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} cores{mem}, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}"
    )


def write_section(path: Path, section: str) -> None:
    block = f"{MARK_START}\n{section.rstrip()}\n{MARK_END}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(MARK_START) + r".*?" + re.escape(MARK_END) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--input",
        type=Path,
        default=None,
        help="the spreadsheet (default: tests/data's SGD dialogues x84, built in bench/results)",
    )
    ap.add_argument("--scale", type=int, default=10, help="size of the synthetic file (x input)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per command; the best is kept")
    ap.add_argument(
        "--skip-pandas-large", action="store_true", help="no pandas baseline on the synthetic file"
    )
    ap.add_argument("--only", action="append", help="run only commands whose name contains this")
    ap.add_argument(
        "--write", action="store_true", help="update the results section of BENCHMARKS.md"
    )
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.scale < 2:
        ap.error("--repeat must be at least 1 and --scale at least 2")

    if args.input is None:
        print(f"building the default input from {SMALL_INPUT} ...", file=sys.stderr, flush=True)
        src = build_scaled(SMALL_INPUT, SMALL_SCALE)
    else:
        src = args.input.resolve()
    print(f"building the x{args.scale} file from {src} ...", file=sys.stderr, flush=True)
    big = build_scaled(src, args.scale)
    files = []
    for label, path in ((src.name, src), (f"{src.stem} x{args.scale}", big)):
        exchanges, conversations = count_exchanges(path)
        size = path.stat().st_size
        files.append((label, path, exchanges))
        print(
            f"  {label}: {exchanges:,} exchanges, {conversations:,} conversations,"
            f" {size / 1e6:,.1f} MB",
            file=sys.stderr,
        )

    cmds = commands()
    if args.only:
        keep = {"floor"} | {c.name for c in cmds if any(o in c.name for o in args.only)}
        cmds = [c for c in cmds if c.name in keep]
    results: dict[tuple[str, str], Result] = {}
    for label, _, exchanges in files:
        for c in cmds:
            results[(c.name, label)] = Result(c, label, exchanges)
    if args.skip_pandas_large and ("pandas baseline", files[1][0]) in results:
        results[("pandas baseline", files[1][0])].note = "skipped (--skip-pandas-large)"

    RESULTS.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="prepare-", dir=RESULTS) as tmp:
        for label, path, _ in files:
            for round_ in range(args.repeat):
                outputs: dict[str, Path] = {}
                for c in cmds:
                    r = results[(c.name, label)]
                    if r.note:
                        continue
                    scratch = Path(tmp) / re.sub(r"\W+", "-", c.name)
                    wall, cpu, rss, procs, out = run_once(c, path, scratch)
                    r.walls.append(wall)
                    r.cpus.append(cpu)
                    r.rss_kib.append(rss)
                    r.processes = max(r.processes, procs)
                    outputs[c.name] = out
                    print(
                        f"  [{round_ + 1}/{args.repeat}] {label:<34} {c.name:<30}"
                        f" {wall:7.2f} s {cpu:7.2f} s CPU {rss * 1024 / 1e6:8.1f} MB"
                        f" ({procs} process{'es' if procs > 1 else ''})",
                        file=sys.stderr,
                        flush=True,
                    )
                if round_ == 0:
                    # each command has its own scratch folder: round 1's outputs are all there
                    notes += check_outputs(outputs, label)

    ordered = [results[(c.name, label)] for label, _, _ in files for c in cmds]
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--write"]
    command = " ".join([".venv/bin/python bench/prepare.py", *given])
    how = "from GNU time's `%M`" if GNU_TIME else "from a bare forking launcher"
    section = "\n".join(
        [
            f"Produced by `{command}` on {datetime.date.today().isoformat()}"
            f" ({machine()}; convtune at {git_state()}).",
            f"Best wall time of {args.repeat} round-robin runs (CPU s: user + system of that"
            " run, all processes); peak RSS: the highest of those runs, for the command's whole"
            f" process tree (the larger of `ru_maxrss` {how} and the summed RSS of the tree"
            " sampled every 10 ms; MB = 10^6 bytes). processes: most processes seen at once."
            " Wall time includes interpreter start-up and imports.",
            "",
            table(ordered),
            "",
            "Checks on the first run:",
            "",
            *[f"- {n}" for n in notes],
        ]
    )
    print(section)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", section)
        print(f"\nupdated {ROOT / 'BENCHMARKS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
