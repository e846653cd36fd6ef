"""Fill .gpu_bundle/ with what scripts/gpu_check.sh needs on a GPU machine without internet
(run by scripts/gpu_bundle.sh on a machine that has internet, CelebA and the FID weights).

    .gpu_bundle/kit/             copy it to the GPU machine, beside the repository
        manifest.json            what is here, with digests (and, with --max-bytes, the copies to make)
        wheels/*.whl             the packages GPU images with torch usually lack (Python 3.12, manylinux x86-64)
        pack.zip                 the training pack: a CelebA train-split cache made by `ddpmkit prepare`
                                 (DDIM crop, 64 px, uint8), as lossless PNGs (2/3 of the raw bytes)
        ref_stats.npz            FID reference statistics of the train split, computed here
        pt_inception-...pth      the FID Inception weights (without --max-bytes)
    .gpu_bundle/piece1/, ...     with --max-bytes: the weights cut into pieces, each copied on its own
    .gpu_bundle/work/            caches of this script (prepared images, statistics); never copied

--max-bytes N is for a way in that takes at most N bytes at a time (the repository and the folders
of one copy together): the weights (92 MB) are then cut so that each copy fits, the last piece
going with kit/, and the pack gets the room left. scripts/gpu_stash.sh puts a piece copied in
alone where the check finds it; the check joins the pieces and verifies the sha256.
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

from kit import (
    KIT, MANIFEST, MARGIN_BYTES, PACK_ZIP, PART_PREFIX, REF_STATS, WEIGHTS_NAME, WHEEL_PLATFORMS, WHEELS, WHEELS_DIR,
    Profile, add_shared_options, mib, pack_stats, parse_bytes, parse_shared, profile, python_env, repo_bytes, run,
    sha256_file, tree_bytes,
)

PNG_BYTES_GUESS = 8_600  # a 64x64 CelebA face as PNG in the zip (measured: 8.1 KB on average); sizes the smallest pack
MANIFEST_ROOM = 64 * 1024


def say(msg: str) -> None:
    print(f"[gpu_bundle] {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"[gpu_bundle] FAIL: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(ap, "--dir", "tiny bundle for the CPU dry run, no wheel downloads")
    ap.add_argument("--celeba", type=Path, default=Path(os.environ.get("DDPMKIT_DATA_ROOT", "data/celeba")),
                    help="CelebA root: img_align_celeba/ and list_eval_partition.txt (default $DDPMKIT_DATA_ROOT, else data/celeba)")
    ap.add_argument("--fid-weights", type=Path, default=os.environ.get("DDPMKIT_FID_WEIGHTS"),
                    help=f"the FID Inception weights file {WEIGHTS_NAME} (default $DDPMKIT_FID_WEIGHTS)")
    ap.add_argument("--n-ref", type=int, help="images behind the reference statistics (default 2048; tiny 6)")
    ap.add_argument("--max-bytes", type=parse_bytes, help="the most one copy to the GPU machine may hold, the repository "
                    "included (e.g. 100MB): the weights go in pieces and the pack shrinks to fit (default: no limit)")
    return parse_shared(ap, argv)


def clean(bundle: Path) -> None:
    """Remove the previous bundle's folders (two versions of a wheel stop the install); keep work/."""
    for p in [bundle / KIT, *bundle.glob(f"{PART_PREFIX}[0-9]*")]:
        if p.exists():
            shutil.rmtree(p)
    (bundle / KIT).mkdir(parents=True)


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


def reference_stats(cache: Path, work: Path, kit: Path, n_ref: int, weights: Path) -> dict[str, Any]:
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
    pack_stats(npz, kit / REF_STATS, meta)
    return {"file": REF_STATS, "sha256": sha256_file(kit / REF_STATS), **meta}


def plan_parts(weight_bytes: int, budget: int, repo: int, kit_bytes: int, pack_min: int) -> list[int]:
    """Piece sizes of the weights under a budget of `budget` bytes per copy (the repository goes with
    each): every piece but the last fills a copy of its own; the last goes with kit/ and leaves room
    for at least `pack_min` bytes of pack."""
    room = budget - MARGIN_BYTES - repo
    if room <= 0:
        fail(f"the repository alone ({mib(repo)}) fills --max-bytes {mib(budget)}")
    last_room = room - kit_bytes - pack_min
    if last_room <= 0:
        fail(f"kit/ ({mib(kit_bytes)}) and the smallest pack ({mib(pack_min)}) do not fit beside the repository")
    alone = max(0, -(-(weight_bytes - last_room) // room))
    last = weight_bytes - alone * room
    if last <= 0:  # the copies on their own could hold every byte: the last keeps a small piece, the pack the room
        last = min(last_room, 2**20, weight_bytes)
    rest = weight_bytes - last
    return [min(room, rest - i * room) for i in range(alone)] + [last]


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


def export_pack(cache: Path, kit: Path, prof: Profile, room: Optional[int]) -> dict[str, Any]:
    """The cache's first images as PNGs in kit/pack.zip: as many whole batches as fit in `room` bytes."""
    import hashlib
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    images = np.load(cache / "images.npy", mmap_mode="r")
    pngs: list[bytes] = []
    used = 0
    for i in range(min(prof.n_train_max, len(images))):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0))).save(buf, format="PNG", optimize=True)
        used += len(buf.getvalue()) + 100  # the zip's headers: about 100 bytes an entry
        if room is not None and used > room:
            break
        pngs.append(buf.getvalue())
    n = len(pngs) - len(pngs) % prof.batch
    if n < prof.n_train_min:
        fail(f"only {n} pack images fit in the {mib(room or 0)} left (want >= {prof.n_train_min})")
    with zipfile.ZipFile(kit / PACK_ZIP, "w", compression=zipfile.ZIP_STORED) as z:
        for i, png in enumerate(pngs[:n]):
            z.writestr(f"{i:06d}.png", png)
    pixels = hashlib.sha256(np.ascontiguousarray(images[:n]).tobytes()).hexdigest()
    index = json.loads((cache / "index.json").read_text())
    return {"file": PACK_ZIP, "count": n, "bytes": (kit / PACK_ZIP).stat().st_size, "sha256": sha256_file(kit / PACK_ZIP),
            "pixels_sha256": pixels, "size": 64, "crop": "ddim", "split": "train", "source_cache": cache.name,
            "cache_key": index["key"], "made_by": "ddpmkit prepare --preset celeba64 --size 64 --crop ddim --split train, first rows, PNG"}


