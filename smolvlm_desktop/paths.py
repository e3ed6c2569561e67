"""Where the app keeps things on the user's machine, and how a model name becomes a folder.

All locations come from platformdirs so that the app behaves like a native citizen on each OS.
Tests and portable installs redirect them with environment variables instead of monkeypatching.
"""

from __future__ import annotations

import logging
import json
import os
import stat
from pathlib import Path

from platformdirs import user_cache_path, user_config_path, user_data_path

APP_NAME = "SmolVLM Desktop"
APP_ID = "smolvlm-desktop"
DEMO_MODEL_NAME = "demo"
# Model kinds: chat models (SmolVLM) answer questions; embedding models (CLIP, SigLIP) turn
# images and texts into vectors for search by meaning. config.json's model_type tells them apart.
CHAT, EMBEDDING = "chat", "embedding"
EMBEDDING_MODEL_TYPES = ("clip", "siglip")


# The data folder holds the private library (prompts, captions, chats) and the logs: only its
# owner may read it. Files in it are created 0600 as well, in case the folder is opened up later.
PRIVATE_DIR_MODE, PRIVATE_FILE_MODE = 0o700, 0o600
_log = logging.getLogger(__name__)


def data_dir() -> Path:
    """Models, the library database and job state. Override: SMOLVLM_DATA_DIR."""
    override = os.environ.get("SMOLVLM_DATA_DIR")
    return Path(override) if override else user_data_path(APP_ID, appauthor=False)


def config_dir() -> Path:
    """The settings file. Override: SMOLVLM_CONFIG_DIR."""
    override = os.environ.get("SMOLVLM_CONFIG_DIR")
    return Path(override) if override else user_config_path(APP_ID, appauthor=False)


def ort_cache_dir() -> Path:
    """ONNX Runtime's optimised copies of the graphs, so start-up does not redo the work.
    Disposable: deleting it only costs one slower start. Override: SMOLVLM_CACHE_DIR."""
    override = os.environ.get("SMOLVLM_CACHE_DIR")
    root = Path(override) if override else user_cache_path(APP_ID, appauthor=False)
    return root / "ort-cache"


def make_private(path: str | os.PathLike[str]) -> None:
    """Take group and other access away from an existing file or folder that has any, and
    say so once (a warning on stderr): other accounts must not read the library. The owner's
    own bits stay as they are (a folder the user made read-only stays read-only). POSIX only
    (Windows keeps a user's profile private by its ACLs). Missing paths are left alone."""
    if os.name == "nt":
        return
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not current & 0o077:
        return
    try:
        os.chmod(path, current & ~0o077)
    except OSError as exc:  # not the owner: say so, but never fail over it
        _log.warning("%s is open to other users (mode %o) and could not be made private: %s",
                     path, current, exc.strerror or exc)
        return
    _log.warning("%s was open to other users (mode %o); made it private (%o)",
                 path, current, current & ~0o077)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create the folder (and its missing parents, owner-only) if needed, and make the folder
    itself private."""
    folder = Path(path)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for parent in reversed(missing):  # a new data folder is private from its creation on
        parent.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    make_private(folder)
    return folder


def printable(text: str | os.PathLike[str]) -> str:
    """A path (or a message naming one) fit to print or store as text: the bytes of a file
    name that are not UTF-8 (held by Python as surrogates) shown escaped, b'\\xff' -> "\\xff"."""
    text = os.fspath(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no byte stands for (Windows names)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def private_opener(path: str, flags: int) -> int:
    """`open(..., opener=private_opener)`: a file it creates is 0600 from its first byte."""
    return os.open(path, flags, PRIVATE_FILE_MODE)


def models_dir() -> Path:
    return data_dir() / "models"


def pasted_dir() -> Path:
    """Pictures pasted from the clipboard: kept here so a chat about one can still find it;
    forgetting the image in the library deletes the copy."""
    return data_dir() / "pasted"


def library_path() -> Path:
    return data_dir() / "library.sqlite3"


def demo_model_dir() -> Path:
    """The tiny random-weight model shipped inside the package: its answers are noise."""
    return Path(__file__).resolve().parent / "data" / "tiny-smolvlm"


class ModelNotFoundError(LookupError):
    """No model matches what the user asked for; the message says what to do next."""


def default_model_file() -> Path:
    return models_dir() / "default.txt"


def demo_embedding_model_dir() -> Path:
    """The tiny random-weight CLIP shipped inside the package: its search results are noise."""
    return Path(__file__).resolve().parent / "data" / "tiny-clip"


def model_kind(folder: Path) -> str:
    """CHAT or EMBEDDING, from config.json's model_type (unreadable: CHAT, whose loader then
    says what is wrong)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return CHAT
    embedding = isinstance(config, dict) and config.get("model_type") in EMBEDDING_MODEL_TYPES
    return EMBEDDING if embedding else CHAT


