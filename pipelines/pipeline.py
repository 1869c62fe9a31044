"""A pipeline: a checked ``PipelineSpec`` turned into steps over shared fallback chains.

    pipeline = Pipeline.from_yaml("capital-quiz.yaml")   # settings from the profile
    await pipeline.arun({"country": "France"})
    # {"country": "France", "answer": "Paris", "_meta": {...}}
    pipeline.run_batch([{"country": "France"}, {"country": "Peru"}])  # a Row (output or error) each

Building checks everything that needs no engine call: template syntax and
variables (only declared input fields and earlier outputs), chain and engine
names, step order, post-processor options and allowed modules. Every error
names the file, line and key.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferline.core.configs import GuidedDecodingParams, InferenceConfig
from inferline.core.portal import portal
from inferline.errors import ConfigurationError, InputError
from inferline.pipelines.postprocess import build_processor
from inferline.pipelines.spec import (
    ChoiceSpec,
    GenerateSpec,
    JsonSchemaSpec,
    PipelineSpec,
    TemplateSpec,
)
from inferline.pipelines.steps import GenerateStep, PostprocessStep, Row, TemplateStep, alive
from inferline.pipelines.template import PromptTemplate

if TYPE_CHECKING:
    from inferline.pipelines.catalog import ChainCatalog
    from inferline.settings.model import InferlineSettings

META = "_meta"  # output key with served_by, attempts and usage


class Pipeline:
    def __init__(self, spec: PipelineSpec, chains: ChainCatalog, *,
                 allowed_modules: Sequence[str] = ()) -> None:
        self.spec, self.name = spec, spec.name
        self.steps = _compile(spec, chains, allowed_modules)
        self.chains = [s.chain for s in self.steps if isinstance(s, GenerateStep)]

    @classmethod
    def from_yaml(cls, path: str | Path, *, chains: ChainCatalog | None = None,
                  settings: InferlineSettings | None = None) -> Pipeline:
        """Read and check ``path``; chains default to those of ``settings`` (or the profile's)."""
        if settings is None:
            from inferline.settings import load_settings

            settings = load_settings()
        if chains is None:
            from inferline.engines.catalog import EngineCatalog
            from inferline.pipelines.catalog import ChainCatalog

            chains = ChainCatalog(settings.chains, EngineCatalog(settings.engines))
        return cls(PipelineSpec.from_yaml(path), chains,
                   allowed_modules=settings.pipelines.allowed_modules)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={[type(s).__name__ for s in self.steps]})"

    # -- running ----------------------------------------------------------------

    async def arun_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Row]:
        """Every row through every step; a failed row keeps its error, the others go on."""
        batch = [self._row(i, row) for i, row in enumerate(rows)]
        for step in self.steps:
            await step(batch)
        for row in alive(batch):  # its output: the fields plus _meta
            row.fields[META] = row.meta()
            row.output = row.fields
        return batch

    async def arun(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One row's output, or its error raised."""
        [outcome] = await self.arun_batch([row])
        if outcome.error is not None:
            raise outcome.error
        assert outcome.output is not None
        return outcome.output

    def run_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Row]:
        return portal.run(self.arun_batch(rows))

    def run(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return portal.run(self.arun(row))

    def _row(self, index: int, row: Any) -> Row:
        if not isinstance(row, Mapping):
            return Row(index, {}, InputError(f"expected a JSON object, got {type(row).__name__}"))
        missing = [f for f in self.spec.input.fields if f not in row]
        if missing:
            return Row(index, dict(row), InputError(
                f"missing input field(s) {', '.join(map(repr, missing))} (pipeline {self.name!r})"))
        return Row(index, dict(row))


def _compile(spec: PipelineSpec, chains: ChainCatalog, allowed_modules: Sequence[str]) -> list[Any]:
    """The spec's steps, built and cross-checked."""
    known: set[str] = set(spec.input.fields)
    steps: list[Any] = []
    last_generate: GenerateStep | None = None
    prompt_ready = False
    for i, step in enumerate(spec.steps):
        where = ("steps", i, step.kind)
        if step.template is not None:
            steps.append(_template(spec, step.template, known, where))
            prompt_ready = True
        elif step.generate is not None:
            if not prompt_ready:
                raise spec.error("a generate step needs a template step before it", *where)
            last_generate = _generate(spec, step.generate, chains, where)
            known.add(last_generate.output)
            steps.append(last_generate)
            prompt_ready = False
        else:
            if last_generate is None:
                raise spec.error("a postprocess step needs a generate step before it", *where)
            steps.append(_postprocess(spec, step.postprocess or [], last_generate,
                                      allowed_modules, where))
    if last_generate is None:
        raise spec.error("a pipeline needs at least one generate step", "steps")
    if spec.output not in known - set(spec.input.fields):
        raise spec.error(f"no generate step writes the output field {spec.output!r}", "output")
    return steps


def _template(spec: PipelineSpec, tpl: TemplateSpec, known: set[str],
              where: tuple[Any, ...]) -> TemplateStep:
    compiled = {}
    for key in ("system", "user"):
        source = getattr(tpl, key)
        if source is None:
            continue
        try:
            compiled[key] = PromptTemplate(source, name=".".join(map(str, (*where, key))))
        except ConfigurationError as exc:
            raise spec.error(exc.message, *where, key) from None
        for name in sorted(compiled[key].variables - known):
            hint = next(iter(difflib.get_close_matches(name, sorted(known), 1)), None)
            declared = ", ".join(sorted(known)) or "none"
            raise spec.error(f"template uses {name!r}, which is neither a declared input field "
                             f"nor an earlier output (known: {declared})", *where, key, hint=hint)
    return TemplateStep(compiled["user"], compiled.get("system"))


def _generate(spec: PipelineSpec, gen: GenerateSpec, chains: ChainCatalog,
              where: tuple[Any, ...]) -> GenerateStep:
    known = [*chains.names(), *chains.engines.names()]
    if gen.chain is not None:
        if gen.chain not in chains.names():
            hint = next(iter(difflib.get_close_matches(gen.chain, chains.names(), 1)), None)
            raise spec.error(f"unknown chain {gen.chain!r}", *where, "chain", hint=hint)
        chain = chains.get(gen.chain, cache=gen.cache)
    else:
        members = gen.engines or []
        for j, member in enumerate(members):
            if member not in known:
                hint = next(iter(difflib.get_close_matches(member, known, 1)), None)
                raise spec.error(f"unknown engine or chain {member!r}", *where, "engines", j,
                                 hint=hint)
        if len(set(members)) != len(members):
            raise spec.error("an engine is listed twice", *where, "engines")
        chain = chains.inline(members, cache=gen.cache)
    return GenerateStep(chain, InferenceConfig(generation=gen.generation),
                        gen.output or spec.output)


def _postprocess(spec: PipelineSpec, processors: Sequence[Any], generate: GenerateStep,
                 allowed_modules: Sequence[str], where: tuple[Any, ...]) -> PostprocessStep:
    built = []
    for j, proc in enumerate(processors):
        try:
            built.append(build_processor(proc, name=f"{'.'.join(map(str, where))}.{j}",
                                         allowed_modules=allowed_modules))
        except ConfigurationError as exc:
            raise spec.error(exc.message, *where, j,
                             *(exc.key.split(".") if exc.key else ())) from None
        if getattr(proc.options, "constrain", False):
            generation = generate.config.generation
            if generation.guided_decoding is not None:
                raise spec.error("the generate step already sets generation.guided_decoding",
                                 *where, j, proc.kind, "constrain")
            generate.config = InferenceConfig(generation=generation.model_copy(
                update={"guided_decoding": _guided(proc.options)}))
    reask = max((getattr(p.options, "reask", 0) for p in processors), default=0)
    return PostprocessStep(built, generate, reask)


def _guided(options: JsonSchemaSpec | ChoiceSpec) -> GuidedDecodingParams:
    """What ``constrain: true`` asks of the engines: best effort, so an engine that cannot
    constrain still answers, and validation (with its re-asks) stays the net."""
    if isinstance(options, JsonSchemaSpec):
        return GuidedDecodingParams(json_schema=options.json_schema, required=False)
    return GuidedDecodingParams(choice=list(options.options), required=False)
