"""``prefopt push``: a run's final/ (weights, model card, sample grid) to a Hugging Face Hub repository.

The upload is huggingface_hub's ``upload_folder``: through hf_xet (a
dependency of huggingface_hub) it streams files in chunks, commits a large
folder in batches, and resumes an interrupted upload when the same command is
run again (committed files are skipped, uploaded chunks deduplicated).
"""

from __future__ import annotations

from pathlib import Path

from prefopt.errors import PrefoptError
from prefopt.model_card import CARD, check_final, name_repo, update_final

def push_run(run_dir: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``run_dir/final`` to the model repository ``repo_id``; returns the repository's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    final = Path(run_dir) / "final"
    if not final.is_dir():
        raise PrefoptError(f"{run_dir} has no final/ to push; finish the run first (prefopt run RECIPE)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PrefoptError(f"--repo-id {repo_id!r} is not a Hub repository id: {exc}") from None
    check_final(final)  # never publish damaged weights
    card = final / CARD
    if card.is_file():  # its usage snippet loads the model from the repository it is pushed to
        text = card.read_text()
        named = name_repo(text, repo_id)
        if named != text:
            update_final(final, {CARD: named.encode()})

    api = HfApi()
    try:
        # Any failure of the Hub or the network (no token, no permission, no connection)
        # is the user's to fix: one line, not a traceback.
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=final, repo_type="model",
                          commit_message=f"prefopt push {Path(run_dir).name}")
    except Exception as exc:  # noqa: BLE001 - see above
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrefoptError(f"push to {repo_id} failed: {reason}") from exc
    return f"https://huggingface.co/{repo_id}"
