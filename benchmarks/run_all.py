"""Runs every benchmark script in this folder and writes BENCHMARKS.md (what `make bench` does).

    .venv/bin/python benchmarks/run_all.py                 # quick settings, writes BENCHMARKS.md
    .venv/bin/python benchmarks/run_all.py --full          # each script's own defaults
    .venv/bin/python benchmarks/run_all.py --only extract,serve --out /tmp/b.md
    .venv/bin/python benchmarks/run_all.py --only decode,train_caption --update   # re-measure two sections

Each script runs in its own process (one at a time, so they do not compete for the cores), with the quick
arguments below when it has an entry there, else with ``--quick`` when its ``--help`` offers one, else with its
defaults. Its printed table goes into the file verbatim (Markdown tables as they are, anything else as a code
block), under a heading with the command line and the wall-clock time. The file starts with the machine: CPU
model, cores, memory, load, Python and TensorFlow versions. A script that fails or times out is recorded as
such with the end of its stderr, and the exit code is 1. ``--update`` re-runs only the ``--only`` scripts and
replaces their sections (and rows of the script table) in the existing file, keeping every other section as it
was; a line under the introduction says which sections that run re-measured, when, and at what load.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.metadata
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Settings that keep `make bench` to a few minutes per script on 2 cores (each script documents its flags).
QUICK_ARGS = {
    "extract": ["--images", "100", "--in-flight", "0,1"],
    "extract_stages": ["--images", "200"],
    "retrieval": ["--measure-sentences", "500"],
    "export_latency": ["--repeats", "3"],
    "serve": ["--clients", "4", "--requests", "25"],
    "make_scenes": ["--num-images", "2000"],
}


def machine() -> dict:
    """CPU model, core count, memory, load average and versions of this machine."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = "unknown"
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        memory = f"{kb / 1024 ** 2:.1f} GiB"
    except (OSError, StopIteration):
        pass

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {"CPU": cpu, "cores": str(os.cpu_count()), "memory": memory,
            "load average (1/5/15 min) at start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
            "OS": platform.platform(), "Python": platform.python_version(),
            "TensorFlow": version("tensorflow"), "Keras": version("keras"), "Apache Beam": version("apache-beam")}


def scripts(only: list[str] | None) -> list[str]:
    """Benchmark scripts in this folder (not this runner, not private helpers), sorted by name."""
    names = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(HERE, "*.py")))
    names = [n for n in names if n != "run_all" and not n.startswith("_")]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise SystemExit(f"run_all: no benchmark script named {unknown}; found {names}")
        names = [n for n in names if n in only]
    return names


def arguments(name: str, full: bool, timeout: float) -> list[str]:
    """Quick arguments for a script (see the module docstring)."""
    if full:
        return []
    if name in QUICK_ARGS:
        return list(QUICK_ARGS[name])
    try:
        help_text = subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py"), "--help"], cwd=REPO,
                                   capture_output=True, text=True, timeout=min(timeout, 300)).stdout
    except subprocess.TimeoutExpired:
        return []
    return ["--quick"] if "--quick" in help_text else []


