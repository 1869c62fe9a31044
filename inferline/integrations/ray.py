"""``inferline run --backend ray``: a pipeline over a JSONL file on a Ray cluster, with the
fallback chain inside every worker, writing what ``inferline run`` writes.

    from inferline.integrations.ray import run_file
    summary = run_file("capital-quiz", "rows.jsonl", "out.jsonl", settings="deploy.yaml",
                       address="auto", workers=4)
    print("\\n".join(summary.lines()))

Ray Data reads the rows (byte spans of the file, numbered as the local runner numbers
them) and sends them through a pool of actors (``map_batches(PipelineWorker,
concurrency=workers)``). Each actor builds the container and the pipeline once, from the
settings and pipeline the driver resolved, and runs each batch of ``batch_size`` rows as one
wave: template -> generate through the fallback chain -> post-process. A Ray Data block (one
task of an actor) holds many batches, up to ``BLOCK_ROWS`` rows but at least
``BLOCKS_PER_ACTOR`` blocks per actor: Ray's cost per task is paid once per block, not once
per wave. An actor that dies is restarted by Ray and its block is run again.

Resumable by key, as the local runner is (not Ray Data's checkpointing): the driver streams
the actors' results (``iter_batches``) and appends each row's line, with its ``_row``, to
the output file, flushed line by line; failed rows go to stderr and the errors file. A
rerun reads the rows already written and leaves them out of the read, so every row is
written exactly once across driver and worker crashes; a block that ran twice (its actor
died after answering) is written once. Lines come in the order batches finish: ``_row``
gives the input order.

Resources follow the chain (``actor_resources``): a GPU per actor when a chain leads with
a local engine on a GPU, a CPU per actor when an engine of a chain runs in process, and a
quarter of a CPU when every engine is remote (the actor only waits on the network).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from inferline.core.portal import portal
from inferline.core.types import dumps_row
from inferline.errors import ConfigurationError, InputError
from inferline.pipelines.runner import ROW, Summary, _Sink, failure_report, parse_line

if TYPE_CHECKING:
    import pyarrow as pa

    from inferline.pipelines.fallback import FallbackChain
    from inferline.pipelines.pipeline import Pipeline
    from inferline.pipelines.spec import PipelineSpec
    from inferline.pipelines.steps import Row
    from inferline.settings.model import InferlineSettings

REMOTE_CPUS = 0.25  # what an actor over remote engines only reserves
BLOCK_ROWS = 4096  # the most rows in one Ray Data block (one read task, one actor task)
BLOCKS_PER_ACTOR = 4  # the fewest blocks per actor, so that the last ones spread evenly


def run_file(pipeline: str, input_path: str | Path, output_path: str | Path | None = None, *,
             settings: str | Path | None = None, env: str | None = None,
             address: str | None = None, workers: int | None = None, batch_size: int = 64,
             restart: bool = False, errors_path: str | Path | None = None,
             stdout: IO[str] = sys.stdout) -> Summary:
    """Run ``pipeline`` (a YAML file or a name) over ``input_path`` on Ray.

    ``address``: a cluster (``auto``, ``ray://host:10001``, ``host:6379``); without one, the
    Ray this process already joined, or a new local one (stopped at the end). ``workers``:
    actors (default: one per GPU for a GPU chain, else one per CPU of the cluster). Failed
    rows reach the driver as text, so ``summary.first_error`` stays None.
    """
    ray = _import_ray()
    if not Path(input_path).is_file():
        raise ConfigurationError("cannot read input file", file=str(input_path))
    resolved, built = portal.run(_resolve(pipeline, settings, env))
    joined = _connect(ray, address)
    try:
        return _run(ray, resolved, built, str(input_path), output_path, workers=workers,
                    batch_size=batch_size, restart=restart, errors_path=errors_path,
                    stdout=stdout)
    finally:
        if joined:
            ray.shutdown()


def actor_resources(chains: Sequence[FallbackChain], cluster_gpus: float) -> dict[str, float]:
    """What Ray reserves for one actor running ``chains`` (``num_cpus``, ``num_gpus``)."""
    if any(_on_gpu(chain.engines[0], cluster_gpus) for chain in chains):
        return {"num_cpus": 1, "num_gpus": 1}
    if any(getattr(e, "is_local", False) for chain in chains for e in chain.engines):
        return {"num_cpus": 1}
    return {"num_cpus": REMOTE_CPUS}


def _on_gpu(engine: Any, cluster_gpus: float) -> bool:
    """Whether a local engine's options put it on a GPU ("auto": if the cluster has one)."""
    if not getattr(engine, "is_local", False):
        return False
    options: Any = getattr(engine, "options", None)
    if hasattr(options, "device_map"):  # transformers: unset is "auto"
        device = options.device_map or engine.model_params.device_map or "auto"
    elif hasattr(options, "n_gpu_layers"):  # llama.cpp: only with layers offloaded
        device = "auto" if options.n_gpu_layers else "cpu"
    else:  # vLLM
        device = getattr(options, "device", "auto")
    if device == "auto":
        return cluster_gpus > 0
    return isinstance(device, dict) or str(device).startswith("cuda")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigurationError(f"the ray backend needs Ray ({exc.name} is missing): "
                                 "pip install 'inferline[ray]'", key="backend") from None
    return ray


async def _resolve(pipeline: str, settings: str | Path | None,
                   env: str | None) -> tuple[InferlineSettings, Pipeline]:
    """The settings and the checked pipeline, as the driver sees them (nothing loaded)."""
    from inferline.containers import running

    async with running(settings, env=env) as container:
        return container.settings(), container.pipelines().load(pipeline)


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address``, or start a local Ray on 127.0.0.1; False if already joined."""
    if ray.is_initialized():
        return False
    if not address:
        init_local()
        return True
    local = urlsplit(f"//{address}").hostname in LOOPBACK  # a cluster init_local started
    with single_machine() if local else contextlib.nullcontext():
        ray.init(address=address, logging_level=logging.WARNING)
    return True


LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Ray's single-machine mode (its default on macOS and Windows): the node's address is
#: 127.0.0.1. Elsewhere Ray swaps a 127.0.0.1 given as ``_node_ip_address`` (or
#: ``ray start --node-ip-address``) for the host's own address, and listens on every interface.
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_local(**options: Any) -> None:
    """``ray.init(**options)`` of a new local Ray (no dashboard) whose GCS, raylet, workers
    and agents listen on 127.0.0.1 only; other drivers join it at its 127.0.0.1 address.

    Its workers run at the driver's priority: Ray's default niceness of 15 for workers
    starves the actors on a machine that other work keeps busy."""
    ray = _import_ray()
    with single_machine():
        ray.init(**{"include_dashboard": False, "logging_level": logging.WARNING,
                    "_system_config": {"worker_niceness": 0}, **options})


@contextlib.contextmanager
def single_machine() -> Iterator[None]:
    """Ray's single-machine mode while Ray starts or joins a cluster (its processes keep it)."""
    from ray._private import ray_constants

    before = os.environ.get(SINGLE_MACHINE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE] = "0"  # for the processes Ray starts now (and their children)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: for this process
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before[1]
        if before[0] is None:
            del os.environ[SINGLE_MACHINE]
        else:
            os.environ[SINGLE_MACHINE] = before[0]


def _run(ray: Any, settings: InferlineSettings, pipeline: Pipeline, input_path: str,
         output_path: str | Path | None, *, workers: int | None, batch_size: int,
         restart: bool, errors_path: str | Path | None, stdout: IO[str]) -> Summary:
    from inferline.core.batch import progress_bar
    from inferline.integrations._ray_source import JsonlRowsDatasource, scan

    began = time.monotonic()
    resources = actor_resources(pipeline.chains, ray.cluster_resources().get("GPU", 0))
    actors = workers or default_workers(ray, resources)
    with _Sink(output_path, errors_path, restart, stdout) as sink:
        total, spans = scan(input_path, sink.done, span_rows=batch_size)
        todo = sum(s.todo for s in spans)
        block_rows = block_size(todo, batch_size, actors)
        if block_rows > batch_size:
            total, spans = scan(input_path, sink.done, span_rows=block_rows)
        summary = Summary(rows=total, skipped=total - todo)
        bar = progress_bar(total, summary.skipped, desc=pipeline.name)
        if spans:
            ds = _dataset(ray, JsonlRowsDatasource(input_path, spans, block_rows), settings,
                          pipeline, resources, actors=actors, batch_size=batch_size)
            written = bytearray(total)  # rows written by this run: a batch run twice counts once
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                bar.update(_write(block, sink, summary, written))
        bar.close()
    summary.seconds = time.monotonic() - began
    return summary


def block_size(todo: int, batch_size: int, actors: int) -> int:
    """Rows per block: whole batches, at most ``BLOCK_ROWS``, ``BLOCKS_PER_ACTOR`` each."""
    batches = todo // (batch_size * actors * BLOCKS_PER_ACTOR)
    return batch_size * max(1, min(batches, BLOCK_ROWS // batch_size))


def _dataset(ray: Any, source: Any, settings: InferlineSettings, pipeline: Pipeline,
             resources: dict[str, float], *, actors: int, batch_size: int) -> Any:
    """The rows of ``source`` through a pool of ``PipelineWorker`` actors, as results."""
    # Ray Data's progress bars off (ours is drawn) and its start/finish notes unlogged
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "disabled"
    pool = ray.data.ActorPoolStrategy(size=actors)
    # reading a span is light; and with 0 CPUs it never waits for the actors' CPUs
    rows = ray.data.read_datasource(source, num_cpus=0)
    return rows.map_batches(PipelineWorker, batch_size=batch_size, batch_format="pyarrow",
                            fn_constructor_args=(settings, pipeline.spec, source.path),
                            compute=pool, **resources)


def default_workers(ray: Any, resources: dict[str, float]) -> int:
    """Actors when ``--workers`` is not given: one per GPU for a chain on GPUs; one per
    machine for a local engine on CPUs (llama.cpp and torch use every core of theirs, so
    two on one machine slow each other down many times over); one per CPU otherwise."""
    cluster = ray.cluster_resources()
    if "num_gpus" in resources:
        return max(1, int(cluster.get("GPU", 1)))
    if resources["num_cpus"] >= 1:
        return max(1, sum(1 for node in ray.nodes() if node["Alive"]))
    return max(1, int(cluster.get("CPU", 1)))


#: the columns an actor sends back, one value per row
COLUMNS = ("_row", "ok", "out", "notice", "served_by", "costs", "prompt_tokens",
           "completion_tokens")


def _write(block: pa.Table, sink: _Sink, summary: Summary, written: bytearray) -> int:
    """Write one block of results; returns how many rows it wrote."""
    count = 0
    for index, ok, out, notice, served_by, costs, prompt, completion in zip(
            *(block.column(name).to_pylist() for name in COLUMNS), strict=True):
        if written[index]:
            continue
        written[index] = 1
        count += 1
        summary.engines.update(served_by)
        for engine, usd in zip(served_by, costs, strict=True):
            summary.costs[engine] = summary.costs.get(engine, 0.0) + usd
        summary.tokens.update(prompt_tokens=prompt, completion_tokens=completion)
        if ok:
            summary.succeeded += 1
            sink.write_line(out)
        else:
            summary.failed += 1
            sink.report(notice, out)
    return count


class PipelineWorker:
    """A Ray actor: builds the container and the pipeline once; each call runs one wave.

    Each result row is ``COLUMNS``: its output line (``_row`` included) or, failed, its
    errors-file record and stderr notice; the engine and cost of each generate call, and
    its tokens.
    """

    def __init__(self, settings: InferlineSettings, spec: PipelineSpec, path: str) -> None:
        from dependency_injector import providers

        from inferline.containers import Container, started
        from inferline.pipelines.pipeline import Pipeline

        container = Container()
        container.settings.override(providers.Object(settings))
        container.logging.init()
        self._stack = contextlib.AsyncExitStack()
        portal.run(self._stack.enter_async_context(started(container)))
        self.path = path
        self.pipeline = Pipeline(spec, container.chains(),
                                 allowed_modules=settings.pipelines.allowed_modules)
        for chain in self.pipeline.chains:
            chain.plan()  # logs each engine that cannot run on this worker, and why

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [(index, lineno, _parse(self.path, lineno, text)) for index, lineno, text in zip(
            *(batch.column(name).to_pylist() for name in (ROW, "line", "text")), strict=True)]
        return portal.run(self._wave(items))

    async def _wave(self, items: list[tuple[int, int, Any]]) -> pa.Table:
        import pyarrow as pa

        good = [item for item in items if not isinstance(item[2], InputError)]
        outcomes = await self.pipeline.arun_batch([row for _, _, row in good])
        done = dict(zip((index for index, _, _ in good), outcomes, strict=True))
        results = [_result(*item, done.get(item[0])) for item in items]
        return pa.table({name: list(column) for name, column in zip(
            COLUMNS, zip(*results, strict=True), strict=True)})

    def __del__(self) -> None:  # Ray Data drops the actor's UDF on a clean shutdown
        # at interpreter exit the portal's thread is frozen (it would wait forever), and
        # the engines' own exit hook has closed their sessions
        if hasattr(self, "_stack") and not sys.is_finalizing():
            portal.run(self._stack.aclose())  # closes every engine built


def _parse(path: str, lineno: int, raw: bytes) -> Any:
    """The row of one raw input line (its ending read as text mode reads it), or its error."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InputError(f"{path}:{lineno}: not UTF-8 text ({exc.reason})")
    body = text.rstrip("\r\n")
    return parse_line(path, lineno, body + "\n" if len(body) < len(text) else body)


def _result(index: int, lineno: int, row: Any, outcome: Row | None) -> tuple[Any, ...]:
    """One row's ``COLUMNS``; ``outcome`` is None for a line that is not a row."""
    if outcome is None:
        notice, record = failure_report(index, lineno, row, None)
        return index, False, record, notice, [], [], 0, 0
    if outcome.error is not None:
        notice, out = failure_report(index, lineno, outcome.error, row)
    else:
        notice, out = "", dumps_row({**outcome.output, ROW: index})  # type: ignore[dict-item]
    usage = outcome.usage
    return (index, outcome.error is None, out, notice, outcome.served_by,
            [call.cost.usd for call in outcome.calls], usage.prompt_tokens,
            usage.completion_tokens)


__all__ = ["PipelineWorker", "actor_resources", "default_workers", "init_local", "run_file"]
