"""Push what OSF saved to the Hugging Face Hub (the ``osf push`` command).

:func:`push` takes a subnet folder (``osf extract`` / ``osf.save_subnet``), a supernet checkpoint
folder (``sn.save_pretrained``) or a search run folder (``osf search --out``) holding the subnet
extracted from it. It prepares the exact folder to upload (the model's files, linked or copied, and
a Hub-ready ``README.md`` model card from :mod:`osf.search.card`), then creates the repository and
uploads the folder with ``huggingface_hub`` (``create_repo`` + ``upload_folder``). A dry run only
prepares the folder, so it can be read before anything leaves the machine.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osf.elastic.validate import SUBNET, SUPERNET, SavedKind, read_meta

REPO_ID_RULE = ("namespace/name: your user or organisation name, '/', the repository name (letters, digits, '-', "
                "'_', '.'; at most 96 characters), e.g. alice/mamba-130m-half")
_SKIPPED = ("README.md",)  # written fresh: the card
LINK_MIN_BYTES = 1 << 20  # files this large are hard-linked into the prepared folder; smaller ones are copied, so
# editing one there (a config) never changes the source folder


class PushError(RuntimeError):
    """The Hub refused or could not be reached; the message says what it answered and what to do."""


@dataclass(frozen=True)
class Source:
    """What :func:`find_source` found at a path: the folder to push and its kind."""

    folder: Path
    kind: SavedKind


def push(path: str | Path, repo_id: str, *, private: bool = False, dry_run: bool = False, token: str | None = None,
         commit_message: str | None = None, out_dir: str | Path | None = None, keep_card: bool = False) -> str:
    """Upload a subnet, a supernet checkpoint, or the subnet extracted into a search run, with its model card.

    Args:
        path: a subnet folder (``osf_subnet.json``), a supernet checkpoint folder
            (``osf_supernet.json``) or a search run folder (``run.json``) holding one extracted
            subnet (e.g. ``osf extract RUN --best --out RUN/best``).
        repo_id: ``namespace/name`` of the model repository (created if missing).
        private: create the repository private (an existing repository keeps its visibility).
        dry_run: only prepare the folder that would be uploaded, and return its path.
        token: a Hugging Face token with write access (default: ``HF_TOKEN`` or the saved login).
        commit_message: the commit's title (default: "Upload <kind> with OSF").
        out_dir: where to prepare the folder (must be empty or missing); default a temporary
            folder, kept for a dry run and removed after an upload.
        keep_card: upload the folder's own ``README.md`` unchanged (e.g. one edited in a dry
            run's folder) instead of writing the model card.

    Returns:
        The repository's URL, or for a dry run the prepared folder's path.

    Raises:
        ValueError: ``path`` is not a folder OSF wrote, ``repo_id`` is malformed, no token, an
            unusable ``out_dir``, or the Hub is switched off (``HF_HUB_OFFLINE``).
        PushError: the Hub refused the upload or could not be reached.
    """
    check_repo_id(repo_id)
    for name, value in (("private", private), ("dry_run", dry_run), ("keep_card", keep_card)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    if commit_message is not None and (not isinstance(commit_message, str) or not commit_message.strip()):
        raise ValueError(f"commit_message must be a non-empty string (or None for the default), got {commit_message!r}")
    source = find_source(path)
    if keep_card:
        check_own_card(source.folder)
    if not dry_run:
        _check_online()
        token = resolve_token(token)
    staged = prepare_folder(source, repo_id, out_dir, keep_card=keep_card)
    if dry_run:
        return str(staged)
    try:
        return upload(staged, repo_id, private=private, token=token,
                      commit_message=commit_message or f"Upload {source.kind.noun} with OSF")
    finally:
        if out_dir is None:
            shutil.rmtree(staged, ignore_errors=True)


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` when it is a well-formed ``namespace/name``; a one-line ``ValueError`` naming the rule otherwise."""
    if not isinstance(repo_id, str):
        raise ValueError(f"repo id must be a string, {REPO_ID_RULE}; got {type(repo_id).__name__}")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"repo id {repo_id!r} is not {REPO_ID_RULE}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        why = " ".join(str(e).split())
        raise ValueError(f"repo id {repo_id!r} is not valid ({why}); expected {REPO_ID_RULE}") from None
    return repo_id