def installed_models(kind: str | None = CHAT) -> list[Path]:
    """Folders under the models dir that look like model folders (have a config.json), of one
    kind (chat models by default: what the chat model chooser offers), or of any kind (None)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file()
                  and (kind is None or model_kind(p) == kind))


# The embedding model search by meaning uses when the user has not chosen one: OpenAI's CLIP
# ViT-B/32 (the smallest and fastest); SigLIP is the better one, picked with `models default`.
DEFAULT_EMBEDDING_MODEL = "clip-vit-base-patch32"


def default_embedding_file() -> Path:
    """Names the embedding model chosen with `models default` (or the model manager)."""
    return models_dir() / "default-embedding.txt"


def default_embedding_model_name() -> str | None:
    """The embedding model `index` and `search` use without --embedding-model: the one chosen
    with `models default NAME` while it is installed, else CLIP ViT-B/32 if installed, else
    the first installed one by name (None: none is installed). Vectors of two models never mix,
    so a choice that changed by accident (another model installed) would hide every image
    indexed so far: hence a choice that holds, not "the newest one"."""
    installed = [p.name for p in installed_models(EMBEDDING)]
    marker = default_embedding_file()
    chosen = marker.read_text(encoding="utf-8").strip() if marker.is_file() else ""
    for name in (chosen, DEFAULT_EMBEDDING_MODEL):
        if name in installed:
            return name
    return installed[0] if installed else None


def resolve_embedding_model(name_or_dir: str | None) -> Path:
    """--embedding-model (a folder, an installed name, or 'demo') -> a folder. Without it:
    SMOLVLM_EMBEDDING_MODEL, then default_embedding_model_name()."""
    wanted = name_or_dir or os.environ.get("SMOLVLM_EMBEDDING_MODEL")
    if wanted == DEMO_MODEL_NAME:
        return demo_embedding_model_dir()
    if wanted:
        as_path = Path(wanted).expanduser()
        folder = as_path if as_path.is_dir() else models_dir() / wanted
        if folder.is_dir() and model_kind(folder) == EMBEDDING:
            return folder
    default = None if wanted else default_embedding_model_name()
    if default is not None:
        return models_dir() / default
    names = ", ".join(p.name for p in installed_models(EMBEDDING)) or "none"
    raise ModelNotFoundError(
        (f"{wanted!r} is not an embedding model folder or installed embedding model "
         if wanted else "no embedding model is installed ")
        + f"(installed: {names}). Search by meaning needs one: run "
        f"`smolvlm-desktop models pull {DEFAULT_EMBEDDING_MODEL}`, or try the bundled noise model "
        f"with `--embedding-model {DEMO_MODEL_NAME}`.")


def default_model_name() -> str | None:
    """The name set by `models default NAME`, else the only installed model, else None."""
    marker = default_model_file()
    if marker.is_file():
        name = marker.read_text(encoding="utf-8").strip()
        if name:
            return name
    models = installed_models()
    return models[0].name if len(models) == 1 else None


def resolve_model(name_or_dir: str | None) -> Path:
    """Turn --model (a folder, an installed name, or 'demo') into a folder.

    Without --model: SMOLVLM_MODEL, then the installed default model.
    """
    wanted = name_or_dir or os.environ.get("SMOLVLM_MODEL") or default_model_name()
    if not wanted:
        raise ModelNotFoundError(
            "no model is installed. Run `smolvlm-desktop models pull SmolVLM-256M-Instruct`, "
            "import a folder with `smolvlm-desktop models import DIR`, "
            "or try the bundled noise model with `--model demo`."
        )
    if wanted == DEMO_MODEL_NAME:
        return demo_model_dir()
    as_path = Path(wanted).expanduser()
    if as_path.is_dir():
        return as_path
    installed = models_dir() / wanted
    if installed.is_dir():
        return installed
    names = ", ".join(p.name for p in installed_models()) or "none"
    raise ModelNotFoundError(
        f"no model folder or installed model named {wanted!r} (installed: {names}; "
        f"'{DEMO_MODEL_NAME}' is the bundled noise model)."
    )
