"""Fetching a model from the Hugging Face Hub into the Hub's own cache (the optional `hub` extra).

Only configs and safetensors weights are downloaded (`ALLOW`): never a pickle, never another
pipeline's parts. Offline, or without huggingface_hub, the one-line error names the model and the
way round: download the folder where there is internet and import it by path.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Optional

from ddpmkit.errors import DdpmkitError
from ddpmkit.interop.layout import CONFIG, MODEL_INDEX, SCHEDULER_CONFIG, WEIGHTS

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")
ALLOW = [MODEL_INDEX, CONFIG, SCHEDULER_CONFIG, WEIGHTS, f"unet/{CONFIG}", f"unet/{WEIGHTS}",
         f"scheduler/{SCHEDULER_CONFIG}"]
_COMMIT = re.compile(r"[0-9a-f]{40}")


def looks_like_hub_id(text: str) -> bool:
    """owner/name, as the Hub spells repository ids (a path that exists is never taken for one)."""
    return HUB_ID.fullmatch(text) is not None and ".." not in text


def _elsewhere(repo_id: str) -> str:
    return (f"download it where there is internet (hf download {repo_id} --exclude '*.bin' "
            f"--local-dir DIR), bring DIR here and run: ddpmkit import DIR --run-dir RUN")


def fetch(repo_id: str, revision: Optional[str] = None) -> tuple[Path, Optional[str]]:
    """The local snapshot folder of Hub model `repo_id` and its commit (None if unknown)."""
    try:  # optional: the `hub` extra
        hub = importlib.import_module("huggingface_hub")
    except ImportError:
        raise DdpmkitError(f"{repo_id} is no folder here, and fetching it from the Hugging Face Hub needs the hub "
                           f"extra (pip install -e '.[hub]' in the clone, or pip install huggingface_hub); or "
                           f"{_elsewhere(repo_id)}") from None
    try:
        path = Path(hub.snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW))
    except Exception as e:  # the Hub client's errors (offline, network, missing or gated repo) vary by version
        reason = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]  # the first sentence
        raise DdpmkitError(f"cannot fetch {repo_id} from the Hugging Face Hub ({type(e).__name__}: {reason}); "
                           f"{_elsewhere(repo_id)}") from None
    return path, path.name if _COMMIT.fullmatch(path.name) else revision