def find_source(path: str | Path) -> Source:
    """The folder to push at ``path`` and its kind (see :func:`push`), checked; a one-line error otherwise."""
    if not isinstance(path, (str, Path)) or (isinstance(path, str) and not path.strip()):
        raise ValueError(f"path must be a folder (a str or Path), got {path!r}")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist; pass a subnet folder (osf extract), a supernet checkpoint "
                         "folder (sn.save_pretrained) or a search run folder (osf search --out)")
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file; pass the folder holding it, e.g. {str(path.parent)!r}")
    for kind in (SUBNET, SUPERNET):
        if (path / kind.meta_file).is_file():
            return _checked(path, kind)
    if (path / "run.json").is_file():
        from osf.search.card import read_search_record
        from osf.search.run import read_run

        spec = read_run(path)  # a damaged run.json is named
        subnets = _saved_children(path, SUBNET)
        if not subnets:
            raise ValueError(f"{str(path)!r} is a search run folder with no extracted subnet in it: extract one first "
                             f"(osf extract {path} --best --out {path / 'best'}) and push that")
        if len(subnets) > 1:
            names = ", ".join(p.name for p in subnets)
            raise ValueError(f"{str(path)!r} holds {len(subnets)} extracted subnets ({names}); a repository holds "
                             f"one model: push one of them (osf push {subnets[0]} --repo-id ...)")
        record = read_search_record(subnets[0])
        if record is not None and record.get("study_name") != spec.get("study_name"):
            raise ValueError(f"the subnet in {str(subnets[0])!r} was extracted from another search (study "
                             f"{record.get('study_name')!r}, this run's is {spec.get('study_name')!r}): its card would "
                             "describe the wrong run; push its folder itself, or extract this run's subnet")
        return _checked(subnets[0], SUBNET)
    inside = [p for kind in (SUBNET, SUPERNET) for p in _saved_children(path, kind)]
    hint = f"; it holds {', '.join(repr(str(p)) for p in inside[:3])}: push that" if inside else ""
    raise ValueError(f"{str(path)!r} is not a subnet folder (osf_subnet.json), a supernet checkpoint folder "
                     f"(osf_supernet.json) or a search run folder (run.json){hint}")


def _saved_children(path: Path, kind: SavedKind) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / kind.meta_file).is_file())


def _checked(folder: Path, kind: SavedKind) -> Source:
    read_meta(folder / kind.meta_file, kind)  # a damaged or foreign description is named
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{str(folder)!r} has {kind.meta_file} but no weights (*.safetensors): the folder is "
                         f"incomplete; save the {kind.noun} again with {kind.writer}")
    return Source(folder, kind)


