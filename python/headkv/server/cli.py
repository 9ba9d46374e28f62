"""``headkv-server`` / ``python -m headkv.server``: flags in llama-server's spelling."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import Error


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="headkv-server", description="OpenAI-compatible server over headkv "
                                 "(/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics)")
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("--alias", default=None, help="model name clients use (default: the file name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("-np", "--parallel", type=int, default=1,
                    help="sequences served at once (each a context of its own today)")
    ap.add_argument("-c", "--ctx-size", type=int, default=None,
                    help="context per sequence in tokens (default 4096, or the training context if shorter; 0: the training context)")
    ap.add_argument("-t", "--threads", type=int, default=None,
                    help="CPU threads per sequence (default: half the CPUs shared among the sequences)")
    ap.add_argument("-b", "--batch-size", type=int, default=512, help="tokens per forward pass of a prompt")
    ap.add_argument("--prefill-chunk", type=int, default=None,
                    help="a joining request's full-cache prompt runs in chunks of this many tokens, each beside "
                         "the other sequences' decode step, so they keep generating (default: 64 on the CPU, "
                         "-b on a GPU; 0: the prompt in one piece)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda-fp32 or auto")
    ap.add_argument("--kv-method", default="full", help="full, snapkv, streaming, pyramidkv, adakv or headkv")
    ap.add_argument("--kv-budget", type=int, default=None, help="KV entries per KV head (compressing methods)")
    ap.add_argument("--scores", default=None, help="head-score file (headkv)")
    ap.add_argument("-ctk", "--cache-type-k", default=None, help="KV cache type of K (f16, q8_0, q4_0, f32)")
    ap.add_argument("-ctv", "--cache-type-v", default=None, help="KV cache type of V (f16, q8_0, q4_0, f32)")
    ap.add_argument("--api-key", default=os.environ.get("HEADKV_API_KEY"),
                    help="require 'Authorization: Bearer KEY' (default: $HEADKV_API_KEY; none: open)")
    ap.add_argument("--queue-size", type=int, default=64,
                    help="requests that may wait for a free sequence; more get 503")
    ap.add_argument("--queue-timeout", type=float, default=None,
                    help="seconds a request waits for a sequence at most before a 503 (default: no limit)")
    ap.add_argument("--log-level", default="info")
    return ap.parse_args(argv)


def build_pool(args):
    from ..pool import SequencePool
    kw = dict(n_ctx=args.ctx_size, n_threads=args.threads, n_batch=args.batch_size, device=args.device,
              kv_method=args.kv_method)
    if args.kv_budget is not None:
        kw["kv_budget"] = args.kv_budget
    if args.scores is not None:
        kw["scores"] = args.scores
    if args.cache_type_k is not None:
        kw["type_k"] = args.cache_type_k
    if args.cache_type_v is not None:
        kw["type_v"] = args.cache_type_v
    return SequencePool(args.model, args.parallel, max_queue=args.queue_size, queue_timeout=args.queue_timeout,
                        prefill_chunk=args.prefill_chunk, **kw)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn
        from .app import create_app
    except ImportError as e:
        print(f"headkv-server: error: {e} (pip install 'headkv[server]')", file=sys.stderr)
        return 1
    try:
        pool = build_pool(args)
    except (Error, OSError) as e:
        print(f"headkv-server: error: {e}", file=sys.stderr)
        return 1
    app = create_app(pool, model_id=args.alias, api_key=args.api_key)
    print(f"headkv-server: {args.model} on {args.device}, {args.parallel} sequence(s) of "
          f"{int(pool.model.n_ctx)} tokens, kv {args.kv_method}; http://{args.host}:{args.port}/v1", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)  # SIGINT/SIGTERM: graceful
    finally:
        pool.close()
    return 0