def run_one(name: str, args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.join("benchmarks", f"{name}.py"), *args]
    print(f"[bench] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        code = None
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = f"timed out after {timeout:.0f}s"
    seconds = time.time() - t0
    status = "ok" if code == 0 else ("timeout" if code is None else f"exit code {code}")
    print(f"[bench] {name}: {status} in {seconds:.0f}s", file=sys.stderr, flush=True)
    return {"name": name, "command": " ".join(cmd[1:]), "code": code, "status": status, "seconds": seconds,
            "stdout": out, "stderr": err}


def as_markdown(stdout: str) -> str:
    """Markdown table lines stay as they are; every other run of lines goes into a code block."""
    blocks, text = [], []
    for line in stdout.rstrip("\n").splitlines():
        if line.lstrip().startswith("|"):
            if text:
                blocks.append("```\n" + "\n".join(text) + "\n```")
                text = []
            if blocks and blocks[-1].startswith("|"):
                blocks[-1] += "\n" + line.strip()
            else:
                blocks.append(line.strip())
        elif line.strip() or text:
            text.append(line)
    if text:
        while text and not text[-1].strip():
            text.pop()
        blocks.append("```\n" + "\n".join(text) + "\n```")
    return "\n\n".join(blocks) if blocks else "(no output)"


def write_markdown(path: str, info: dict, results: list[dict], full: bool) -> None:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = ["# Benchmarks", "",
             f"Measured by `benchmarks/run_all.py{' --full' if full else ''}` (`make bench`) on {when}; every "
             "figure below comes from this one run. Re-run it on your machine: absolute speeds depend on the "
             "hardware and on what else is running (the load average at the start is listed).", "",
             "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "| script | status | seconds |", "|---|---|---|"]
    lines += [f"| [{r['name']}](#{r['name'].replace('_', '-')}) | {r['status']} | {r['seconds']:.0f} |"
              for r in results]
    for r in results:
        lines += ["", *section(r)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _anchor(name: str) -> str:
    return name.replace("_", "-")


def section(r: dict) -> list[str]:
    """One script's section: heading, command line, status, its output as Markdown (and stderr if it failed)."""
    lines = [f"## {_anchor(r['name'])}", "", f"`{r['command']}` ({r['status']}, {r['seconds']:.0f} s)", "",
             as_markdown(r["stdout"])]
    if r["code"] != 0:
        tail = "\n".join(r["stderr"].rstrip().splitlines()[-15:])
        lines += ["", "stderr (end):", "", "```", tail, "```"]
    return lines


def update_markdown(path: str, info: dict, results: list[dict]) -> None:
    """Replaces the sections (and script-table rows) of ``results`` in the file at ``path``; keeps the rest."""
    with open(path, encoding="utf-8") as f:
        text = f.read().rstrip("\n")
    head, *bodies = text.split("\n## ")
    sections = {body.split("\n", 1)[0].strip(): "## " + body for body in bodies}
    for r in results:
        sections[_anchor(r["name"])] = "\n".join(section(r))
    head_lines = head.split("\n")
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = ", ".join(f"[{_anchor(r['name'])}](#{_anchor(r['name'])})" for r in results)
    note = (f"Re-measured on {when} by `benchmarks/run_all.py --only {','.join(r['name'] for r in results)} "
            f"--update` (load average at its start {info['load average (1/5/15 min) at start']}): {names}; the "
            "other sections are from the run above.")
    intro = next(i for i, line in enumerate(head_lines) if line.startswith("Measured by"))
    head_lines.insert(intro + 1, "")
    head_lines.insert(intro + 2, note)
    machine_text = "\n".join(head_lines)
    rows = {r["name"]: f"| [{r['name']}](#{_anchor(r['name'])}) | {r['status']} (re-measured {when}) | "
                       f"{r['seconds']:.0f} |" for r in results}
    out = []
    for line in sections.get("Machine", "").split("\n"):
        name = line.split("]", 1)[0].lstrip("| [") if line.startswith("| [") else None
        out.append(rows.pop(name) if name in rows else line)
    table_end = max(i for i, line in enumerate(out) if line.startswith("|"))
    out[table_end + 1:table_end + 1] = list(rows.values())  # scripts the table did not list yet
    sections["Machine"] = "\n".join(out).rstrip("\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(machine_text.rstrip("\n") + "\n\n" + "\n\n".join(s.rstrip("\n") for s in sections.values()) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"), help="Markdown file to write")
    p.add_argument("--full", action="store_true", help="run each script with its own defaults (slower)")
    p.add_argument("--only", default=None, help="comma-separated script names (default: all)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per script (default 1800)")
    p.add_argument("--update", action="store_true",
                   help="replace only the re-run scripts' sections in the existing --out file (use with --only)")
    args = p.parse_args(argv)
    if args.update and not os.path.isfile(args.out):
        raise SystemExit(f"run_all: --update needs an existing {args.out}")
    info = machine()
    names = scripts([n.strip() for n in args.only.split(",") if n.strip()] if args.only else None)
    results = [run_one(n, arguments(n, args.full, args.timeout), args.timeout) for n in names]
    if args.update:
        update_markdown(args.out, info, results)
    else:
        write_markdown(args.out, info, results, args.full)
    failed = [r["name"] for r in results if r["code"] != 0]
    print(f"wrote {args.out} ({len(results)} benchmarks" + (f"; failed: {', '.join(failed)})" if failed else ")"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
