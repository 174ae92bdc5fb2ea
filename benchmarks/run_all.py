"""The model benchmarks in one command: this machine's peaks, the data loader, and the U-Net, PGAN and SPADE
at the paper's resolution, then a markdown table of their figures.

    python benchmarks/run_all.py [--device cpu|cuda] [--threads 2] [--precision 32-true|bf16-mixed|16-mixed]
                                 [--channels-last] [--compile] [--fused-adam] [--quick] [--only unet pgan ...]
                                 [--timeout SECONDS] [--out DIR]

Each benchmark runs as its own process (so each peak-memory figure is its own high-water mark), with the
device, threads, precision, channels_last, compile and fused-Adam flags passed through to the model
benchmarks (peak.py gets the dtype the precision computes in; the loader takes none of them). Into --out (default
benchmarks/results/<host, or GPU name>-<date>) go one JSON record per benchmark (<name>.json), its output
(<name>.log), all.json (the hardware, the settings and every record) and table.md (the table printed).
--quick shrinks everything (64x64, 32x32 for the PGAN, small batches, one timed step, a 32-slice loader run)
for a smoke run whose figures mean nothing. The mask-generation, SWD and preparation benchmarks are not
included. A benchmark that fails is reported in the table and the others still run; the exit status is
then 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from peak import AUTOCAST, describe_hardware, format_si

HERE = Path(__file__).resolve().parent
NAMES = ("peak", "loader", "unet", "pgan", "spade")
PEAK_DTYPE = {"32-true": "float32", "bf16-mixed": "bfloat16", "16-mixed": "float16"}
MODEL_TITLES = {"unet": "U-Net", "pgan": "PGAN", "spade": "SPADE"}


def commands(args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    """The command line of each benchmark (script and arguments)."""
    threads = ["--threads", str(args.threads)] if args.threads else []
    model = ["--device", args.device, "--precision", args.precision, *threads]
    if args.channels_last:
        model.append("--channels-last")
    if args.compile:
        model.append("--compile")
    if args.fused_adam:
        model.append("--fused-adam")
    quick = args.quick
    steps = ["--warmup", "1", "--repeats", "1"] if quick else []
    return {
        "peak": ["peak.py", "--device", args.device, "--dtype", PEAK_DTYPE[args.precision], *threads],
        "loader": ["bench_loader.py", *(["--slices", "32", "--repeats", "1"] if quick else [])],
        "unet": [
            "bench_unet.py",
            *model,
            *(["--size", "64", "--batch-size", "2"] if quick else []),
            *steps,
            "--json",
            str(out / "unet.json"),
        ],
        "pgan": [
            "bench_pgan.py",
            *model,
            *(["--resolution", "32", "--batch-size", "4", "--gen-batch", "8"] if quick else []),
            *steps,
            "--json",
            str(out / "pgan.json"),
        ],
        "spade": [
            "bench_spade.py",
            *model,
            *(["--size", "64", "--gen-batch", "2", "--gen-images", "4"] if quick else []),
            *steps,
            "--json",
            str(out / "spade.json"),
        ],
    }


def parse_record(stdout: str) -> dict[str, Any]:
    """The JSON a benchmark printed: all of stdout (peak.py, models) or its last line (bench_loader.py)."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        return json.loads(stdout.strip().splitlines()[-1])


def _text(stream: bytes | str | None) -> str:
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""


def run_benchmark(name: str, command: list[str], out: Path, timeout: float | None) -> dict[str, Any]:
    """Run one benchmark; its record (also written to <name>.json), or {"error": ...} when it failed."""
    print(f"== {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(HERE / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=HERE.parent,
        )
        stdout, stderr = done.stdout, done.stderr
        error = f"exit status {done.returncode}" if done.returncode else None
    except subprocess.TimeoutExpired as expired:
        # What was captured before the timeout comes as bytes, whatever text= says.
        stdout, stderr = (_text(stream) for stream in (expired.stdout, expired.stderr))
        error = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    (out / f"{name}.log").write_text(f"$ {' '.join(command)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    # The human-readable summary is on stderr (stdout for the loader); the profiler's USDT lines are noise.
    summary = [line for line in (stderr or stdout).splitlines() if not line.startswith("USDT:")]
    print("\n".join(summary[-14:]), file=sys.stderr)
    if error:
        print(f"== {name} FAILED ({error}), {seconds:.0f} s: see {out / f'{name}.log'}", file=sys.stderr)
        return {"error": error, "log": f"{name}.log", "seconds": seconds}
    try:
        record = parse_record(stdout)
    except (json.JSONDecodeError, IndexError) as error:
        return {"error": f"no JSON record in its output ({error})", "log": f"{name}.log", "seconds": seconds}
    record["wall_seconds"] = seconds
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"== {name} done in {seconds:.0f} s", file=sys.stderr, flush=True)
    return record


