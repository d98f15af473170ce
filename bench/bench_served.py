"""The `openai:` backend's client cost: `Judge.score` / `Judge.compare` against an instant loopback server, next to a
bare httpx client that sends one `max_tokens=1` request per item on the same prompts.

The server (a separate process, so it does not share our GIL) answers every prompt at once with the same top-k, so
what is measured is the client: prompt building, HTTP requests, JSON. Printed side by side in one run: items/s of
each, their ratio, and HTTP requests per scored item and per compared pair (counted by the server). Goals
(issue #14): >= 1.5x the bare client, <= 0.25 requests per scored item, <= 0.5 per compared pair.

    python bench/bench_served.py [--items 256] [--concurrency 8] [--profile]
    python bench/bench_served.py --quick   # CI: 32 items, checks the counts and the scores, never the times
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import math
import multiprocessing
import pstats
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The same top-k after every prompt: digits and verdicts after the slot, and "]" (an end) after a label.
TOPS = {"1": -3.0, "2": -2.2, "3": -1.4, "4": -0.9, "5": -1.6, "A": -0.8, "B": -1.2, "C": -2.4, "]": -0.05,
        "0": -4.0, " ": -5.0}  # fmt: skip


def serve(port_out, counter) -> None:
    """An instant OpenAI-compatible `/v1/completions` (a prompt or a list of them), HTTP/1.1 keep-alive."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            with counter.get_lock():
                counter.value += 1
            choices = [{"index": i, "text": "4", "logprobs": {"top_logprobs": [TOPS]}} for i in range(len(prompts))]
            out = json.dumps({"choices": choices}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port_out.put(httpd.server_address[1])
    httpd.serve_forever()


async def bare(url: str, prompts: list[str], concurrency: int) -> None:
    """One `max_tokens=1, logprobs=20` request per prompt, `concurrency` in flight, one connection pool."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), timeout=60) as client:

        async def one(prompt):
            async with gate:
                body = {"model": "m", "prompt": prompt, "max_tokens": 1, "logprobs": 20, "temperature": 0.0}
                response = await client.post(f"{url}/completions", json=body)
                return response.json()["choices"][0]["logprobs"]["top_logprobs"][0]

        await asyncio.gather(*(one(p) for p in prompts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs of each side")
    parser.add_argument("--profile", action="store_true", help="cProfile one Judge.score run (top functions)")
    parser.add_argument("--quick", action="store_true", help="CI: 32 items, one run; checks counts and scores")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeat = 32, 1

    from transformers import AutoTokenizer

    from reward import Judge
    from reward.backends.openai import OpenAIBackend
    from reward.embedded import embedded_judge_path
    from trainers.mt_bench import mt_bench_candidates

    ctx = multiprocessing.get_context("spawn")
    port_out, counter = ctx.Queue(), ctx.Value("l", 0)
    server = ctx.Process(target=serve, args=(port_out, counter), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port_out.get(timeout=60)}/v1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(embedded_judge_path()))
        backend = OpenAIBackend(url, "m", tokenizer, concurrency=args.concurrency)
        judge = Judge(backend, progress=False)
        cands = mt_bench_candidates(max_words=60)
        rows = [(c["question"], a) for c in cands for a in c["answers"].values()]
        rows = (rows * (args.items // len(rows) + 1))[: args.items]
        questions, answers = [q for q, _ in rows], [a for _, a in rows]
        fields = [{"question": q, "response": a, "min_score": "1", "max_score": "5"} for q, a in rows]
        prompts = [judge._build(judge.pointwise_template, f, ("response",), "direct")[0] for f in fields]
        prompts = [p + judge.pointwise_template.slot for p in prompts]

        def measure(fn):
            best, requests = math.inf, 0
            for _ in range(args.repeat):
                before = counter.value
                start = time.perf_counter()
                out = fn()
                best = min(best, time.perf_counter() - start)
                requests = counter.value - before
            return out, best, requests

        measure(lambda: judge.score(questions[:8], answers[:8]))  # warm-up: connections, tokenizer caches
        _, t_bare, r_bare = measure(lambda: asyncio.run(bare(url, prompts, args.concurrency)))
        scores, t_score, r_score = measure(lambda: judge.score(questions, answers))
        half = args.items // 2
        pairs = (questions[:half], answers[:half], answers[half : 2 * half])
        prefs, t_cmp, r_cmp = measure(lambda: judge.compare(*pairs))
        n = args.items
        print(f"{n} items, concurrency {args.concurrency}, best of {args.repeat}")
        print(f"bare httpx, 1 request/item : {n / t_bare:8.0f} items/s  {r_bare / n:.3f} requests/item")
        print(f"Judge.score (openai:)      : {n / t_score:8.0f} items/s  {r_score / n:.3f} requests/item")
        print(f"Judge.compare (openai:)    : {half / t_cmp:8.0f} pairs/s  {r_cmp / half:.3f} requests/pair")
        print(f"score vs bare: {t_bare / t_score:.2f}x items/s (goal >= 1.5x)")
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(judge.score, questions, answers)
            pstats.Stats(profile).sort_stats("tottime").print_stats(20)
        # What the run must have computed, whatever the times: every item judged, the same expected score (the
        # server answers the same top-k everywhere), and few requests.
        assert all(s.error is None for s in scores) and len({round(s.expected, 9) for s in scores}) == 1
        assert all(p.error is None for p in prefs)
        assert backend.failures == 0
        if r_score / n > 0.25 or r_cmp / half > 0.5:
            print(f"FAIL: requests per item {r_score / n:.3f} (goal 0.25), per pair {r_cmp / half:.3f} (goal 0.5)")
            return 1
        return 0
    finally:
        server.terminate()


if __name__ == "__main__":
    sys.exit(main())
