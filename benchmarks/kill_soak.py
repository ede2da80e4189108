"""Soak: `kill -9` at a random moment of every writing command, then the same command again.

For each command a workspace is prepared that already holds earlier outputs (a store
of fewer images, another run's results and adapters, an older report, an earlier
export and pretraining). One uninterrupted run on a fresh copy is the reference and
fixes the command's duration. Then, per kill, on a fresh copy: start the command, send
SIGKILL after a delay drawn uniformly from [0, duration) (seeded), check that
everything a reader sees is readable at that moment (stores open and verify, result
CSVs read, report PNGs and HTML whole, exports and weights load), rerun the same
command to completion and compare with the reference: store datasets bit-identical,
result CSV rows identical, adapters and weights tensor-identical, report tables
identical and every figure a whole PNG; no temporary file left; every file of the
earlier outputs that the command does not own unchanged, and the other runs' result
rows still present.

    python benchmarks/kill_soak.py --kills 5 --seed 0
    python benchmarks/kill_soak.py --kills 1 --commands probe,report
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Cost columns (featkit.cost) hold wall times and peak memory: never equal across runs.
TIMING_COLUMNS = (
    "seconds",
    "peak_mb",
    "extract_s_per_image",
    "seconds_per_episode",
    "seconds_max",
)
# Report tables that carry those columns; compared without them.
TIMED_CSVS = ("comparison.csv", "cost.csv")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
RESULT_FILES = ("results.csv", "summary.csv", "per_class.csv", "confusion.csv")
# Small models and few epochs so that one run takes seconds; fp32 so that every run
# computes the same numbers whatever the CPU offers.
EXTRACT = ["--precision", "fp32", "--shard-size", "8", "--batch-size", "4", "--workers", "0"]
TUNE = ["--model", "featkit-tiny-dino", "--precision", "fp32"]
PRETRAIN = ["--arch", "featkit-tiny-dino", "--epochs", "2", "--batch-size", "16"]
PRETRAIN += ["--out-dim", "64", "--hidden-dim", "64", "--bottleneck-dim", "32"]
PRETRAIN += ["--local-crops", "2", "--precision", "fp32"]


def _env() -> dict[str, str]:
    # One thread: the killed run, its rerun and the reference use the same kernels.
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
        COLUMNS="200",
    )


def featkit(*args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "featkit", *map(str, args)]
    return subprocess.run(
        cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(result.args[3:5])} failed:\n{result.stderr[-2000:]}")


@dataclass
class Command:
    """One writing command: its arguments (``{ws}``, ``{data}``, ``{base}`` filled in)
    and the paths under the workspace that it owns (it may change them)."""

    name: str
    args: list[str]
    owns: tuple[str, ...]
    start: str = "ws"  # the prepared workspace it starts from
    resume: tuple[str, ...] = ()  # what the rerun adds, where the command documents it


COMMANDS = [
    Command(
        "extract pixels",
        ["extract", "{data}", "--model", "pixels", *EXTRACT, "-w", "{ws}"],
        ("digits/pixels.h5", "digits/.pixels.h5"),
        "ws_sub",
    ),
    Command(
        "extract tiny-dino",
        ["extract", "{data}", "--model", "featkit-tiny-dino", *EXTRACT, "-w", "{ws}"],
        ("digits/featkit-tiny-dino.h5", "digits/.featkit-tiny-dino.h5"),
        "ws_sub",
    ),
    Command(
        "import",
        [
            "import",
            "{base}/exp_full/features.npy",
            "--labels",
            "{base}/exp_full/metadata.csv",
            "--name",
            "imp",
            "--dataset",
            "digits",
            "--overwrite",
            "-w",
            "{ws}",
        ],
        ("digits/imp.h5", "digits/.imp.h5"),
    ),
    Command(
        "probe",
        [
            "probe",
            "{ws}/digits/pixels.h5",
            "--shots",
            "1,all",
            "--episodes",
            "2",
            "--protocols",
            "knn,prototype,logistic",
            "--seed",
            "0",
            "-w",
            "{ws}",
        ],
        ("results",),
    ),
    Command(
        "finetune linear",
        [
            "finetune",
            "{data}",
            *TUNE,
            "--method",
            "linear",
            "--shots",
            "1,all",
            "--episodes",
            "2",
            "--seed",
            "0",
            "-w",
            "{ws}",
        ],
        ("results", "finetune"),
    ),
    Command(
        "finetune lora",
        [
            "finetune",
            "{data}",
            *TUNE,
            "--method",
            "lora",
            "--shots",
            "1",
            "--episodes",
            "1",
            "--seed",
            "0",
            "-w",
            "{ws}",
        ],
        ("results", "finetune"),
    ),
    Command("report", ["report", "{ws}"], ("report",)),
    Command(
        "pretrain",
        ["pretrain", "{data}", *PRETRAIN, "--seed", "0", "-w", "{ws}"],
        ("pretrain/digits",),
        resume=("--resume",),
    ),
    Command("export", ["export", "{ws}/digits/pixels.h5", "--out", "{ws}/exp"], ("exp",)),
]


def build_base(base: Path, per_class: int) -> None:
    """The data and a workspace holding earlier outputs of every command."""
    from featkit.data.digits import write_digits

    data = write_digits(base / "digits", imbalance=1.0, max_per_class=per_class, size=32)
    ws = base / "ws"
    # Stores of fewer images: the extract soak then extends them (the old store must stay
    # readable until the merged one replaces it).
    aside = base / "aside"
    aside.mkdir()
    moved = sorted((data / "9").iterdir())[: per_class // 2]
    for path in moved:
        shutil.move(path, aside / path.name)
    for model in ("pixels", "featkit-tiny-dino"):
        _ok(featkit("extract", data, "--model", model, *EXTRACT, "-w", ws))
    _ok(featkit("export", ws / "digits/pixels.h5", "--out", ws / "exp"))  # the older export
    _ok(
        featkit(
            "import",
            ws / "exp/features.npy",
            "--labels",
            ws / "exp/metadata.csv",
            "--name",
            "imp",
            "--dataset",
            "digits",
            "-w",
            ws,
        )
    )
    shutil.copytree(ws, base / "ws_sub")
    for path in moved:
        shutil.move(aside / path.name, data / "9" / path.name)
    # The stores as the probe, fine-tune, report and export soaks find them: complete.
    for model in ("pixels", "featkit-tiny-dino"):
        _ok(featkit("extract", data, "--model", model, *EXTRACT, "-w", ws))
    _ok(featkit("export", ws / "digits/pixels.h5", "--out", base / "exp_full"))
    # Another run's results, adapters and pretraining (seed 1): never to be lost.
    _ok(
        featkit(
            "probe",
            ws / "digits/featkit-tiny-dino.h5",
            "--shots",
            "1,all",
            "--episodes",
            "2",
            "--protocols",
            "knn,prototype",
            "--seed",
            "1",
            "-w",
            ws,
        )
    )
    _ok(featkit("report", ws))  # older than the fine-tune rows below
    _ok(
        featkit(
            "finetune",
            data,
            *TUNE,
            "--method",
            "linear",
            "--shots",
            "5",
            "--episodes",
            "1",
            "--seed",
            "1",
            "-w",
            ws,
        )
    )
    _ok(
        featkit(
            "pretrain",
            data,
            *PRETRAIN,
            "--seed",
            "1",
            "-w",
            ws,
            "--out",
            ws / "pretrain/seed1/tiny.safetensors",
        )
    )


# ---------------------------------------------------------------- what a reader sees


def _visible(ws: Path) -> list[Path]:
    """Files a reader would open: no hidden files or folders, no temporaries."""
    out = []
    for path in sorted(ws.rglob("*")):
        parts = path.relative_to(ws).parts
        if path.is_file() and not any(p.startswith(".") for p in parts) and not _is_temp(path):
            out.append(path)
    return out


def _is_temp(path: Path) -> bool:
    return ".tmp" in path.name or path.name.endswith((".partial", "~"))


def _temporaries(ws: Path) -> list[str]:
    return [str(p.relative_to(ws)) for p in sorted(ws.rglob("*")) if _is_temp(p)]


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(sorted(load_file(str(path)).items()))


def check_readable(ws: Path, kept_run_ids: set[str]) -> list[str]:
    """Everything under the workspace opens as what it claims to be; each problem a line."""
    import pandas as pd

    from featkit.results.io import read_confusion, read_per_class, read_results, read_summary
    from featkit.store.reader import open_store

    problems: list[str] = []
    for path in _visible(ws):
        rel = path.relative_to(ws)
        try:
            if path.suffix == ".h5":
                with open_store(path) as store:
                    for kind in store.feature_kinds:
                        store.features(kind)  # verifies the checksums, finite ok rows
            elif path.suffix == ".png":
                blob = path.read_bytes()
                if not (blob.startswith(PNG_SIGNATURE) and blob.endswith(PNG_END)):
                    problems.append(f"{rel}: not a whole PNG ({len(blob)} bytes)")
            elif path.suffix == ".html":
                if not path.read_text(encoding="utf-8").rstrip().endswith("</html>"):
                    problems.append(f"{rel}: HTML cut short")
            elif path.suffix == ".safetensors":
                tensors = _safetensors(path)
                meta = path.with_suffix(".json")
                if meta.is_file():
                    want = json.loads(meta.read_text()).get("adapter_sha256")
                    got = hashlib.sha256(path.read_bytes()).hexdigest()
                    if want and want != got:
                        problems.append(f"{rel}: weights do not match adapter_sha256")
                elif not tensors:
                    problems.append(f"{rel}: no tensors")
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.name == "features.npy":
                rows = np.load(path).shape[0]
                meta_rows = len(pd.read_csv(path.with_name("metadata.csv")))
                if rows != meta_rows:
                    problems.append(f"{rel}: {rows} rows beside {meta_rows} metadata rows")
        except Exception as err:  # every failure to read is the finding
            problems.append(f"{rel}: {type(err).__name__}: {str(err)[:160]}")
    if (ws / "results").is_dir():
        try:
            results = read_results(ws)
            read_summary(ws)
            runs = set(results["run_id"])
            for reader in (read_per_class, read_confusion):
                extra = set(reader(ws)["run_id"]) - runs
                if extra:
                    problems.append(f"results: {reader.__name__} has runs {extra} not in results")
            if not kept_run_ids <= runs:
                problems.append(f"results: earlier runs lost: {kept_run_ids - runs}")
        except Exception as err:  # likewise
            problems.append(f"results: {type(err).__name__}: {str(err)[:160]}")
    return problems


# ---------------------------------------------------------------- outcome of a run


def outcome(ws: Path, command: Command) -> dict[str, object]:
    """What the command produced, in a form that compares values, not file bytes."""
    import pandas as pd

    from featkit.store.reader import open_store

    out: dict[str, object] = {}
    for owned in command.owns:
        root = ws / owned
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            rel = str(path.relative_to(ws))
            if _is_temp(path) or path.name.endswith(".lock") or path.name.startswith("."):
                continue
            if path.suffix == ".h5":
                with open_store(path) as store:
                    value: object = {
                        **{
                            k: store.raw_rows(k, 0, store.num_rows).tobytes()
                            for k in store.feature_kinds
                        },
                        "paths": store.paths(include_failed=True),
                        "status": list(store.status()),
                        "labels": np.asarray(store.labels(include_failed=True)).tobytes(),
                        "splits": store.splits(include_failed=True),
                    }
            elif path.suffix == ".csv" and (owned == "results" or path.name in TIMED_CSVS):
                # The store column names the workspace: compare it relative to that.
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
                # What a step cost (wall seconds, peak memory) differs between any two runs.
                frame = frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])
                frame = frame.replace(str(ws), "<ws>", regex=False)
                frame = frame.apply(lambda col: col.str.replace(str(ws), "<ws>", regex=False))
                value = sorted(map(tuple, frame.to_numpy().tolist()))
            elif path.suffix == ".safetensors":
                value = {k: v.tobytes() for k, v in _safetensors(path).items()}
            elif path.suffix == ".npy":
                value = np.load(path).tobytes()
            elif path.suffix == ".png":
                blob = path.read_bytes()  # figures: whole, not byte-equal (metadata varies)
                value = blob.startswith(PNG_SIGNATURE) and blob.endswith(PNG_END)
            elif path.suffix == ".html":
                value = path.read_text(encoding="utf-8").rstrip().endswith("</html>")
            elif path.suffix == ".pt":
                value = "present"  # the resume state: pickled, compared through the weights
            else:
                value = path.read_bytes().replace(str(ws).encode(), b"<ws>")
            out[rel] = value
    return out


def _foreign(ws: Path, command: Command) -> dict[str, str]:
    """SHA-256 of every earlier file the command does not own."""
    out = {}
    for path in sorted(ws.rglob("*")):
        rel = path.relative_to(ws)
        if not path.is_file() or _is_temp(path) or path.name.endswith(".lock"):
            continue
        if any(
            str(rel) == o or str(rel).startswith(o + "/") or str(rel).startswith(o + ".")
            for o in command.owns
        ):
            continue
        out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _owned(ws: Path, command: Command) -> dict[str, str]:
    """SHA-256 of every file the command owns, temporaries and hidden files included."""
    out = {}
    for path in sorted(ws.rglob("*")):
        rel = str(path.relative_to(ws))
        if path.is_file() and any(
            rel == o or rel.startswith((o + "/", o + ".")) for o in command.owns
        ):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run_ids(ws: Path) -> set[str]:
    import pandas as pd

    path = ws / "results" / "results.csv"
    return set(pd.read_csv(path, dtype=str)["run_id"]) if path.is_file() else set()


# ---------------------------------------------------------------- the soak


@dataclass
class Row:
    command: str
    tried: int = 0
    killed: int = 0  # the process was still running when SIGKILL came
    traces: int = 0  # killed after it had begun writing (a file it owns new or changed)
    survived: int = 0
    readable: int = 0
    failures: list[str] = field(default_factory=list)


def _fill(args: list[str], ws: Path, base: Path) -> list[str]:
    return [a.format(ws=ws, data=base / "digits", base=base) for a in args]


def _signature(ws: Path, command: Command) -> list[tuple[str, int, int]]:
    """Name, size and mtime of every file the command owns (cheap enough to poll)."""
    out = []
    for owned in command.owns:
        root = ws / owned
        for path in [root, *root.parent.glob(root.name + ".*"), *root.rglob("*")]:
            if path.is_file():
                stat = path.stat()
                out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return sorted(set(out))


def _timed_reference(command: Command, ws: Path, base: Path) -> tuple[float, float]:
    """Run the command to the end; its duration and when it first changed a file it owns."""
    initial = _signature(ws, command)
    cmd = [sys.executable, "-m", "featkit", *_fill(command.args, ws, base)]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    first_write = None
    while proc.poll() is None:
        if first_write is None and _signature(ws, command) != initial:
            first_write = time.monotonic() - started
        time.sleep(0.005)
    duration = time.monotonic() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{command.name}: the reference run failed:\n{stderr[-2000:]}")
    return duration, duration if first_write is None else first_write


def soak(
    command: Command,
    base: Path,
    scratch: Path,
    kills: int,
    rng: np.random.Generator,
    log: Callable[[str], None] = print,
    *,
    write_phase: bool = False,
) -> Row:
    row = Row(command.name)
    ref_ws = scratch / "ref"
    shutil.rmtree(ref_ws, ignore_errors=True)
    shutil.copytree(base / command.start, ref_ws)
    base_ids = _run_ids(ref_ws)
    duration, first_write = _timed_reference(command, ref_ws, base)
    truth = outcome(ref_ws, command)
    # Earlier runs that an uninterrupted run keeps (a probe replaces the rows of its own
    # configuration, whatever their seed; every other run must survive).
    kept_ids = base_ids & _run_ids(ref_ws)
    log(
        f"{command.name}: reference run {duration:.2f} s, first write at {first_write:.2f} s, "
        f"{len(truth)} outputs"
    )
    # Uniform over the whole run, or (--write-phase) over the part after its first write,
    # where most of the whole run is interpreter start-up and computing.
    low = first_write if write_phase else 0.0
    for k in range(kills):
        ws = scratch / f"kill{k}"
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(base / command.start, ws)
        before = _foreign(ws, command)
        owned_before = _owned(ws, command)
        delay = float(rng.uniform(low, duration))
        cmd = [sys.executable, "-m", "featkit", *_fill(command.args, ws, base)]
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the CLI and any child
            proc.wait()
        # By the exit status: a run may end on its own just before the signal.
        row.killed += proc.returncode < 0
        row.tried += 1
        row.traces += proc.returncode < 0 and _owned(ws, command) != owned_before
        problems = check_readable(ws, kept_ids)
        row.readable += not problems
        for problem in problems:
            row.failures.append(f"kill {k} at {delay:.2f} s, after the kill: {problem}")
        again = featkit(*_fill(command.args, ws, base), *command.resume)
        found: list[str] = []
        if again.returncode != 0:
            found.append(f"rerun exit {again.returncode}: {again.stderr.strip()[-300:]}")
        else:
            got = outcome(ws, command)
            for key in sorted(set(truth) | set(got)):
                if truth.get(key) != got.get(key):
                    found.append(f"{key} differs from the uninterrupted run")
            found += [f"temporary file left: {t}" for t in _temporaries(ws)]
            after = _foreign(ws, command)
            found += [
                f"earlier file changed or lost: {p}" for p in before if after.get(p) != before[p]
            ]
            lost = kept_ids - _run_ids(ws)
            if lost:
                found.append(f"earlier result runs lost: {sorted(lost)}")
        row.survived += not found
        row.failures += [f"kill {k} at {delay:.2f} s, after the rerun: {f}" for f in found]
        for failure in row.failures[len(row.failures) - len(found) - len(problems) :]:
            log(f"    {failure}")
        log(
            f"  kill {k}: at {delay:.2f} s ({'killed' if proc.returncode < 0 else 'finished'}),"
            f" readable={not problems}, identical={not found}"
        )
        if not (found or problems):  # a failing workspace stays for --keep
            shutil.rmtree(ws, ignore_errors=True)
        else:
            ws.rename(scratch / f"failed-{command.name.replace(' ', '-')}-{k}")
    return row


def table(rows: list[Row]) -> str:
    lines = [
        "| command | kills tried | killed mid-run | of which mid-write "
        "| survived (identical after rerun) | previous output readable |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.command} | {r.tried} | {r.killed} | {r.traces} | {r.survived}/{r.tried} "
        f"| {r.readable}/{r.tried} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="kills per command")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--per-class", type=int, default=12, help="digits per class")
    parser.add_argument(
        "--write-phase",
        action="store_true",
        help="draw the kill moments after the reference run's first write, not from 0",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch folder (failing workspaces as failed-*)",
    )
    parser.add_argument(
        "--commands",
        default="",
        help="comma-separated subset (names as in the table, e.g. probe,report)",
    )
    args = parser.parse_args(argv)
    chosen = [c for c in COMMANDS if not args.commands or c.name in args.commands.split(",")]
    unknown = set(filter(None, args.commands.split(","))) - {c.name for c in COMMANDS}
    if unknown:
        parser.error(f"unknown commands {sorted(unknown)}; known: {[c.name for c in COMMANDS]}")
    scratch = Path(tempfile.mkdtemp(prefix="kill_soak_"))
    rng = np.random.default_rng(args.seed)
    try:
        build_base(scratch / "base", args.per_class)
        rows = [
            soak(c, scratch / "base", scratch, args.kills, rng, write_phase=args.write_phase)
            for c in chosen
        ]
    finally:
        if args.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(table(rows))
    for r in rows:
        for failure in r.failures:
            print(f"{r.command}: {failure}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
