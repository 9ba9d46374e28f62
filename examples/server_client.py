"""Call headkv-server with the openai client: one answer, a streamed answer, several at once.

    headkv-server -m "$(python -c 'import headkv; print(headkv.example_model())')" -np 4 &
    python examples/server_client.py [--base-url http://127.0.0.1:8080/v1] [--api-key KEY]

Needs ``pip install openai`` (and ``pip install "headkv[server]"`` for the server).
"""
import argparse
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args(argv)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = client.models.list().data[0].id  # the GGUF's file name (or the server's --alias)

    def ask(question, **kw):
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                              max_tokens=args.max_tokens, temperature=0, **kw)

    print(ask("What is the capital of France?").choices[0].message.content)

    for chunk in ask("Name three planets.", stream=True):  # server-sent events, token by token
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    # Several requests at once: the server runs up to -np of them in parallel (one context each).
    questions = ["Say hello in Spanish.", "What is 3 + 4?", "Name a color.", "What do bees make?"]
    with ThreadPoolExecutor(len(questions)) as ex:
        answers = [r.choices[0].message.content for r in ex.map(ask, questions)]
    for q, a in zip(questions, answers):
        print(f"{q} -> {a!r}")

    # Server counters: requests, tokens generated, tokens/s, KV bytes per sequence and in total.
    req = urllib.request.Request(args.base_url.rsplit("/v1", 1)[0] + "/metrics",
                                 headers={"Authorization": f"Bearer {args.api_key}"})
    with urllib.request.urlopen(req) as r:
        m = json.load(r)
    print(f"{m['requests']} requests, {m['tokens_generated']} tokens, {m['tokens_per_second']:.1f} t/s, "
          f"KV {m['kv_bytes_total'] / 2**20:.1f} MiB")
    return answers


if __name__ == "__main__":
    main()
