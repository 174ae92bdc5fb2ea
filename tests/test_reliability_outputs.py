"""Issue 12, findings 5-7 and 9: two runs into one output, the slice cache's key, workers of a killed prepare.

The data-loss findings (1-4) are in ``tests/test_no_data_loss.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from synthseg.data.cache import build_cache, open_cache, stale_reason
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import write_image16, write_label8
from synthseg.errors import InputError
from synthseg.synth.generate_masks import PROGRESS, resume_folder
from synthseg.utils.outputs import OutputLockedError, claim_output, lock_path
from tests.conftest import tiny_snapshot
from tests.helpers.cohort import make_cohort

SYNTHSEG = str(Path(sys.executable).parent / "synthseg")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# prepare that, after its first label, waits for a file named by argv[3]: the second run starts meanwhile.
_HELD_PREPARE = """
import os, sys, time
from synthseg.data.prepare import prepare as prep
from synthseg.data.prepare import slices
real = slices.write_label8
def held(path, array):
    real(path, array)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.02)
slices.write_label8 = held
prep.run(prep.PrepareSettings(source=sys.argv[1], output=sys.argv[2], size=8, workers=1,
                                          progress=False, overwrite=True))
"""

# generate-masks that, from its third batch on, waits for a file named by argv[3].
_HELD_MASKS = """
import os, sys, time
from synthseg.synth import generate_masks as masks
real = masks._write_batch
def held(folder, ids, batch):
    while ids[0] >= "synth_000100" and not os.path.exists(sys.argv[3]):
        time.sleep(0.02)
    real(folder, ids, batch)
masks._write_batch = held
masks.run(masks.GenerateMasksSettings(checkpoint=sys.argv[1], count=300, output=sys.argv[2], batch_size=50,
                                      progress=False, device="cpu"))
"""


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the first run ended before the second could start"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _second_run_stops_at_once(command: list[str], output: Path, cwd: Path) -> None:
    start = time.monotonic()
    second = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=120)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{output}: another synthseg run is writing this output now" in lines[0]
    assert time.monotonic() - start < 60


# ---------------------------------------------------------------------------------------- finding 5
@pytest.mark.slow
def test_a_second_prepare_into_the_same_output_stops_and_the_first_completes(tmp_path: Path) -> None:
    make_cohort(tmp_path / "src", 3, shape=(6, 5, 20))
    out = tmp_path / "out"
    go = tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", _HELD_PREPARE, str(tmp_path / "src"), str(out), str(go)], env=ENV
    )
    try:
        _wait_for(lambda: any(p.glob("labels/*.png") for p in tmp_path.glob(".out.*.partial")), first)
        command = [SYNTHSEG, "prepare", f"source={tmp_path / 'src'}", f"output={out}", "size=8",
                   "workers=1", "progress=false", "overwrite=true"]  # fmt: skip
        _second_run_stops_at_once(command, out, tmp_path)
        go.touch()
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
        first.wait()
    rows = read_manifest(out)
    assert len(rows) == 3 * 20
    assert all((out / rows.image[i]).is_file() and (out / rows.label[i]).is_file() for i in range(len(rows)))


# ---------------------------------------------------------------------------------------- finding 6
@pytest.mark.slow
def test_a_second_generate_masks_into_the_same_output_stops_and_the_first_completes(tmp_path: Path) -> None:
    snap = tiny_snapshot(tmp_path / "snap.pt", size=64)
    out = tmp_path / "masks"
    count, go = 300, tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", _HELD_MASKS, str(snap), str(out), str(go)], env=ENV)
    command = [SYNTHSEG, "generate-masks", f"checkpoint={snap}", f"count={count}", f"output={out}",
               "batch_size=50", "progress=false", "device=cpu"]  # fmt: skip
    work = resume_folder(out)

    def some_batches_done() -> bool:
        try:
            return json.loads((work / PROGRESS).read_text())["done"] >= 100
        except (OSError, ValueError):
            return False

    try:
        _wait_for(some_batches_done, first)
        _second_run_stops_at_once(command, out, tmp_path)
        assert work.is_dir()  # the shared work folder was not cleaned under the first run
        go.touch()
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
        first.wait()
    rows = read_manifest(out)
    assert len(rows) == count
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(Path(p).name for p in rows.label)


def test_leftovers_are_cleaned_only_by_the_lock_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    live = tmp_path / ".out.1234abcd.partial"  # another run's temporary folder
    live.mkdir()
    (live / "half.png").write_bytes(b"x")
    # That other run holds the lock (a lock file of its own: this thread's output_lock would nest)
    with FileLock(str(lock_path(out)), timeout=0):
        with pytest.raises(OutputLockedError, match=f"{out}: another synthseg run"):
            with claim_output(out, command="report"):
                pass
        assert (live / "half.png").is_file()
    with claim_output(out, command="report") as tmp:  # once the lock is free, leftovers go
        (tmp / "table.md").write_text("x")
    assert not live.exists() and (out / "table.md").is_file()


# ---------------------------------------------------------------------------------------- finding 7
def _later(path: Path) -> None:
    """A user edits the file later (the cache was built seconds ago; clocks may not have ticked)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_the_cache_is_reused_while_its_sources_are_unchanged(tiny_dataset: Path) -> None:
    cache = build_cache(tiny_dataset, progress=False)
    stamp = (cache / "images.npy").stat().st_mtime_ns
    assert stale_reason(tiny_dataset) is None
    assert (cache / "sources.npy").is_file()
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["format"] == "synthseg-cache/4" and meta["axes"] == "NSHW" and meta["sequences"] == ["t1c"]
    build_cache(tiny_dataset, progress=False)
    assert (cache / "images.npy").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("deleted label", "file not found"),
        ("label value 9", "label value 9 outside 0..6"),
        ("16-bit label", "expected a 8-bit PNG, found 16-bit"),
    ],
)
def test_a_changed_source_file_after_caching_is_refused_naming_it(
    tiny_dataset: Path, change: str, message: str
) -> None:
    open_cache(tiny_dataset)  # one training run built the cache
    manifest = read_manifest(tiny_dataset)
    victim = tiny_dataset / manifest.label[3]
    if change == "deleted label":
        victim.unlink()
    elif change == "label value 9":
        write_label8(victim, np.full((32, 32), 9, np.uint8))
        _later(victim)
    else:
        write_image16(victim, np.zeros((32, 32), np.uint16))
        _later(victim)
    assert stale_reason(tiny_dataset) == f"{victim}: changed since the cache was built"
    with pytest.raises(InputError, match=message) as err:
        open_cache(tiny_dataset)
    assert str(victim) in str(err.value)


