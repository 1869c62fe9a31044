"""inferline.pipelines: fallback chains, and declarative pipelines over them.

    from inferline.pipelines import Pipeline, PipelineBuilder
    pipeline = Pipeline.from_yaml("capital-quiz.yaml")
    pipeline.run({"country": "France"})["answer"]
"""

from inferline.pipelines.breaker import CircuitBreaker
from inferline.pipelines.catalog import ChainCatalog, PipelineCatalog
from inferline.pipelines.fallback import FallbackChain
from inferline.pipelines.pipeline import Pipeline
from inferline.pipelines.runner import Summary, arun_file
from inferline.pipelines.spec import PipelineBuilder, PipelineSpec
from inferline.pipelines.steps import Row

__all__ = ["ChainCatalog", "CircuitBreaker", "FallbackChain", "Pipeline", "PipelineBuilder",
           "PipelineCatalog", "PipelineSpec", "Row", "Summary", "arun_file"]
