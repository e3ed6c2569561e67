"""`caption ... --write FORMAT --cluster ADDRESS`: the same batch, captioned by a Ray cluster.

Only the "generate" step moves (batch.CaptionStep): Ray Data reads the list of images, a pool
of actors each loads the model once and captions groups of GROUP_SIZE images decoded
together, exactly as one machine does, and the results (caption text, timings, or the error)
stream back to this process, the driver. The driver writes them through the very same
BatchRunner and library/ code as a local batch, so resume, atomic writes and "every image
once" are not re-implemented here.

    driver (this process)                      cluster nodes
    BatchRunner: job, skip check  --paths-->   Ray Data -> _CaptionActor (model loaded once)
    _finish: stage, write, mark  <--results--  caption text, timings, token ids, or error

Images are read where they are: every node must see the same paths (a shared filesystem);
an image a worker cannot read fails alone, with the node's name. The model is loaded from
its folder on each node when the node has it (same files, same sizes); an actor on a node
without it fetches its files through Ray's object store from the driver's node (which has
them: the driver read them), once per node. Nothing is asked of the nodes beforehand, so the
actors start at once.

A node that dies mid-job: Ray Data restarts its actor and retries its work elsewhere; if the
stream itself fails (e.g. results held on the dead node), the images not yet received are
streamed again, up to STREAM_RETRIES times. The runner ignores a second result for an image,
so none is written twice.

Privacy: Ray's usage statistics are switched off before Ray is imported
(RAY_USAGE_STATS_ENABLED=0); a local cluster starts with no dashboard, on 127.0.0.1, with a
token of this run only (see ray_module). This is the one module besides hub.py allowed a
network module (Ray), and only `caption --cluster` imports it. Ray is optional
(`pip install 'smolvlm-desktop[cluster]'`); without it `--cluster` is a one-line usage error.

Addresses are checked before anything is written (prepare): one TCP connection to the
address Ray would join (Ray itself would retry for minutes where nothing answers), so that a
wrong or dead address is a one-line usage error within REACH_TIMEOUT_S. `ray://` (Ray
Client) is refused there too: Ray Data does not run through Ray Client (the driver needs a
core worker of its own: ray-project/ray#42739, #48682), so the command has to run on a node
of the cluster (`--cluster auto`, e.g. sent there with `ray job submit`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import secrets
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .batch import GROUP_SIZE, Captioned, NotCaptioned, timings_from_dict
from .engine.files import expected_files, find_variants, load_model_files, prompt_graph_beside
from .engine.types import CancelToken, GenerationSettings, ModelInfo

STREAM_RETRIES = 3  # fresh streams of the images not yet received, after a failed one
# A cluster's head accepts a TCP connection in milliseconds, even across the world: an
# address silent for this long has no cluster behind it.
REACH_TIMEOUT_S = 5.0
MAX_BLOCKS = 1000  # Ray Data blocks the image list is cut into (a block is the retry unit)
# Ray Data's threads that call into Ray (see wait_for_ray_data), and how long a batch's end
# (or Ctrl+C) waits for them before shutting Ray down regardless.
RAY_DATA_THREADS = ("StreamingExecutor", "iter_threaded", "ray-data-metadata-prefetch")
SETTLE_TIMEOUT_S = 30.0


class ClusterError(OSError):
    """The cluster could not be reached, or kept failing. An OSError, so that the CLI reports
    it in one line (exit 1); the job stays unfinished and the same command resumes it."""


class ClusterUnavailable(Exception):
    """--cluster cannot work as given: Ray is not installed, or no cluster answers at the
    address, or it is a Ray Client address (a usage error: exit 2, nothing written)."""


def ray_module(address: str | None = None) -> Any:
    """Ray, imported with its usage statistics off; a ClusterUnavailable if not installed.

    For a local cluster (address "local") also, before the import (Ray reads them then):
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's switch for single-machine clusters, under which
    the node's address is 127.0.0.1, not the outward address Ray otherwise finds with a UDP
    "connect" to 8.8.8.8; and token authentication with a token of this run only, in the
    environment, where Ray would otherwise save one in ~/.ray/auth_token for good."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if address == "local":
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if "RAY_AUTH_MODE" not in os.environ:
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:
        import ray
    except ImportError:
        raise ClusterUnavailable(
            "--cluster needs Ray: pip install 'smolvlm-desktop[cluster]'") from None
    return ray