def test_a_changed_image_rebuilds_the_cache_with_the_new_pixels(tiny_dataset: Path) -> None:
    open_cache(tiny_dataset)
    victim = tiny_dataset / read_manifest(tiny_dataset).image[5]
    write_image16(victim, np.full((32, 32), 1234, np.uint16))
    _later(victim)
    images, _ = open_cache(tiny_dataset)
    assert (np.asarray(images[5]) == 1234).all()
    assert stale_reason(tiny_dataset) is None


def test_two_labels_of_one_size_swapped_with_their_times_restored_rebuild_the_cache(
    tiny_dataset: Path,
) -> None:
    """Issue 24: the cache was keyed on size and mtime alone, so this trained on the stale cache. The same size
    leaves the bytes to decide: they are hashed while the cache is built and compared now."""
    images, labels = open_cache(tiny_dataset)
    manifest = read_manifest(tiny_dataset)
    sizes: dict[int, list[int]] = {}
    for i, rel in enumerate(manifest.label):
        sizes.setdefault((tiny_dataset / rel).stat().st_size, []).append(i)
    pair = next(
        rows
        for rows in sizes.values()
        if len(rows) >= 2 and not np.array_equal(labels[rows[0]], labels[rows[1]])
    )
    a, b = (tiny_dataset / manifest.label[pair[0]], tiny_dataset / manifest.label[pair[1]])
    times = [(p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (a, b)]
    swap = a.with_name("swap.tmp")
    a.rename(swap)
    b.rename(a)
    swap.rename(b)
    for path, ns in zip((a, b), times, strict=True):
        os.utime(path, ns=ns)
    assert stale_reason(tiny_dataset) == f"{a}: changed since the cache was built"
    _, labels = open_cache(tiny_dataset)
    assert np.array_equal(labels[pair[0]], read_png_label(a))


def read_png_label(path: Path) -> np.ndarray:
    from synthseg.data.pngio import read_png

    return read_png(path, bitdepth=8)


def test_a_copied_dataset_keeps_its_cache_when_the_bytes_are_the_same(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    import shutil

    cache = build_cache(tiny_dataset, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)  # new inodes and status-change times, the same bytes and mtimes
    stamp = (copy / "cache" / "images.npy").stat().st_mtime_ns
    assert stale_reason(copy) is None  # hashed and found the same: the stamps are refreshed
    assert build_cache(copy, progress=False) == copy / "cache"
    assert (copy / "cache" / "images.npy").stat().st_mtime_ns == stamp
    assert (cache / "images.npy").is_file()


def test_a_cache_of_the_old_format_is_rebuilt(tiny_dataset: Path) -> None:
    cache = build_cache(tiny_dataset, progress=False)
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({"manifest_sha256": meta["manifest_sha256"]}))  # format 1
    assert "older version" in str(stale_reason(tiny_dataset))
    build_cache(tiny_dataset, progress=False)
    assert stale_reason(tiny_dataset) is None


# ---------------------------------------------------------------------------------------- finding 9
# prepare with two spawn workers; the parent then stalls (its wait for results sleeps), workers alive.
_STALLED_PREPARE = """
import sys, time
from synthseg.data.prepare import prepare as prep
from synthseg.data.prepare import runner as prepare_runner
real_wait = prepare_runner.wait
def stalled(*args, **kwargs):
    time.sleep(120)
    return real_wait(*args, **kwargs)
prepare_runner.wait = stalled
prep.run(prep.PrepareSettings(source=sys.argv[1], output=sys.argv[2], size=8, workers=2,
                                          progress=False))
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_sigkill_of_prepare_takes_its_workers_with_it(tmp_path: Path) -> None:
    make_cohort(tmp_path / "src", 4, shape=(6, 5, 6))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLED_PREPARE, str(tmp_path / "src"), str(out)], env=ENV
    )
    workers: list[int] = []
    try:
        # Both workers have taken a case (so both ran their start-up) once two cases' files are written.
        _wait_for(lambda: any(tmp_path.glob(".out.*.partial/images/*.png")), proc)
        workers = [
            pid
            for pid in _children(proc.pid)
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the killed prepare"
    finally:
        proc.kill()
        proc.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
