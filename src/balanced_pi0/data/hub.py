"""``hub:<repo_id>``: a LeRobot v3.0 dataset snapshot from the Hugging Face Hub.

Without network this must fail at once with a message that says what to do, not
hang on retries: ``HF_HUB_OFFLINE`` is honoured before any request, and the
first request (repository info) has a short timeout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from balanced_pi0.errors import InputError

#: seconds for the first request; a reachable hub answers well within this
PROBE_TIMEOUT_S = 10.0


class HubUnavailable(InputError):
    """The hub cannot be reached (offline, no network, or the repository is not accessible)."""


def download(repo_id: str, out: Path, *, revision: str | None = None) -> Path:
    """Snapshot the dataset repository ``repo_id`` into ``out`` (a fresh directory)."""
    source = f"hub:{repo_id}"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise HubUnavailable(f"{source}: HF_HUB_OFFLINE is set; use dataset.source: sim or unset it")
    from huggingface_hub import HfApi, snapshot_download

    try:
        HfApi().dataset_info(repo_id, revision=revision, timeout=PROBE_TIMEOUT_S)
        snapshot_download(
            repo_id, repo_type="dataset", revision=revision, local_dir=out, etag_timeout=PROBE_TIMEOUT_S
        )
    except Exception as e:  # network, auth and not-found errors come from several libraries
        raise HubUnavailable(
            f"{source}: cannot download from the Hugging Face Hub ({type(e).__name__}: {e}); "
            "check the network and the repo id, or use dataset.source: sim"
        ) from None
    # The local_dir download leaves a .cache folder of etags; it is not part of the dataset.
    shutil.rmtree(out / ".cache", ignore_errors=True)
    return out