# --- the driver side ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterModel:
    """What the driver knows of the model without loading it: the workers load it.

    Stands in for a VisionLanguageModel where the CLI and BatchRunner only read `.info`."""

    info: ModelInfo
    folder: Path
    variant: str
    threads: int  # ONNX Runtime threads per actor, and the CPUs each actor reserves
    provider: str = "auto"

    @classmethod
    def describe(cls, folder: Path, variant: str | None, threads: int | None,
                 provider: str = "auto") -> "ClusterModel":
        files = load_model_files(folder)
        chosen = files.choose_variant(variant)
        info = ModelInfo(name=files.name, folder=str(files.folder), variant=chosen,
                         providers={}, tile_size=files.image_processor.tile_size,
                         longest_edge=files.image_processor.longest_edge,
                         image_seq_len=files.image_seq_len)
        return cls(info, Path(files.folder).resolve(), chosen, max(1, threads or 1), provider)


def model_listing(folder: Path, variant: str) -> dict[str, int]:
    """The files a worker needs for this variant (relative path -> size): everything but
    the other variants' graphs."""
    graphs = find_variants(folder).get(variant)  # a variant may read pictures with the fp32 vision graph
    wanted = [p.relative_to(folder).as_posix() for p in graphs.values()] if graphs else expected_files(variant)
    decoder = Path(next(f for f in wanted if "/decoder_model_merged" in f))
    wanted.append(prompt_graph_beside(decoder).as_posix())  # if present
    listing = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and (not rel.startswith("onnx/") or any(rel.startswith(w) for w in wanted)):
            listing[rel] = path.stat().st_size
    return listing


def has_model(folder: str | Path, listing: Mapping[str, int]) -> bool:
    """Does this machine hold the model folder, with the same files at the same sizes?"""
    try:
        return all((Path(folder) / rel).stat().st_size == size for rel, size in listing.items())
    except OSError:
        return False


class RayCaptionStep:
    """A batch.CaptionStep that captions on a Ray cluster (see the module docstring)."""

    def __init__(self, address: str, model: ClusterModel, prompt: str,
                 generation: GenerationSettings, group_size: int = GROUP_SIZE,
                 on_note: Callable[[str], None] | None = None) -> None:
        self.address = address
        self.model = model
        self.prompt = prompt
        self.generation = generation
        self.group_size = max(1, group_size)
        self.on_note = on_note or (lambda text: print(f"note: {text}", file=sys.stderr))

    def __call__(self, paths: Sequence[Path], cancel: CancelToken) -> Iterator[Captioned | NotCaptioned]:
        if not paths:
            return
        ray = ray_module(self.address)
        connect(ray, self.address)
        before = set(threading.enumerate())
        try:
            actor_args = self._actor_args(ray)
            # workers get absolute paths (their working folder is not ours); answers come
            # back under the path the runner knows
            remaining = {os.path.abspath(p): Path(p) for p in paths}
            for attempt in range(STREAM_RETRIES + 1):
                try:
                    for outcome in self._stream(ray, list(remaining), actor_args):
                        key = str(outcome.path)
                        if key in remaining:  # not one a failed stream delivered already
                            outcome.path = remaining.pop(key)
                            yield outcome
                        if cancel.cancelled:
                            return
                    return  # the stream ended: every image it was given came back
                except ray.exceptions.RayError as exc:
                    if attempt == STREAM_RETRIES:
                        raise ClusterError(f"the cluster kept failing: {one_line(exc)}") from None
                    self.on_note(f"the cluster lost work ({one_line(exc)}); "
                                 f"{len(remaining)} images go again")
        finally:
            try:
                wait_for_ray_data(before, SETTLE_TIMEOUT_S)
            finally:
                ray.shutdown()

    def _actor_args(self, ray: Any) -> dict[str, Any]:
        """What each actor is built from: where the model is, and the node to fetch its
        files from where it is not (this one's: see the module docstring)."""
        listing = model_listing(self.model.folder, self.model.variant)
        return {"folder": str(self.model.folder), "listing": listing,
                "source_node": ray.get_runtime_context().get_node_id(),
                "variant": self.model.variant, "threads": self.model.threads,
                "provider": self.model.provider,
                "prompt": self.prompt, "generation": self.generation}

    def _stream(self, ray: Any, paths: list[str], actor_args: dict[str, Any]
                ) -> Iterator[Captioned | NotCaptioned]:
        """One Ray Data pass over `paths`; outcomes in the order they finish."""
        quiet_ray_data()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows its own
        blocks = max(1, min(MAX_BLOCKS, math.ceil(len(paths) / self.group_size)))
        dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        actors = actor_count(ray, self.model.threads)
        captions = dataset.map_batches(
            _CaptionActor, fn_constructor_kwargs=actor_args, batch_size=self.group_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
            num_cpus=self.model.threads, batch_format="numpy")
        said = set()
        # prefetch_batches=0: a block is handed over when it is done (with prefetching, Ray
        # Data held each one until the next was done too)
        for batch in captions.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"):
            for i in range(len(batch["path"])):
                row = {key: column[i] for key, column in batch.items()}
                if row["node_note"] and row["node_note"] not in said:
                    said.add(row["node_note"])
                    self.on_note(str(row["node_note"]))
                yield outcome_from_row(row)