def _percent(record: dict[str, Any]) -> str:
    wall, cpu = record["fraction_of_conv_peak"], record.get("fraction_of_conv_peak_cpu_time")
    return f"{100 * wall:.1f} %" + ("" if cpu is None else f" / {100 * cpu:.1f} %")


def _memory(mib: float, device: str) -> str:
    return f"{mib / 1024:.2f} GiB" + (" RSS" if device == "cpu" else "")


def _loader_line(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"loader: FAILED ({record['error']}, see {record['log']})"
    return (
        f"loader ({record['slices']} slices of {record['size']}x{record['size']}): cache DataLoader"
        f" {record['cache_loader_slices_per_s']} slices/s, PNG decode {record['png_decode_slices_per_s']}"
        f" slices/s ({record['ratio_cache_over_png']}x)"
    )


def _peaks_line(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"peaks: FAILED ({record['error']}, see {record['log']})"
    peaks = record["peaks"]
    figures = ", ".join(f"{name} {format_si(peak['flop_per_s'], 'FLOP/s')}" for name, peak in peaks.items())
    return f"peaks ({peaks['conv3x3']['dtype']}, {record['hardware']['torch_threads']} threads): {figures}"


def table(records: dict[str, dict[str, Any]]) -> str:
    """The model benchmarks as a markdown table (as in RESULTS.md), one line each for loader and peaks."""
    lines = [
        "| model | hardware | precision, layout | batch (train / inference) | train images/s "
        "| inference images/s | train GFLOP/image | train % of conv peak (wall / CPU time) "
        "| inference % of conv peak (wall / CPU time) | peak memory, train | ratio to paper (train) |",
        "|" + "---|" * 11,
    ]
    for name, title in MODEL_TITLES.items():
        record = records.get(name)
        if record is None:
            continue
        if "error" in record:
            lines.append(f"| {title} | **FAILED** ({record['error']}, see {record['log']}) |" + " |" * 9)
            continue
        hw, settings = record["hardware"], record["settings"]
        device = hw["device"].split(":")[0]
        hardware = f"GPU: {hw['gpu']}" if "gpu" in hw else f"CPU: {hw['cpu']}, {hw['torch_threads']} threads"
        layout = "channels_last" if settings["channels_last"] else "contiguous"
        compiled = ", compile" if settings["compile"] else ""
        compiled += ", fused Adam" if settings.get("fused_adam") else ""
        cells = [
            f"{title} {settings['size']}x{settings['size']}",
            hardware,
            f"{settings['precision']}, {layout}{compiled}",
            f"{settings['batch_size']} / {settings['eval_batch_size']}",
        ]
        train, inference = record.get("train"), record["inference"]
        cells += [
            f"{train['images_per_s']:.2f}" if train else "-",
            f"{inference['images_per_s']:.2f}",
            f"{record['flops_per_image']['train'] / 1e9:.1f}" if train else "-",
            _percent(train) if train else "-",
            _percent(inference),
            _memory(train["peak_memory_mib"], device) if train else "-",
            f"{record['ratio_to_paper']:.2f} (paper {record['paper_images_per_s']})"
            if "ratio_to_paper" in record
            else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if "loader" in records:
        lines += ["", _loader_line(records["loader"])]
    if "peak" in records:
        lines.append(_peaks_line(records["peak"]))
    return "\n".join(lines)


def default_out(device: torch.device) -> Path:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else socket.gethostname()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", where).strip("-").lower() or device.type
    return HERE / "results" / f"{slug}-{datetime.date.today().isoformat()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--precision", choices=sorted(AUTOCAST), default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fused-adam", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one step: a smoke run")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES), help="run only these")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: none)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.precision == "16-mixed" and device.type != "cuda":
        parser.error("--precision 16-mixed needs --device cuda (use bf16-mixed on CPU)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or default_out(device)
    out.mkdir(parents=True, exist_ok=True)

    all_commands = commands(args, out)
    records = {name: run_benchmark(name, all_commands[name], out, args.timeout) for name in args.only}
    summary = {
        "hardware": describe_hardware(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commands": {name: all_commands[name] for name in args.only},
        "records": records,
    }
    (out / "all.json").write_text(json.dumps(summary, indent=2) + "\n")
    markdown = table(records)
    (out / "table.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nrecords in {out}", file=sys.stderr)
    failed = [name for name, record in records.items() if "error" in record]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