def copies(parts: list[dict[str, Any]], repo: int, bundle: Path) -> list[dict[str, Any]]:
    """The copies to the GPU machine, in order, with the bytes each holds (the repository included)."""
    out = [{"folders": [p["folder"]], "then": "bash scripts/gpu_stash.sh", "bytes": repo + p["bytes"]} for p in parts[:-1]]
    last = [KIT] + ([parts[-1]["folder"]] if parts else [])
    out.append({"folders": last, "then": "bash scripts/gpu_check.sh",
                "bytes": repo + tree_bytes(bundle / KIT) + (parts[-1]["bytes"] if parts else 0)})
    return out


def report(manifest: dict[str, Any], budget: Optional[int]) -> None:
    for i, c in enumerate(manifest["copies"], 1):
        size = f"{mib(c['bytes'])} of {mib(budget)} ({'ok' if c['bytes'] <= budget else 'OVER'})" if budget else mib(c["bytes"])
        say(f"copy {i}: the repository + .gpu_bundle/{{{','.join(c['folders'])}}}, {size}; then run '{c['then']}'")
    p = manifest["pack"]
    weights = f"{len(manifest['weights']['parts'])} pieces" if manifest["weights"]["parts"] else "whole in kit/"
    say(f"pack: {p['count']} images ({mib(p['bytes'])}); reference statistics: {manifest['reference']['images']} images; "
        f"wheels: {len(manifest['wheels'])}; weights: {weights}; repository {mib(manifest['repo_bytes'])}")
    over = [i for i, c in enumerate(manifest["copies"], 1) if budget and c["bytes"] > budget]
    if over:
        fail(f"copy {over} would hold more than --max-bytes {mib(budget)}")


def place_weights(weights: Path, bundle: Path, budget: Optional[int], repo: int, kit_bytes: int,
                  prof: Profile) -> tuple[list[dict[str, Any]], Optional[int]]:
    """The weights whole in kit/ (no budget) or in pieces; returns (the pieces, room left for the pack)."""
    if budget is None:
        shutil.copyfile(weights, bundle / KIT / WEIGHTS_NAME)
        return [], None
    pack_min = prof.n_train_min * PNG_BYTES_GUESS
    sizes = plan_parts(weights.stat().st_size, budget, repo, kit_bytes + MANIFEST_ROOM, pack_min)
    parts = split_weights(weights, bundle, sizes)
    return parts, budget - MARGIN_BYTES - repo - kit_bytes - MANIFEST_ROOM - sizes[-1]


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    prof = profile(args.tiny)
    weights = args.fid_weights
    if weights is None or not Path(weights).is_file():
        fail(f"FID weights not found at {weights}: pass --fid-weights or set $DDPMKIT_FID_WEIGHTS to {WEIGHTS_NAME}")
    weights = Path(weights).resolve()
    bundle, n_ref = args.bundle_dir, args.n_ref or prof.n_ref
    work, kit = bundle / "work", bundle / KIT
    clean(bundle)
    wheels = [] if prof.tiny else download_wheels(kit / WHEELS_DIR, work / "logs" / "pip.log")
    say("no wheels in a tiny bundle" if prof.tiny else f"{len(wheels)} wheels: {mib(tree_bytes(kit / WHEELS_DIR))}")
    subset = make_subset(args.celeba, work, max(prof.subset, n_ref))
    cache = prepare_cache(subset, work, max(prof.subset, n_ref))
    reference = reference_stats(cache, work, kit, n_ref, weights)
    repo = repo_bytes()
    parts, room = place_weights(weights, bundle, args.max_bytes, repo, tree_bytes(kit), prof)
    pack = export_pack(cache, kit, prof, room)
    manifest = {
        "format": 2, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tiny": prof.tiny, "repo_bytes": repo, "max_bytes": args.max_bytes, "pack": pack, "reference": reference,
        "wheels": wheels, "model_sets": list(prof.model_sets),
        "weights": {"name": WEIGHTS_NAME, "bytes": weights.stat().st_size, "sha256": sha256_file(weights), "parts": parts},
    }
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1))  # written first: copies() counts its bytes
    manifest["copies"] = copies(parts, repo, bundle)
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1))
    report(manifest, args.max_bytes)
    say(f"done: {bundle}")


if __name__ == "__main__":
    main()