def wait_for_ray_data(before: set[threading.Thread], timeout: float) -> None:
    """Wait (up to `timeout` seconds in all) for the threads Ray Data started in this process
    since `before` to end, so that none is inside Ray while ray.shutdown takes it down.

    Why: a thread that calls into Ray while it shuts down makes Ray end the whole process
    at once with exit status 1 ("The core worker has already been shutdown"), so a Ctrl+C
    became a failure with no "interrupted" line. Ray Data's executor gives its own thread
    only 2 s to stop, which a loaded machine overran. Its threads are known by name; the
    block prefetcher is not among them: it sleeps until given blocks, and nothing gives it
    any once the stream is closed."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread not in before and thread.name.startswith(RAY_DATA_THREADS):
            thread.join(max(0.0, deadline - time.monotonic()))


def actor_count(ray: Any, threads: int) -> int:
    """Actors of `threads` CPUs each the cluster holds (each on one node); a ClusterError if
    no node has that many CPUs (an actor would wait for one for ever)."""
    per_node = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    if not any(cpus >= threads for cpus in per_node):
        raise ClusterError(f"no cluster node has {threads} CPUs for an actor of --threads "
                           f"{threads} (the largest has {max(per_node, default=0)})")
    return sum(cpus // threads for cpus in per_node)


def uses_ray_client(address: str) -> bool:
    """Would ray.init join through Ray Client: a ray:// address, given or (for auto) in
    RAY_ADDRESS? Ray's own rule (any "://")."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or address
    return "://" in address


def check_address(ray: Any, address: str) -> None:
    """ClusterUnavailable, within REACH_TIMEOUT_S, unless a server answers at the HOST:PORT
    ray.init would join for `address` (Ray's own resolution: auto is RAY_ADDRESS or the
    cluster this machine runs, 127.0.0.1 may become the machine's outward address)."""
    if uses_ray_client(address):
        raise ClusterUnavailable(
            f"--cluster {address}: Ray Data, which spreads the batch, does not work through Ray "
            "Client (ray://); run the command on a node of the cluster with --cluster auto "
            "(e.g. through `ray job submit`)")
    if address == "local":
        return
    try:
        target = ray._private.services.canonicalize_bootstrap_address_or_die(address)
    except ConnectionError:  # auto, and none found
        raise ClusterUnavailable("--cluster auto: no Ray cluster runs on this machine, and "
                                 "RAY_ADDRESS does not name one") from None
    except ValueError as exc:  # a malformed address
        raise ClusterUnavailable(f"--cluster {address}: {one_line(exc, named=False)}") from None
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        reason = ("connection refused" if isinstance(exc, ConnectionRefusedError)
                  else f"no answer within {REACH_TIMEOUT_S:.0f} s" if isinstance(exc, TimeoutError)
                  else one_line(exc, named=False))
        where = address if target == address else f"{address} ({target})"
        raise ClusterUnavailable(f"no Ray cluster answers at {where}: {reason}") from None


