"""Fill .gpu_bundle/ with what scripts/gpu_check.sh needs on the GPU machine (run by scripts/gpu_bundle.sh).

    .gpu_bundle/main/            travels with the check (device call 2)
        manifest.json            what is here, with digests, and the device calls that carry it
        wheels/*.whl             the packages the GPU image lacks (Python 3.12, manylinux x86-64)
        pack/images/*.png        the training pack: a CelebA train-split cache made by `ddpmkit prepare`
                                 (DDIM crop, 64 px, uint8), as lossless PNGs (2/3 of the raw bytes)
        ref_stats.npz            FID reference statistics of the train split, computed here
    .gpu_bundle/fid1/            the first piece of the FID Inception weights (device call 1)
    .gpu_bundle/fid2/            the rest, carried beside main/ (device call 2)
    .gpu_bundle/work/            caches of this script (prepared images, statistics); never carried

The 92 MB weights cannot travel in one call (64 MiB each, the repository included), so call 1
leaves its piece in /tmp on the machine, which survives while the machine stays warm, and the
check joins the pieces and verifies the sha256. The pack gets whatever room is left in call 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from gpu_common import (
    BUNDLE, FILE_OVERHEAD, LIMIT_BYTES, MAIN, MANIFEST, MARGIN_BYTES, PACK_IMAGES, PART_PREFIX, REF_STATS, REPO, WEIGHTS_NAME,
    WHEEL_PLATFORMS, WHEELS, WHEELS_DIR, Profile, folder_digest, mib, pack_stats, profile, python_env, repo_bytes,
    run, sent_bytes, sha256_file, tiny_from_env, tree_bytes,
)

PNG_BYTES_GUESS = 8_500 + FILE_OVERHEAD  # a 64x64 CelebA face as PNG (measured: 8.1 KB on average); sizes the minimum pack
MANIFEST_ROOM = 64 * 1024


def say(msg: str) -> None:
    print(f"[gpu_bundle] {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"[gpu_bundle] FAIL: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", "--dry-run", dest="tiny", action="store_true", default=None,
                    help="tiny bundle for the CPU dry run, no wheel downloads (also DDPMKIT_GPU_CHECK_TINY=1)")
    ap.add_argument("--celeba", type=Path, default=Path(os.environ.get("DDPMKIT_DATA_ROOT", "data/celeba")),
                    help="CelebA root: img_align_celeba/ and list_eval_partition.txt (default $DDPMKIT_DATA_ROOT, else data/celeba)")
    ap.add_argument("--fid-weights", type=Path, default=os.environ.get("DDPMKIT_FID_WEIGHTS"),
                    help=f"the FID Inception weights file {WEIGHTS_NAME} (default $DDPMKIT_FID_WEIGHTS)")
    ap.add_argument("--n-ref", type=int, help="images behind the reference statistics (default 2048; tiny 6)")
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("DDPMKIT_GPU_BUNDLE") or BUNDLE),
                    help="the bundle folder (default .gpu_bundle; also $DDPMKIT_GPU_BUNDLE)")
    args = ap.parse_args(argv)
    if args.tiny is None:
        args.tiny = tiny_from_env()
    return args


def clean(bundle: Path) -> None:
    """Remove the previous bundle's carried folders (two versions of a wheel stop the install); keep work/."""
    for p in [bundle / MAIN, *bundle.glob(f"{PART_PREFIX}[0-9]*")]:
        if p.exists():
            shutil.rmtree(p)
    (bundle / MAIN).mkdir(parents=True)


def download_wheels(dest: Path, log: Path) -> list[dict[str, Any]]:
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platforms, "-d", str(dest), *WHEELS]
    r = run(cmd, log, timeout=600)
    wheels = sorted(dest.glob("*.whl"))
    if r.code != 0 or len(wheels) != len(WHEELS):
        fail(f"pip download gave {len(wheels)} of {len(WHEELS)} wheels (exit {r.code}); see {log}\n{r.tail(8)}")
    return [{"file": w.name, "bytes": w.stat().st_size, "sha256": sha256_file(w)} for w in wheels]


