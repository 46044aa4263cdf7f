"""LLM back ends: the local back end (embedded SmolLM2, greedy) on short prompts, requests/minute,
and a cached rerun of the same batch vs the first run; plus the HTTP client's own overhead
against a loopback echo server (no model), sequential and with concurrency 4.

Usage: ``python benchmarks/bench_llm.py [--n 24] [--max-tokens 16] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from llm_server import ChatServer, echo_backend  # noqa: E402

from workbench.llm import LocalChatClient, OpenAIClient  # noqa: E402

TOPICS = ["the moon", "bread", "rain", "a cat", "music", "trees", "the sea", "coffee", "snow", "books",
          "bicycles", "the sun", "a river", "chess", "mountains", "tea", "birds", "a city", "winter", "clocks",
          "honey", "maps", "ships", "gardens", "stars", "glass", "wolves", "paper", "sand", "bridges"]


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Describe {TOPICS[i % len(TOPICS)]} in one sentence."}] for i in range(n)]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24, help="short prompts per run")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch = prompts(args.n)

    with tempfile.TemporaryDirectory() as tmp:
        client = LocalChatClient(cache=Path(tmp) / "cache")
        _, load_s = timed(lambda: client.model)
        client.chat([{"role": "user", "content": "warm up"}], max_tokens=4, cache=False)
        client.reset_usage()
        first, t_first = timed(lambda: client.map(batch, max_tokens=args.max_tokens, progress=False))
        u1 = client.usage
        again, t_again = timed(lambda: client.map(batch, max_tokens=args.max_tokens, progress=False))
        u2 = client.usage
        assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
        gen_tokens = sum(r.completion_tokens for r in first)
        print(f"\nLocal back end: embedded SmolLM2-135M-Instruct, {args.n} short prompts, "
              f"max_tokens={args.max_tokens}, greedy, {args.threads} torch thread(s) (load {load_s:.1f} s)")
        print(f"  first run      {t_first:8.2f} s   {60 * args.n / t_first:8.1f} requests/min   "
              f"{gen_tokens / t_first:6.1f} generated tokens/s   ({u1['requests']} requests, "
              f"{u1['prompt_tokens']} prompt + {u1['completion_tokens']} completion tokens)")
        print(f"  cached rerun   {t_again * 1000:8.2f} ms  {60 * args.n / t_again:8.0f} requests/min   "
              f"({u2['cache_hits']} cache hits, {u2['requests'] - u1['requests']} new requests)")
        print(f"  rerun / first  {t_again / t_first:.5f}x   (first / rerun: {t_first / t_again:,.0f}x faster)")
        print(f"  sample reply   {first[0].text!r}")

    n_http = 200
    with ChatServer(echo_backend) as srv:
        print(f"\nHTTP client overhead: OpenAIClient -> loopback echo server, {n_http} requests, cache off")
        for conc in (1, 4):
            c = OpenAIClient(srv.url, "echo", cache=None, concurrency=conc)
            msgs = [[{"role": "user", "content": f"ping {i}"}] for i in range(n_http)]
            c.map(msgs[:10], progress=False)
            _, t = timed(lambda c=c, msgs=msgs: c.map(msgs, progress=False))
            print(f"  concurrency {conc}  {t / n_http * 1000:6.2f} ms/request   {n_http / t:7.0f} requests/s")


if __name__ == "__main__":
    main()
