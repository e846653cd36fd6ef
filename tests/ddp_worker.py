"""A torchrun worker for tests/test_distributed.py: train, then let every rank show its weights.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py OUT JOB...

Each JOB is a settings YAML path, `resume:PATH` to continue the run in that file's
train.run_dir, or `stop:STEP:PATH` for a new run in which rank 1 alone asks to stop after step
STEP. For each job in turn every rank runs the real Trainer (DDP when WORLD_SIZE > 1), then
writes its own model and EMA state dicts to OUT/<yaml stem>/rank{r}.safetensors and
rank{r}_ema.safetensors, its final step to rank{r}.step, whether it reports the run as
interrupted to rank{r}.interrupted, and how many gradient all-reduces DDP made (a counting comm
hook around DDP's own all-reduce) to rank{r}.allreduces. Only rank 0 writes checkpoints,
so this is the one way to see what rank 1 holds. Several jobs share one launch because starting
processes costs more than training the tiny model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from ddpmkit.device import dist_from_env
from ddpmkit.settings import build_settings
from ddpmkit.train import build_trainer


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def run_job(job: str, out_root: Path) -> None:
    kind, _, rest = job.rpartition(":") if job.startswith(("resume:", "stop:")) else ("", "", job)
    config = Path(rest)
    dist = dist_from_env()
    trainer = build_trainer(build_settings(config=config), log=lambda m: None, progress=False, dist=dist)
    if kind.startswith("stop:") and dist.rank == 1:
        stop_at = int(kind.split(":")[1])
        trainer.on_step.append(lambda tr: tr.request_stop() if tr.step == stop_at else None)
    allreduces = [0]
    if trainer.stepper.ddp is not None:

        def counting(state, bucket):  # noqa: ANN001, ANN202 (DDP's hook signature)
            allreduces[0] += 1
            return allreduce_hook(state, bucket)

        trainer.stepper.ddp.register_comm_hook(None, counting)
    trainer.open(resume=kind == "resume")
    result = trainer.run()
    out = out_root / config.stem
    out.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(trainer.state.model.state_dict()), str(out / f"rank{dist.rank}.safetensors"))
    save_file(_contiguous(trainer.state.ema.model.state_dict()), str(out / f"rank{dist.rank}_ema.safetensors"))
    (out / f"rank{dist.rank}.step").write_text(f"{result.step}\n")
    (out / f"rank{dist.rank}.interrupted").write_text(f"{result.interrupted}\n")
    (out / f"rank{dist.rank}.allreduces").write_text(f"{allreduces[0]}\n")


def main(argv: list[str]) -> int:
    out_root, jobs = Path(argv[0]), argv[1:]
    for job in jobs:
        run_job(job, out_root)
    if torch.distributed.is_initialized():  # build_trainer joined it and leaves it for the next job
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