def celeba_train_names(root: Path, n: int) -> tuple[Path, list[str]]:
    """(image folder, the first n train-split file names, sorted) of an official or Kaggle CelebA layout."""
    layouts = [(root / "img_align_celeba", root / "list_eval_partition.txt"),
               (root / "img_align_celeba" / "img_align_celeba", root / "list_eval_partition.csv")]
    for images, partition in layouts:
        if images.is_dir() and partition.is_file():
            break
    else:
        fail(f"no CelebA at {root}: want img_align_celeba/ and list_eval_partition.txt (set --celeba or $DDPMKIT_DATA_ROOT)")
    train = []
    for line in partition.read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) == 2 and parts[1] == "0" and (images / parts[0]).is_file():
            train.append(parts[0])
    train.sort()
    if len(train) < n:
        fail(f"{root} has {len(train)} train-split images; the bundle needs {n}")
    return images, train[:n]


def make_subset(root: Path, work: Path, n: int) -> Path:
    """A CelebA root holding links to the first n train images. Left untouched when already so, so
    that `prepare` (whose cache key includes file times) and the statistics cache are reused."""
    images, names = celeba_train_names(root, n)
    subset = work / "subset"
    img_dir = subset / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    for stale in set(os.listdir(img_dir)) - set(names):
        (img_dir / stale).unlink()
    for name in names:
        if not (img_dir / name).exists():
            (img_dir / name).symlink_to((images / name).resolve())
    text = "".join(f"{name} 0\n" for name in names)
    part = subset / "list_eval_partition.txt"
    if not part.is_file() or part.read_text() != text:
        part.write_text(text)
    return subset


def prepare_cache(subset: Path, work: Path, n: int) -> Path:
    """`ddpmkit prepare` of the subset at 64 px, DDIM crop, train split; returns the cache folder."""
    cache_dir = work / "cache"
    cmd = [sys.executable, "-m", "ddpmkit", "prepare", "--preset", "celeba64", "--data-root", str(subset), "--size", "64",
           "--crop", "ddim", "--split", "train", "--cache-dir", str(cache_dir)]
    r = run(cmd, work / "logs" / "prepare.log", timeout=600, env=python_env())
    if r.code != 0:
        fail(f"ddpmkit prepare failed (exit {r.code}):\n{r.tail(8)}")
    found = []
    for marker in cache_dir.glob("*/COMPLETE"):
        index = json.loads((marker.parent / "index.json").read_text())
        same = index.get("source", {}).get("root") == str(subset.resolve()) and index.get("counts", {}).get("ok") == n
        if same and index.get("settings") == {"size": 64, "crop": "ddim", "split": "train"}:
            found.append(marker)
    if not found:
        fail(f"ddpmkit prepare left no complete 64 px DDIM-crop train cache of {n} images under {cache_dir}")
    return max(found, key=lambda m: m.stat().st_mtime).parent


def reference_stats(cache: Path, work: Path, main: Path, n_ref: int, weights: Path) -> dict[str, Any]:
    """FID statistics of the cache's first n_ref images by `ddpmkit fid` (reused when cached)."""
    out = work / "ref_fid.json"
    say(f"FID reference statistics of {n_ref} images on {os.cpu_count()} CPU cores "
        "(about 0.5 s per image on 2 busy cores; cached in .gpu_bundle/work for the next run) ...")
    cmd = [sys.executable, "-m", "ddpmkit", "fid", str(cache), str(cache), "--n", str(n_ref), "--set", f"fid.ref_n={n_ref}",
           "--set", f"data.cache_dir={work}", "--device", "cpu", "--out-json", str(out), "--force"]
    r = run(cmd, work / "logs" / "fid.log", timeout=4 * 3600, env=python_env(extra={"DDPMKIT_FID_WEIGHTS": str(weights)}))
    if r.code != 0:
        fail(f"ddpmkit fid failed (exit {r.code}):\n{r.tail(8)}")
    result = json.loads(out.read_text())
    npz = Path(result["reference"].get("stats_cache") or "")
    if not npz.is_file() or result["n"] != n_ref or abs(result["fid"]) > 1e-2:  # the same statistics twice: 0 up to round-off
        fail(f"unexpected reference statistics from ddpmkit fid: {out}")
    meta = {"images": n_ref, "cache": cache.name, "weights_sha256": result["weights_sha256"], "stats_file": npz.name,
            "crop": "ddim", "size": 64, "split": "train", "rows": f"the first {n_ref} of the prepared cache"}
    pack_stats(npz, main / REF_STATS, meta)
    return {"file": REF_STATS, "sha256": sha256_file(main / REF_STATS), **meta}


