"""Odd dataset files (issue 12 §2, §3, §4): odd directory entries, non-UTF-8 names, damaged
partition files, and the temporaries of killed prepares."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from celeba_files import GENERATED_IDS
from ddpmkit.data import cache as C
from ddpmkit.data import prepare as P
from ddpmkit.data.celeba import read_attributes, read_partition
from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import DataConfig

SRC = Path(__file__).resolve().parents[1] / "src"
FIRST = [f"{i:06d}.jpg" for i in GENERATED_IDS[:6]]  # of the generated CelebA (the `images` fixture)
ODD_NAME = b"caf\xe9 \xff.jpg"  # Latin-1 bytes: not UTF-8


@pytest.fixture
def images(generated_celeba) -> Path:
    """The folder of the generated CelebA JPEGs, FIRST among them."""
    return generated_celeba.images


def _official(images: Path, root: Path, partition: str | bytes | None = None) -> Path:
    img = root / "img_align_celeba"
    img.mkdir(parents=True)
    for n in FIRST:
        (img / n).symlink_to(images / n)
    text = partition if partition is not None else "".join(f"{n} {i % 3}\n" for i, n in enumerate(FIRST))
    path = root / "list_eval_partition.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def _prepare(root: Path, cache: Path, dataset: str = "celeba", split: str = "all", console=None):
    cfg = DataConfig(dataset=dataset, root=root, cache_dir=cache, size=32, crop="ddim", split=split, workers=1)
    return P.prepare_dataset(cfg, show_progress=False, console=console or Console(file=io.StringIO()))


def _report(res) -> dict[str, str]:
    text = (res.path / C.REPORT).read_bytes().decode("utf-8", "surrogateescape")
    return dict(ln.split("\t", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))


# ---------------------------------------------------------------- odd entries


def test_dangling_link_folder_and_fifo_named_like_images_are_reported(tmp_path, images):
    root = _official(images, tmp_path / "r")
    img = root / "img_align_celeba"
    (img / "900001.jpg").symlink_to(tmp_path / "gone.jpg")
    (img / "900002.jpg").mkdir()
    os.mkfifo(img / "900003.jpg")  # opening it would block forever
    res = _prepare(root, tmp_path / "c")
    assert res.counts["ok"] == len(FIRST) and res.counts["skipped"] == 3  # before: silently left out
    report = _report(res)
    assert report["900001.jpg"].startswith("dangling symbolic link (its target ")
    assert report["900002.jpg"] == "a folder named like an image, not an image file"
    assert report["900003.jpg"] == "not a regular file (a FIFO, socket or device)"


def test_symlink_loop_is_reported_not_a_traceback(tmp_path, images):
    root = _official(images, tmp_path / "r")
    img = root / "img_align_celeba"
    (img / "900001.jpg").symlink_to(img / "900002.jpg")
    (img / "900002.jpg").symlink_to(img / "900001.jpg")
    res = _prepare(root, tmp_path / "c")  # before: OSError ELOOP from list_images
    assert res.counts["ok"] == len(FIRST)
    assert _report(res) == {"900001.jpg": "symbolic link loop", "900002.jpg": "symbolic link loop"}


def test_plain_folder_descends_into_any_folder_and_reports_the_rest(tmp_path, images):
    root = tmp_path / "faces"
    (root / "x.jpg").mkdir(parents=True)  # a folder, whatever its name: its images count
    for n in FIRST[:3]:
        (root / "x.jpg" / n).symlink_to(images / n)
    (root / "loop.png").symlink_to(root / "loop.png")
    os.mkfifo(root / "pipe.jpg")
    res = _prepare(root, tmp_path / "c", dataset="folder")
    assert res.counts["ok"] == 3 and res.index["files"] == [f"x.jpg/{n}" for n in FIRST[:3]]
    fifo = "not a regular file (a FIFO, socket or device)"
    assert _report(res) == {"loop.png": "symbolic link loop", "pipe.jpg": fifo}


@pytest.mark.parametrize("dataset", ["celeba", "folder"])
def test_non_utf8_file_names(tmp_path, dataset, images):
    root = _official(images, tmp_path / "r") if dataset == "celeba" else tmp_path / "r"
    folder = root / "img_align_celeba" if dataset == "celeba" else root
    if dataset == "folder":
        folder.mkdir(parents=True)
        (folder / FIRST[0]).symlink_to(images / FIRST[0])
    os.symlink(bytes(images / FIRST[0]), os.path.join(bytes(folder), ODD_NAME))
    os.symlink(bytes(tmp_path / "gone"), os.path.join(bytes(folder), b"\xfe dangling.jpg"))
    res = _prepare(root, tmp_path / "c", dataset=dataset)  # before: UnicodeEncodeError
    name = os.fsdecode(ODD_NAME)
    assert name in res.index["files"] and res.counts["skipped"] == 1
    i = res.index["files"].index(name)
    first = res.index["files"].index(FIRST[0])
    pixels = np.load(res.path / C.IMAGES, mmap_mode="r")
    assert np.array_equal(pixels[i], pixels[first])  # the same picture under its odd name
    report_bytes = (res.path / C.REPORT).read_bytes()
    assert b"\n\xfe dangling.jpg\tdangling symbolic link" in report_bytes  # the name's own bytes
    assert _prepare(root, tmp_path / "c", dataset=dataset).reused  # the fingerprint is stable


# ---------------------------------------------------------------- partition and attribute files


def test_partition_with_a_byte_order_mark_keeps_its_first_entry(tmp_path, images):
    text = "\ufeff" + "".join(f"{n} 1\n" for n in FIRST)
    root = _official(images, tmp_path / "r", text)
    assert read_partition(root / "list_eval_partition.txt") == {n: 1 for n in FIRST}  # before: FIRST[0] lost
    res = _prepare(root, tmp_path / "c", split="val")
    assert res.index["files"] == FIRST
    csv = tmp_path / "list_eval_partition.csv"
    csv.write_text("\ufeffimage_id,partition\r\n" + "".join(f"{n},2\r\n" for n in FIRST))
    assert read_partition(csv) == {n: 2 for n in FIRST}


def test_partition_with_non_utf8_bytes_names_the_line(tmp_path, images):
    body = "".join(f"{n} 0\n" for n in FIRST).encode() + b"caf\xe9.jpg 0\n"
    root = _official(images, tmp_path / "r", body)
    path = root / "list_eval_partition.txt"
    with pytest.raises(DdpmkitError) as e:
        _prepare(root, tmp_path / "c", split="train")
    assert str(e.value) == (f"partition file {path} line {len(FIRST) + 1} is not UTF-8 text (byte 0xe9); "
                            "save it as UTF-8 or fetch a fresh copy")
    path.write_bytes("".join(f"{n} 0\n" for n in FIRST).encode("utf-16"))
    with pytest.raises(DdpmkitError, match=r"line 1 is not UTF-8 text \(it is UTF-16\)"):
        read_partition(path)


def test_partition_conflicting_duplicates_are_an_error_naming_the_lines(tmp_path, images):
    lines = [f"{n} 0" for n in FIRST] + [f"{FIRST[1]} 0", f"{FIRST[2]} 2"]  # one repeat, one conflict
    root = _official(images, tmp_path / "r", "\n".join(lines) + "\n")
    with pytest.raises(DdpmkitError) as e:
        _prepare(root, tmp_path / "c", split="train")  # before: the last line won silently
    assert str(e.value) == (f"partition file {root / 'list_eval_partition.txt'} line {len(FIRST) + 2} puts "
                            f"{FIRST[2]} in split 2, but line 3 put it in split 0; keep one line per image")
    (root / "list_eval_partition.txt").write_text("\r\n".join(lines[:-1]) + "\r\n")  # CRLF, a plain repeat
    assert read_partition(root / "list_eval_partition.txt") == {n: 0 for n in FIRST}


def test_attribute_file_with_non_utf8_bytes_names_the_line(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    head = "2\n" + " ".join(f"a{i}" for i in range(40)) + "\n"
    path.write_bytes(head.encode() + b"000001.jpg " + b"1 " * 39 + b"\xff\n")
    with pytest.raises(DdpmkitError, match=rf"attribute file {path} line 3 is not UTF-8 text \(byte 0xff\)"):
        read_attributes(path)
    path.write_text("\ufeff" + head + "000001.jpg " + "1 " * 40 + "\n")
    table = read_attributes(path)
    assert table.declared == 2 and table.get("000001.jpg").tolist() == [1] * 40


# ---------------------------------------------------------------- temporaries of killed prepares


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _temporary(cache: Path, name: str, owner: dict | None, age_s: float = 0.0) -> Path:
    tmp = cache / f".celeba-official-32-ddim-all-{name}.abc123.tmp"
    tmp.mkdir(parents=True)
    (tmp / C.IMAGES).write_bytes(b"\0" * 2**20)
    if owner is not None:
        (tmp / P.OWNER).write_text(json.dumps(owner))
    if age_s:
        t = time.time() - age_s
        os.utime(tmp, (t, t))
    return tmp


def test_leftovers_of_killed_prepares_are_removed_in_one_line(tmp_path, images):
    cache = tmp_path / "c"
    host = socket.gethostname()
    dead = _temporary(cache, "dead", {"pid": _dead_pid(), "host": host})
    old = _temporary(cache, "old", None, age_s=3600)  # made before owners were recorded
    live = _temporary(cache, "live", {"pid": os.getpid(), "host": host, "time": time.time()})  # running
    # the builder's PID now belongs to a process that started after the record: the builder is gone
    reused = _temporary(cache, "reused", {"pid": os.getpid(), "host": host, "time": time.time() - 10**6})
    young = _temporary(cache, "young", None)  # one that is just starting
    foreign = _temporary(cache, "foreign", {"pid": 7, "host": "elsewhere-9"})
    out = io.StringIO()
    res = _prepare(_official(images, tmp_path / "r"), cache, console=Console(file=out, width=400))
    assert res.counts["ok"] == len(FIRST)
    assert not dead.exists() and not old.exists() and not reused.exists()  # before: kept forever
    assert live.exists() and young.exists() and foreign.exists()
    notes = [ln for ln in out.getvalue().splitlines() if ln.startswith("note:")]
    assert notes[0] == f"note: removed 3 leftover temporaries of killed prepares from {cache} (3.0 MiB)"
    assert "left 1 temporaries" in notes[1] and "PID 7 on host elsewhere-9" in notes[1]
    assert not (res.path / P.OWNER).exists()  # the finished cache does not name a builder


def test_a_really_killed_prepare_is_cleaned_up_by_the_next(tmp_path, images):
    root = _official(images, tmp_path / "r")
    cache = tmp_path / "c"
    slow = textwrap.dedent(f"""
        import time
        from ddpmkit.data import prepare as P
        from ddpmkit.settings import DataConfig
        real = P._process_chunk
        P._process_chunk = lambda task: (time.sleep(30), real(task))[1]
        P.CHUNK = 1
        cfg = DataConfig(dataset="celeba", root={str(root)!r}, cache_dir={str(cache)!r}, size=32, workers=1)
        P.prepare_dataset(cfg, show_progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", slow], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not list(cache.glob(f".*.tmp/{P.OWNER}")) and time.time() < deadline:
            time.sleep(0.05)
        assert list(cache.glob(f".*.tmp/{P.OWNER}")), "the prepare never started building"
        # still building: a second prepare leaves its temporary alone
        assert P.remove_leftovers(cache, Console(file=io.StringIO())) == []
    finally:
        p.kill()  # kill -9 in the middle of the build
        p.wait(timeout=30)
    out = io.StringIO()
    res = _prepare(root, cache, console=Console(file=out, width=400))
    assert "note: removed 1 leftover temporary of killed prepares" in out.getvalue()
    assert sorted(q.name for q in cache.iterdir()) == [res.path.name]
