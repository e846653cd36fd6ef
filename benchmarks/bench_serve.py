"""Load check of `ddpmkit serve`: several people at once on one run, on this machine's device.

N clients (threads) send a generate job at the same moment (a barrier): each asks for --n images
with DDIM and --steps steps, its own seed. The server runs them one at a time. Checked: every
job ends done (none failed), the jobs start in the order they were queued, and every client
gets all its images (each fetched and decoded). Measured from each client's side: the time
from sending its job to its first image (the `images` event), and to the end; the first job
queued ran on an idle device, so its time to the first image is what one person waits.

    python benchmarks/bench_serve.py RUN [--clients 8] [--n 4] [--steps 20] [--out-json FILE]

RUN is a run folder (`ddpmkit train --preset demo`). Time it on an otherwise idle machine: the
timings are the point, and other work on the cores skews them. The outputs go to a temporary
folder, removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from ddpmkit.device import resolve_device
from ddpmkit.serve import server
from ddpmkit.serve.app import make_app
from ddpmkit.serve.runs import ServedRuns

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, load_average  # noqa: E402


def client(url: str, run: str, seed: int, n: int, steps: int, barrier: threading.Barrier) -> dict[str, Any]:
    """One person: send the job when everyone is ready, follow its events, fetch its images."""
    request = {"kind": "generate", "run": run, "sampler": "ddim", "steps": steps, "n": n, "seed": seed}
    barrier.wait()
    t0 = time.perf_counter()
    req = urllib.request.Request(url + "api/jobs", json.dumps(request).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        job = json.loads(r.read())
    out: dict[str, Any] = {"seed": seed, "id": job["id"], "position": job["position"], "first_image_s": None}
    with urllib.request.urlopen(f"{url}api/jobs/{job['id']}/events", timeout=3600) as stream:
        for line in stream:
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if event["type"] == "started":
                out["started"] = event["t"]
            if event["type"] == "images" and out["first_image_s"] is None:
                out["first_image_s"] = time.perf_counter() - t0
            if event["type"] in ("done", "failed", "cancelled"):
                out.update(state=event["type"], error=event.get("error"), total_s=time.perf_counter() - t0,
                           result=event.get("result"))
    images = (out.get("result") or {}).get("images", [])
    out["images_ok"] = sum(_decodes(url + u.lstrip("/")) for u in images)
    return out


def _decodes(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=60) as r:
        return Image.open(io.BytesIO(r.read())).width > 0


def check(results: list[dict[str, Any]], n: int) -> list[str]:
    """What went wrong: a job not done, images missing, jobs started out of queue order."""
    problems = [f"{r['id']}: {r.get('state')} {r.get('error') or ''}".strip() for r in results if r.get("state") != "done"]
    problems += [f"{r['id']}: {r['images_ok']} of {n} images" for r in results if r["images_ok"] != n]
    queued = sorted(results, key=lambda r: int("".join(c for c in r["id"] if c.isdigit())))
    started = [r.get("started", float("inf")) for r in queued]
    if started != sorted(started):
        problems.append("jobs did not start in the order they were queued: " + ", ".join(r["id"] for r in queued))
    return problems


def run_clients(run: Path, clients: int, n: int, steps: int, device: str) -> list[dict[str, Any]]:
    """Serve `run` on a free port and let `clients` people use it at once."""
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as out:
        served = ServedRuns([run], resolve_device(device))
        (name,) = [r.name for r in served.listing()]
        sock = server.bind("127.0.0.1", 0)
        srv, thread = server.start_in_thread(make_app(served, Path(out), max_upload_bytes=1 << 20), sock)
        try:
            barrier = threading.Barrier(clients)
            results: list[Optional[dict[str, Any]]] = [None] * clients

            def person(k: int) -> None:
                results[k] = client(server.url_of(sock), name, 1000 + k, n, steps, barrier)

            threads = [threading.Thread(target=person, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            server.stop(srv, thread)
    return [r for r in results if r is not None]


def _s(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    results = run_clients(args.run, args.clients, args.n, args.steps, args.device)
    problems = check(results, args.n)
    first = min(results, key=lambda r: r.get("started", float("inf")))
    firsts = [r["first_image_s"] for r in results if r["first_image_s"] is not None] or [float("nan")]
    summary = {"run": str(args.run), "clients": args.clients, "n": args.n, "steps": args.steps, "device": args.device,
               "ok": not problems and len(results) == args.clients, "problems": problems,
               "first_image_idle_s": first["first_image_s"], "first_image_median_s": statistics.median(firsts),
               "first_image_max_s": max(firsts), "cpu": cpu_model(), "load": load_average(),
               "jobs": [{k: r.get(k) for k in ("id", "position", "first_image_s", "total_s", "state")} for r in results]}
    for r in sorted(summary["jobs"], key=lambda r: r["first_image_s"] or 0):
        print(f"{r['id']:>12}  queued at {r['position']}  first image {_s(r['first_image_s'])}  "
              f"done {_s(r['total_s'])}  {r['state']}")
    print(f"first image on an idle device: {_s(summary['first_image_idle_s'])}; all {args.clients} clients: "
          f"median {_s(summary['first_image_median_s'])}, max {_s(summary['first_image_max_s'])} "
          f"({summary['cpu']}, load {summary['load']})")
    print("ok: every job done, in queue order, every image decoded" if summary["ok"] else f"PROBLEMS: {problems}")
    if args.out_json:
        args.out_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