def plan_parts(weight_bytes: int, repo: int, main_bytes: int, pack_min: int) -> list[int]:
    """Piece sizes of the weights: each piece but the last fills a device call of its own (gpu_ferry.sh);
    the last travels with main/ and leaves room for at least `pack_min` bytes of pack."""
    room = LIMIT_BYTES - MARGIN_BYTES - repo
    if room <= 0:
        fail(f"the repository alone ({mib(repo)}) fills a device call")
    last_room = room - main_bytes - pack_min
    if last_room <= 0:
        fail(f"main/ ({mib(main_bytes)}) and the smallest pack ({mib(pack_min)}) do not fit beside the repository")
    ferries = max(0, -(-(weight_bytes - last_room) // room))
    last = weight_bytes - ferries * room
    if last <= 0:  # the ferried calls could hold every byte: the check's call keeps a small piece, the pack the room
        last = min(last_room, 2**20, weight_bytes)
    rest = weight_bytes - last
    return [min(room, rest - i * room) for i in range(ferries)] + [last]


def split_weights(weights: Path, bundle: Path, sizes: list[int]) -> list[dict[str, Any]]:
    parts = []
    with open(weights, "rb") as f:
        for i, size in enumerate(sizes, 1):
            folder = bundle / f"{PART_PREFIX}{i}"
            folder.mkdir()
            path = folder / f"inception.part{i}"
            with open(path, "wb") as out:
                left = size
                while left:
                    chunk = f.read(min(left, 1 << 22))
                    out.write(chunk)
                    left -= len(chunk)
            parts.append({"folder": folder.name, "file": path.name, "bytes": size, "sha256": sha256_file(path)})
    return parts


def export_pack(cache: Path, main: Path, prof: Profile, room: int) -> dict[str, Any]:
    """The cache's first images as PNGs, as many whole batches as fit in `room` bytes."""
    import hashlib

    import numpy as np
    from PIL import Image

    images = np.load(cache / "images.npy", mmap_mode="r")
    folder = main / PACK_IMAGES
    folder.mkdir(parents=True)
    used, n = 0, 0
    for i in range(min(prof.n_train_max, len(images))):
        path = folder / f"{i:06d}.png"
        Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0))).save(path, optimize=True)
        used += sent_bytes(path)
        if used > room:
            path.unlink()
            break
        n += 1
    n -= n % prof.batch
    for extra in sorted(folder.glob("*.png"))[n:]:
        extra.unlink()
    if n < prof.n_train_min:
        fail(f"only {n} pack images fit in the {mib(room)} left in the check's device call (want >= {prof.n_train_min})")
    digest, count, size = folder_digest(folder)
    pixels = hashlib.sha256(np.ascontiguousarray(images[:n]).tobytes()).hexdigest()
    index = json.loads((cache / "index.json").read_text())
    return {"dir": PACK_IMAGES, "count": count, "bytes": size, "files_sha256": digest, "pixels_sha256": pixels,
            "size": 64, "crop": "ddim", "split": "train", "source_cache": cache.name, "cache_key": index["key"],
            "made_by": "ddpmkit prepare --preset celeba64 --size 64 --crop ddim --split train, first rows, PNG"}


