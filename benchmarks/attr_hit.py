"""Does `sample --attr NAME --guidance W` give faces with NAME? Measured on the demo faces or CelebA.

    PYTHONPATH=src .venv/bin/python benchmarks/attr_hit.py RUN --n 64 --out benchmarks/attr_hit

RUN: a run trained with `--condition attributes`, either on the demo faces (`--preset demo`;
attributes known by construction: `data.synthetic.FACE_ATTRIBUTES`) or on CelebA.

1. The checker: a small CNN trained (--checker-steps, fixed, so the result does not depend on the
   machine's speed) on faces with known attributes; its accuracy per attribute on held-out faces is
   reported. Demo runs: generated faces of another seed than the run's data. CelebA runs: the
   images of the run's prepared cache that have an attribute row (the labels the run trained on;
   the held-out part is --checker-test of them, at most a fifth).
2. For each attribute, N faces are sampled asking for it alone (every other attribute unspecified)
   at each guidance weight (default 0, 1, 3; 0 = the unconditional model, 1 = the conditional
   model), all from the same seeds, and the checker says which have it: the hit rate.

Writes OUT/attr_hit.md (the table: attribute, base rate in the data, checker accuracy, hit rate
at each guidance) and OUT/attr_hit_grid.png (one row per attribute, one column of --show images
per guidance, left to right). The table also goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.checkpoint import load_model
from ddpmkit.conditioning import attribute_vector
from ddpmkit.data.synthetic import FACE_ATTRIBUTES, make_faces_with_attributes
from ddpmkit.device import resolve_device
from ddpmkit.generate import eps_fn, generate
from ddpmkit.images import save_grid
from ddpmkit.io_utils import write_text_atomic
from ddpmkit.samplers import make_sampler
from ddpmkit.schedule import NoiseSchedule

CHECKER_SEED = 10_007  # a face stream no run trains on by default (data.synthetic_seed is 0)


class Checker(nn.Module):
    """A small CNN: (B, 3, S, S) in [-1, 1] -> (B, K) logits, one per attribute. The head sees
    the S/8 x S/8 feature map whole, not its mean: where a cue is (a cheek, the lip) matters."""

    def __init__(self, k: int, size: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in (width, width * 2, width * 4):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * (size // 8) ** 2, k)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def demo_faces(n: int, size: int) -> tuple[Tensor, Tensor, list[str]]:
    """n generated faces (n, 3, S, S) in [-1, 1], their attributes (n, K) in {0, 1}, the K names."""
    images, attrs = make_faces_with_attributes(n, size, seed=CHECKER_SEED)
    return images.float().div(127.5).sub(1.0), torch.from_numpy(attrs > 0).float(), list(FACE_ATTRIBUTES)


def celeba_faces(run: Path) -> tuple[Tensor, Tensor, list[str]]:
    """The faces of the run's prepared cache that have an attribute row, shuffled (fixed seed):
    (n, 3, S, S) in [-1, 1], (n, 40) in {0, 1}, the 40 names."""
    import numpy as np

    from ddpmkit.data.cache import open_images, read_index

    cache = Path(json.loads((run / "run.json").read_text())["cache"])
    rows = np.load(cache / "attributes.npy")
    keep = np.flatnonzero(np.abs(rows).sum(1) > 0)  # ascending: one pass over the memory-mapped images
    perm = torch.randperm(len(keep), generator=torch.Generator().manual_seed(CHECKER_SEED))
    x = torch.from_numpy(np.ascontiguousarray(open_images(cache)[keep]))[perm].float().div(127.5).sub(1.0)
    return x, torch.from_numpy(rows[keep] > 0).float()[perm], list(read_index(cache)["attribute_names"])


def checker_faces(a: argparse.Namespace, dataset: str, names: list[str], size: int):
    """(faces, labels, column names, how many held out, where they come from) for the run's kind of data;
    None for a run that is neither a demo-faces nor a CelebA conditional run."""
    if dataset == "synthetic" and names == list(FACE_ATTRIBUTES):
        x, y, columns = demo_faces(a.checker_train + a.checker_test, size)
        return x, y, columns, a.checker_test, f"{a.checker_train:,} generated faces (seed {CHECKER_SEED})"
    if dataset == "celeba" and names:
        x, y, columns = celeba_faces(a.run)
        n_test = min(a.checker_test, len(x) // 5)
        return x, y, columns, n_test, f"the {len(x) - n_test:,} faces of the run's cache with an attribute row"
    return None


def train_checker(x: Tensor, y: Tensor, n_test: int, steps: int, device: torch.device,
                  log=print) -> tuple[Checker, dict[str, Tensor]]:
    """Train the checker on all but the last n_test faces x: (N, 3, S, S) in [-1, 1], labels y: (N, K);
    returns it (eval mode) and per attribute (K,): the base rate in the training faces, and on the
    held-out faces the accuracy, the fraction found where present (tpr) and where absent (fpr)."""
    n_train = len(x) - n_test
    x_tr, y_tr, x_te, y_te = x[:n_train].to(device), y[:n_train].to(device), x[n_train:], y[n_train:]
    net = Checker(y.shape[1], x.shape[-1]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, n_train, (64,), generator=g).to(device)
        xb = x_tr[idx]
        flip = (torch.rand(len(idx), generator=g) < 0.5).to(device).view(-1, 1, 1, 1)
        xb = torch.where(flip, xb.flip(-1), xb)  # every attribute is left-right symmetric
        loss = F.binary_cross_entropy_with_logits(net(xb), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
        if (step + 1) % 250 == 0:
            log(f"checker step {step + 1}/{steps}: loss {loss.item():.4f}")
    net.eval()
    found = (predict(net, x_te, device) > 0.5).float()
    stats = {"base": y[:n_train].mean(0), "accuracy": (found == y_te).float().mean(0),
             "tpr": (found * y_te).sum(0) / y_te.sum(0).clamp(min=1),
             "fpr": (found * (1 - y_te)).sum(0) / (1 - y_te).sum(0).clamp(min=1)}
    return net, stats


@torch.no_grad()
def predict(net: Checker, x: Tensor, device: torch.device, batch: int = 256) -> Tensor:
    """Probabilities (N, K) on the CPU for images x: (N, 3, S, S) in [-1, 1]."""
    return torch.cat([torch.sigmoid(net(x[i : i + batch].to(device))).cpu() for i in range(0, len(x), batch)])


def sample_faces(model, smp, cond: Tensor | None, w: float, n: int, size: int, seed: int,
                 device: torch.device, prediction: str) -> Tensor:
    """n faces (n, 3, S, S) in [-1, 1] on the CPU, image i from seed (seed, i)."""
    eps = eps_fn(model, device, prediction=prediction, sched=smp.sched, cond=cond, guidance=w)
    return torch.cat([b.cpu() for b in generate(eps, smp, n, (3, size, size), seed=seed, batch_size=64,
                                                  device=device)])


def table(names: list[str], stats: dict[str, dict[str, float]], hits: dict[str, list[float]],
          weights: list[float]) -> str:
    """The markdown table; stats[name]: base, accuracy, tpr, fpr (see train_checker)."""
    head = ("| attribute | base rate in the data | checker accuracy (found if present / if absent) | "
            + " | ".join(f"hit rate, guidance {w:g}" for w in weights) + " |")
    rule = "|---|---:|---:|" + "---:|" * len(weights)
    rows = [f"| {a} | {stats[a]['base']:.1%} | {stats[a]['accuracy']:.1%} ({stats[a]['tpr']:.0%} / "
            f"{stats[a]['fpr']:.0%}) | " + " | ".join(f"{h:.1%}" for h in hits[a]) + " |" for a in names]
    return "\n".join([head, rule, *rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run trained with --condition attributes (demo faces or CelebA)")
    p.add_argument("--n", type=int, default=64, help="faces per attribute and guidance")
    p.add_argument("--out", type=Path, default=Path("benchmarks/attr_hit"))
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    p.add_argument("--attrs", nargs="+", default=None, help="attributes to ask for (default: all the run's)")
    p.add_argument("--sampler", default="dpmsolver++")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=4, help="faces per cell of the grid")
    p.add_argument("--checker-steps", type=int, default=1000,
                   help="batches of 64 (about a minute on a 2-core CPU at 32 px)")
    p.add_argument("--checker-train", type=int, default=6000, help="generated faces to train the checker on (demo runs)")
    p.add_argument("--checker-test", type=int, default=2000, help="held-out faces (CelebA runs: at most a fifth of those with a row)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)

    device = resolve_device(a.device)
    model, settings, step = load_model(a.run, device)
    names = list(settings.model.cond_names)
    found = checker_faces(a, settings.data.dataset, names, settings.data.size)
    if found is None:
        p.error(f"{a.run} is not a demo-faces or CelebA run trained with --condition attributes")
    x, y, columns, n_test, source = found
    # the run's spelling of each asked name (attribute_vector checks them, case-insensitively)
    asked = [names[int(attribute_vector(names, [n]).abs().argmax())] for n in a.attrs] if a.attrs else names
    size = settings.data.size
    checker, per_attr = train_checker(x, y, n_test, a.checker_steps, device)
    col = {name: i for i, name in enumerate(columns)}
    stats = {n: {k: float(v[col[n]]) for k, v in per_attr.items()} for n in asked}
    sched = NoiseSchedule.from_config(settings.diffusion).to(device)
    prediction = settings.diffusion.prediction
    smp = make_sampler(sched, settings.sample.model_copy(update={"sampler": a.sampler, "steps": a.steps}))
    # guidance 0 is the unconditional model whatever is asked (exactly): sampled once
    uncond = sample_faces(model, smp, None, 1.0, a.n, size, a.seed, device, prediction) if 0.0 in a.guidance else None
    hits: dict[str, list[float]] = {}
    rows: list[Tensor] = []
    blank = torch.ones(1, 3, size, size)
    for name in asked:
        cond = attribute_vector(names, [name])
        cells, rates = [], []
        for w in a.guidance:
            x = uncond if w == 0.0 and uncond is not None else sample_faces(model, smp, cond, w, a.n, size, a.seed,
                                                                               device, prediction)
            rates.append(float((predict(checker, x, device)[:, col[name]] > 0.5).float().mean()))
            cells.append(torch.cat([x[: a.show], blank]))
        hits[name] = rates
        rows.append(torch.cat(cells)[:-1])
        print(f"{name}: " + ", ".join(f"w={w:g} {r:.1%}" for w, r in zip(a.guidance, rates)), file=sys.stderr)

    md = table(asked, stats, hits, a.guidance)
    a.out.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat(rows), a.out / "attr_hit_grid.png", nrow=len(rows[0]), padding=1)
    command = "python benchmarks/attr_hit.py " + " ".join(shlex.quote(s) for s in (argv or sys.argv[1:]))
    note = (f"Run {a.run} at step {step:,}; {a.n} faces per cell, {a.sampler} {a.steps} steps, seeds {a.seed}/0.."
            f"{a.n - 1} (the same faces' noise in every cell). Checker: {a.checker_steps} steps on "
            f"{source}, accuracy on {n_test:,} held out. "
            "Grid: one row per attribute, one block per guidance, left to right.")
    write_text_atomic(a.out / "attr_hit.md", f"{md}\n\n{note}\n\n`{command}`\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
