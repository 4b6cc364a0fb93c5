"""``prefopt push``: a run's final/ (weights, model card, sample grid) to a Hugging Face Hub repository.

The upload is one huggingface_hub commit (``create_commit``, what
``upload_folder`` makes of a folder): through hf_xet (a dependency of
huggingface_hub) it streams files in chunks and resumes an interrupted upload
when the same command is run again (files already on the Hub are skipped,
uploaded chunks deduplicated).

The uploaded card's usage snippet loads the model from the repository; that
card, and the integrity record that covers it, are built in memory. Pushing
never writes to the run: a failed push, or a push from a read-only copy,
leaves final/ byte for byte as it was, and the local card keeps naming the
local final/.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefopt.errors import PrefoptError, file_errors
from prefopt.model_card import CARD, name_repo


def upload_files(final: Path, repo_id: str) -> dict[str, Path | bytes]:
    """What the repository receives, by name: final/'s files, with the card naming ``repo_id``.

    A file is its path in final/, or the bytes to upload instead (the card and the
    integrity record, when the card changes). ``final`` must have been verified.
    """
    from prefopt.checksums import RECORD, read_json

    # The files that are there (as upload_folder would find them), not the names the record lists:
    # a name in the record must not reach outside final/.
    with file_errors(final, "list"):
        names = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    upload: dict[str, Path | bytes] = {name: final / name for name in names}
    record = read_json(final / RECORD, "trained weights record")
    if CARD in upload:
        with file_errors(final / CARD, "read"):
            card = (final / CARD).read_bytes()
        # surrogateescape: any byte the card holds goes up unchanged but the one line renamed.
        named = name_repo(card.decode("utf-8", "surrogateescape"), repo_id).encode("utf-8", "surrogateescape")
        if named != card:
            # The uploaded final/ stays verifiable (prefopt eval --weights on a download of it):
            # its record holds the card that is uploaded, not the local one.
            files = {**record["files"], CARD: hashlib.sha256(named).hexdigest()}
            upload[CARD] = named
            upload[RECORD] = (json.dumps({**record, "files": files}, indent=1, sort_keys=True) + "\n").encode()
    return upload


def push_run(run_dir: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``run_dir/final`` to the model repository ``repo_id``; returns the repository's URL."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from prefopt.locking import hold
    from prefopt.rundir import FINAL_REPAIR, verify_final

    final = Path(run_dir) / "final"
    if not final.is_dir():
        raise PrefoptError(f"{run_dir} has no final/ to push; finish the run first (prefopt run RECIPE)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PrefoptError(f"--repo-id {repo_id!r} is not a Hub repository id: {exc}") from None
    # Held as eval holds it: no `prefopt run --overwrite` may replace final/ during the upload.
    with hold(run_dir, "run directory"):
        # As eval does: never publish weights that are unsealed (not written whole) or changed since.
        verify_final(final, repair=FINAL_REPAIR)
        operations = [CommitOperationAdd(path_in_repo=name,
                                         path_or_fileobj=data if isinstance(data, bytes) else str(data))
                      for name, data in sorted(upload_files(final, repo_id).items())]
        return _upload(run_dir, repo_id, private, operations)


def _upload(run_dir: Path, repo_id: str, private: bool, operations: list) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        # Any failure of the Hub or the network (no token, no permission, no connection)
        # is the user's to fix: one line, not a traceback.
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.create_commit(repo_id=repo_id, operations=operations, repo_type="model",
                          commit_message=f"prefopt push {Path(run_dir).resolve().name}")
    except Exception as exc:  # noqa: BLE001 - see above
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrefoptError(f"push to {repo_id} failed: {reason}") from exc
    return f"https://huggingface.co/{repo_id}"