def calls(parts: list[dict[str, Any]], repo: int, bundle: Path) -> list[dict[str, Any]]:
    """The device-tool calls that carry the bundle, in order, with the bytes each sends."""
    rel = bundle.resolve().relative_to(REPO) if bundle.resolve().is_relative_to(REPO) else bundle
    out = [{"carry": [f"{rel}/{p['folder']}"], "command": "bash scripts/gpu_ferry.sh", "bytes": repo + p["bytes"] + FILE_OVERHEAD}
           for p in parts[:-1]]
    main_bytes = tree_bytes(bundle / MAIN)
    out.append({"carry": [f"{rel}/{MAIN}", f"{rel}/{parts[-1]['folder']}"], "command": "bash scripts/gpu_check.sh",
                "bytes": repo + main_bytes + parts[-1]["bytes"] + FILE_OVERHEAD})
    return out


def report(manifest: dict[str, Any]) -> None:
    for i, c in enumerate(manifest["calls"], 1):
        ok = "ok" if c["bytes"] <= LIMIT_BYTES else "OVER THE LIMIT"
        say(f"device call {i}: {mib(c['bytes'])} of {mib(LIMIT_BYTES)} ({ok}): carry {json.dumps(c['carry'])}, command '{c['command']}'")
    p = manifest["pack"]
    say(f"pack: {p['count']} images ({mib(p['bytes'])}); reference statistics: {manifest['reference']['images']} images; "
        f"wheels: {len(manifest['wheels'])}; weights: {len(manifest['weights']['parts'])} pieces; repository {mib(manifest['repo_bytes'])}")
    over = [i for i, c in enumerate(manifest["calls"], 1) if c["bytes"] > LIMIT_BYTES]
    if over:
        fail(f"device call(s) {over} would carry more than {mib(LIMIT_BYTES)}")


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    prof = profile(args.tiny)
    weights = args.fid_weights
    if weights is None or not Path(weights).is_file():
        fail(f"FID weights not found at {weights}: pass --fid-weights or set $DDPMKIT_FID_WEIGHTS to {WEIGHTS_NAME}")
    weights = Path(weights).resolve()
    bundle, n_ref = args.dir, args.n_ref or prof.n_ref
    work, main_dir = bundle / "work", bundle / MAIN
    clean(bundle)
    wheels = [] if prof.tiny else download_wheels(main_dir / WHEELS_DIR, work / "logs" / "pip.log")
    say("no wheels in a tiny bundle" if prof.tiny else f"{len(wheels)} wheels: {mib(tree_bytes(main_dir / WHEELS_DIR))}")
    subset = make_subset(args.celeba, work, max(prof.subset, n_ref))
    cache = prepare_cache(subset, work, max(prof.subset, n_ref))
    reference = reference_stats(cache, work, main_dir, n_ref, weights)
    repo = repo_bytes()
    sizes = plan_parts(weights.stat().st_size, repo, tree_bytes(main_dir) + MANIFEST_ROOM, prof.n_train_min * PNG_BYTES_GUESS)
    parts = split_weights(weights, bundle, sizes)
    room = LIMIT_BYTES - MARGIN_BYTES - repo - tree_bytes(main_dir) - MANIFEST_ROOM - sizes[-1] - FILE_OVERHEAD
    pack = export_pack(cache, main_dir, prof, room)
    manifest = {
        "format": 1, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tiny": prof.tiny, "repo_bytes": repo, "limit_bytes": LIMIT_BYTES, "pack": pack, "reference": reference,
        "wheels": wheels, "model_sets": list(prof.model_sets),
        "weights": {"name": WEIGHTS_NAME, "bytes": weights.stat().st_size, "sha256": sha256_file(weights), "parts": parts},
    }
    (main_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    manifest["calls"] = calls(parts, repo, bundle)
    (main_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    report(manifest)
    say(f"done: {bundle}")


if __name__ == "__main__":
    main()