def connect(ray: Any, address: str) -> None:
    """ray.init for `--cluster ADDRESS`: "local" starts a private cluster on this machine
    (no dashboard, no usage statistics, on 127.0.0.1 only); anything else joins an existing
    one. Workers' logs stay on their nodes: stdout carries the answers (--json)."""
    try:
        if address == "local":  # "local", not None: RAY_ADDRESS must not turn it into a join
            ray.init(address="local", include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")
        else:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {one_line(exc)}") from None
    errors_to_stderr(ray)


def errors_to_stderr(ray: Any) -> None:
    """Ray prints the cluster's errors (a node died...) on the driver's stdout, which here
    carries the answers (--json): send them to stderr."""
    worker = ray._private.worker
    print_to_stdstream = getattr(worker, "print_to_stdstream", None)
    if print_to_stdstream is not None and not getattr(print_to_stdstream, "to_stderr", False):
        def to_stderr(data: dict, ignore_prefix: bool) -> None:
            print_to_stdstream({**data, "is_err": True}, ignore_prefix)

        to_stderr.to_stderr = True  # type: ignore[attr-defined]
        worker.print_to_stdstream = to_stderr


def quiet_ray_data() -> None:
    """Import Ray Data with its chatter on this process's stderr turned down (it sets up
    its loggers on import: the levels come after)."""
    import logging

    import ray.data  # noqa: F401

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"


def read_model_file(folder: str, rel: str) -> bytes:
    """One file of the model folder (run on the driver's node, for a node without it)."""
    return (Path(folder) / rel).read_bytes()


def outcome_from_row(row: Mapping[str, Any]) -> Captioned | NotCaptioned:
    path = Path(str(row["path"]))
    if row["error"]:
        return NotCaptioned(path, str(row["error"]))
    return Captioned(path, str(row["text"]), timings_from_dict(json.loads(row["timings"])),
                     json.loads(row["token_ids"]), json.loads(row["notes"]))


def one_line(exc: BaseException, named: bool = True) -> str:
    """The first line of an exception's message (Ray's run to pages), with its type's name."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first}" if named else first


# --- the worker side -------------------------------------------------------------------------


class _CaptionActor:
    """One model per actor, loaded once; captions the groups Ray Data hands it.

    Never raises for one image: an unreadable image or a failed caption comes back as that
    row's error, so the batch goes on."""

    def __init__(self, folder: str, listing: dict[str, int], source_node: str | None,
                 variant: str, threads: int, prompt: str, generation: GenerationSettings,
                 provider: str = "auto") -> None:
        from .engine.model import VisionLanguageModel

        self.node = platform.node()
        self.node_note = ""  # said once, with the first answers
        local = folder
        if not has_model(folder, listing):
            if source_node is None:
                raise FileNotFoundError(f"the model folder {folder} is not on cluster node {self.node}")
            local = unpack_model(listing, fetch_from(source_node, folder))
            self.node_note = (f"cluster node {self.node} has no copy of the model folder: its "
                              "files came through Ray's object store")
        self.model = VisionLanguageModel.load(local, variant=variant, provider=provider,
                                              threads=threads)
        self.prompt = prompt
        self.generation = generation

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from .engine.images import load_image
        from .engine.types import EngineError, Message

        paths = [str(p) for p in batch["path"]]
        rows = {p: {"path": p, "text": "", "error": "", "timings": "{}", "token_ids": "[]",
                    "notes": "[]", "node_note": self.node_note} for p in paths}
        self.node_note = ""
        ready = []
        for path in paths:
            if not os.path.exists(path):
                rows[path]["error"] = (f"not found on cluster node {self.node} "
                                       "(every node must see the images at the same path)")
                continue
            try:
                ready.append((path, load_image(path)))
            except EngineError as exc:
                rows[path]["error"] = str(exc)
        conversations = [[Message("user", self.prompt, images=(loaded.image,))] for _, loaded in ready]
        results = self.model.generate_many(conversations, self.generation) if ready else []
        for (path, loaded), result in zip(ready, results):
            if isinstance(result, EngineError):
                rows[path]["error"] = str(result)
            else:
                rows[path].update(text=result.text.strip(),
                                  timings=json.dumps(result.timings.as_dict()),
                                  token_ids=json.dumps([int(t) for t in result.token_ids]),
                                  notes=json.dumps(loaded.notes))
        return {key: [rows[p][key] for p in paths] for key in
                ("path", "text", "error", "timings", "token_ids", "notes", "node_note")}


def fetch_from(node: str, folder: str) -> Callable[[str], bytes]:
    """A file fetcher for unpack_model: each file read by a zero-CPU task pinned to `node`,
    its bytes carried by Ray's object store."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    reader = ray.remote(num_cpus=0)(read_model_file).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    return lambda rel: ray.get(reader.remote(folder, rel))


def unpack_model(listing: Mapping[str, int], fetch: Callable[[str], bytes],
                 root: Path | None = None) -> str:
    """The model's files (fetch: from the object store), in a folder of this node's temp dir
    named by their listing, so a second actor on the node reuses it. Written to a scratch
    folder and renamed into place, so a half-written copy is never loaded."""
    key = hashlib.sha256(repr(sorted(listing.items())).encode()).hexdigest()[:16]
    target = (root or Path(tempfile.gettempdir()) / "smolvlm-cluster-models") / key
    if has_model(target, listing):
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    for rel in listing:
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(fetch(rel))
    try:
        os.rename(scratch, target)
    except OSError:  # another actor on this node got there first
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return str(target)


# --- the CLI's entry -----------------------------------------------------------------------


def prepare(args: Any, prompt: str, generation: GenerationSettings) -> tuple[ClusterModel, RayCaptionStep]:
    """The model description and the caption step for `caption --cluster`; a UsageError
    (exit 2, one line, nothing written) without --write, without Ray, or where no cluster
    answers (see check_address)."""
    from .cli import UsageError
    from .paths import resolve_model

    if not args.write:
        raise UsageError("--cluster goes with --write (the captions are written as files)")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, not {args.threads}")
    try:
        check_address(ray_module(args.cluster), args.cluster)
    except ClusterUnavailable as exc:
        raise UsageError(str(exc)) from None
    model = ClusterModel.describe(resolve_model(args.model), args.variant, args.threads,
                                  args.provider)
    return model, RayCaptionStep(args.cluster, model, prompt, generation)
