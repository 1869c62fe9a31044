"""inferline: one interface over local and cloud LLM inference engines, with fallback pipelines.

    from inferline.inference import LlamaCppInferenceEngine
    from inferline.core.configs import ModelParams
    from inferline.core.types import Conversation

    engine = LlamaCppInferenceEngine(ModelParams(model_name="smollm2-135m"))
    print(engine.infer([Conversation.from_prompt("What is the capital of France?")])[0])

Heavy backends (torch, transformers, vllm, llama_cpp) are imported only when an
engine that needs them loads.
"""

__version__ = "0.1.0"