def prepare_folder(source: Source | str | Path, repo_id: str, out_dir: str | Path | None = None, *,
                   keep_card: bool = False) -> Path:
    """The exact folder :func:`push` uploads: every file of the source folder (hidden files and
    ``*.tmp`` left out; files of 1 MiB or more hard-linked where the file system allows, the rest
    copied) and the model card ``README.md`` written for ``repo_id`` (with ``keep_card``, the
    folder's own ``README.md`` instead)."""
    from osf.search.card import write_card

    if not isinstance(source, Source):
        source = find_source(source)
    staged = _out_folder(out_dir, source.folder)
    try:
        for f in _files(source.folder):
            rel = f.relative_to(source.folder)
            if rel.as_posix() in _SKIPPED and not keep_card:
                continue
            target = staged / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.stat().st_size >= LINK_MIN_BYTES:  # weights: linked, not copied (nobody edits them by hand)
                try:
                    os.link(f, target)
                    continue
                except OSError:  # another file system, or links not allowed
                    pass
            shutil.copy2(f, target)
        if not keep_card:
            write_card(staged, repo_id)
    except BaseException:
        if out_dir is None:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def check_own_card(folder: Path) -> None:
    """``keep_card``: the folder must hold a ``README.md`` whose YAML metadata block parses."""
    from osf.search.card import split_card

    card = folder / "README.md"
    if not card.is_file():
        raise ValueError(f"--keep-card: {str(folder)!r} has no README.md to keep; leave --keep-card out to write the "
                         "model card")
    try:
        split_card(card.read_text())
    except Exception as e:  # yaml's errors, or a block without its closing line
        raise ValueError(f"--keep-card: the metadata of {str(card)!r} is not valid YAML "
                         f"({' '.join(str(e).split())[:200]}); fix it, or leave --keep-card out") from None


def _files(folder: Path) -> list[Path]:
    out = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or f.name.endswith(".tmp") or not f.is_file():
            continue
        out.append(f)
    return out


def _out_folder(out_dir: str | Path | None, source: Path) -> Path:
    if out_dir is None:
        return Path(tempfile.mkdtemp(prefix="osf-push-"))
    if not isinstance(out_dir, (str, Path)) or (isinstance(out_dir, str) and not out_dir.strip()):
        raise ValueError(f"out_dir must be a folder path, got {out_dir!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out dir {str(out)!r} is a file; give a new or empty folder for the prepared upload")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"out dir {str(out)!r} is not empty; give a new or empty folder (the prepared upload must "
                         "hold only what is pushed)")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ValueError(f"out dir {str(out)!r} is inside the folder being pushed {str(source)!r}; give a folder "
                         "outside it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_online() -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ValueError("HF_HUB_OFFLINE is set, so nothing can be sent to the Hub: unset it to push, or prepare the "
                         "folder only with a dry run (--dry-run)")


def resolve_token(token: str | None) -> str:
    """``token``, else ``HF_TOKEN`` / the saved ``hf auth login`` token; a one-line error when there is none."""
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ValueError("token must be a non-empty string (a Hugging Face access token with write access), or None "
                         "to use HF_TOKEN or the saved login")
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise ValueError("no Hugging Face token: log in with `hf auth login`, or set HF_TOKEN to a token with write "
                         "access (a dry run, --dry-run, needs none)")
    return token


def upload(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
           commit_message: str = "Upload with OSF") -> str:
    """Create ``repo_id`` (if missing) and upload ``folder`` to it in one commit; returns the repository URL.

    The endpoint is ``HF_ENDPOINT`` as set when this is called (else huggingface_hub's default).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    where = api.endpoint
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {401: "the token is invalid or expired: log in again (hf auth login) or set HF_TOKEN",
                403: f"the token may not write to {repo_id!r}: use a token with write access to that namespace"}.get(
            status, "see the Hub's answer above")
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PushError(f"the Hub at {where} refused the push to {repo_id!r} ({first}); {hint}") from None
    except Exception as e:
        if not (isinstance(e, OSError) or _is_transport_error(e)):
            raise
        raise PushError(f"cannot reach the Hub at {where} ({type(e).__name__}: {' '.join(str(e).split())}); check "
                        "the network or HF_ENDPOINT") from None
    return str(url)


def _is_transport_error(e: BaseException) -> bool:
    """A connection error of the HTTP client huggingface_hub uses (refused, DNS, TLS, time-out)."""
    return type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def folder_files(folder: str | Path) -> list[tuple[str, int]]:
    """``(relative path, size in bytes)`` of every file under ``folder``, sorted: what a dry run prepared."""
    folder = Path(folder)
    return [(f.relative_to(folder).as_posix(), f.stat().st_size) for f in sorted(folder.rglob("*")) if f.is_file()]
