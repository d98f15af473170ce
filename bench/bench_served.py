"""The `openai:` backend's client cost and exactness: `Judge.score` / `Judge.compare` against an instant loopback
server, next to a bare httpx client that sends one `max_tokens=1` request per item on the same prompts.

The server (a separate process, so it does not share our GIL) has one known distribution over the embedded judge's
whole vocabulary for every prompt, every label token outside its top-20, and lists the top-20 after a logit bias as
SGLang does (or, `max_logprobs=-1`, up to the whole vocabulary as llama.cpp does): what is measured is the client
(prompt building, exact reads, HTTP requests, JSON). Printed side by side in one run: items/s of each, their ratio,
HTTP requests per scored item and per compared pair (counted by the server), and every label's probability read
exactly against its full-vocabulary value, where the top-k read gives 0. Goals (issues #14, #31): >= 1.5x the bare
client, <= 0.25 requests per scored item, <= 0.5 per compared pair; exact to 1e-6, 1-100 branches included.

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

CUSTOM = ["good", "bad", "ok", "A", "B", "C"]  # a custom label set (words: several tokens each)


def known_logits(vocab: int, label_ids: list[int]):
    """The server's next-token logits (float64), the same after every prompt: 30 tokens far ahead (the top-20 are
    theirs), every label token below them (none in the top-20), the rest spread over [-9, -7]."""
    import numpy as np

    logits = -9 + 2 * ((np.arange(vocab) * 0.6180339887) % 1.0)
    rng = np.random.default_rng(0)
    logits[rng.choice(vocab, 30, replace=False)] = rng.uniform(2.0, 3.0, 30)
    logits[label_ids] = rng.uniform(0.5, 1.9, len(label_ids))
    return logits


def serve(port_out, counter, vocab: int, label_ids: list[int], max_logprobs: int = 20) -> None:
    """An instant OpenAI-compatible `/v1/completions` (a prompt or a list of them), HTTP/1.1 keep-alive: the
    top-`logprobs` of `known_logits` after the request's `logit_bias` (SGLang's order), "token_id:N" keys; a count
    above `max_logprobs` (-1: the vocabulary) is HTTP 400, as vLLM answers."""
    import numpy as np

    logits = known_logits(vocab, label_ids)

    def listed(k: int, bias: dict) -> dict:
        shown = logits.copy()
        if bias:
            shown[np.array([int(t) for t in bias])] += np.clip(np.array(list(bias.values()), float), -100, 100)
        shown -= np.logaddexp.reduce(shown)
        top = np.argpartition(-shown, k - 1)[:k] if k < vocab else np.arange(vocab)
        return {f"token_id:{t}": float(shown[t]) for t in top.tolist()}

    plain = listed(20, {})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            with counter.get_lock():
                counter.value += 1
            k, bias = int(body.get("logprobs") or 0), body.get("logit_bias") or {}
            if k > (vocab if max_logprobs == -1 else max_logprobs):
                out, status = b'{"object": "error", "message": "Requested sample logprobs above max allowed"}', 400
            else:
                tops = plain if k == 20 and not bias else listed(k, bias)
                choice = {"text": "4", "logprobs": {"top_logprobs": [tops]}}
                choices = [{"index": i, **choice} for i in range(len(prompts))]
                out, status = json.dumps({"choices": choices}).encode(), 200
            self.send_response(status)
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
    from reward.backends.served_reads import label_token_ids
    from reward.embedded import embedded_judge_path
    from trainers.mt_bench import mt_bench_candidates

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_judge_path()))
    scale = [str(s) for s in range(1, 101)]
    label_ids = sorted({t for ids in label_token_ids(tokenizer, "Score: [", scale + CUSTOM, {}) for t in ids})
    label_ids += tokenizer.convert_tokens_to_ids(["]"])
    ctx = multiprocessing.get_context("spawn")
    port_out, counter = ctx.Queue(), ctx.Value("l", 0)
    servers = [ctx.Process(target=serve, args=(port_out, counter, len(tokenizer), label_ids, limit), daemon=True)
               for limit in (20, -1)]  # fmt: skip
    urls = []
    for server in servers:
        server.start()
        urls.append(f"http://127.0.0.1:{port_out.get(timeout=60)}/v1")
    url = urls[0]
    try:
        backend = OpenAIBackend(url, "m", tokenizer, concurrency=args.concurrency, exact="auto")
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
        print(f"score vs bare: {t_bare / t_score:.2f}x items/s (goal >= 1.5x); reads: {backend._mode}")
        worst = exactness(tokenizer, urls, label_ids, prompts[: 2 if args.quick else 8], scale)
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(judge.score, questions, answers)
            pstats.Stats(profile).sort_stats("tottime").print_stats(20)
        # What the run must have computed, whatever the times: every item judged exactly, the same expected score
        # (the server has the same distribution everywhere), every label to 1e-6, and few requests.
        assert all(s.error is None and s.valid_mass_exact for s in scores)
        assert len({round(s.expected, 9) for s in scores}) == 1 and worst < 1e-6
        assert all(p.error is None for p in prefs)
        assert backend.failures == 0
        if r_score / n > 0.25 or r_cmp / half > 0.5:
            print(f"FAIL: requests per item {r_score / n:.3f} (goal 0.25), per pair {r_cmp / half:.3f} (goal 0.5)")
            return 1
        return 0
    finally:
        for server in servers:
            server.terminate()


def exactness(tokenizer, urls: list[str], label_ids: list[int], prompts: list[str], scale: list[str]) -> float:
    """Prints, per exact read and label set, the largest difference of a label's probability (and of the valid
    mass) to its full-vocabulary value, next to how many labels the top-k read gives 0; returns the largest."""
    import numpy as np

    from reward.backends.openai import OpenAIBackend
    from reward.backends.served_reads import label_token_ids, vocab_info

    logp = known_logits(len(tokenizer), label_ids)
    logp -= np.logaddexp.reduce(logp)
    end = np.logaddexp.reduce(logp[np.array(vocab_info(tokenizer)[1])])
    worst = 0.0
    for url, name in zip(urls, ("logit_bias, top-20 server", "full, --max-logprobs -1")):
        prompts = prompts if url == urls[0] else prompts[:1]  # (a full read answers the whole vocabulary per read)
        for labels in (scale, CUSTOM, scale[:5]):
            full = {lab: float(sum(logp[t] for t in ids) + end) for lab, ids in
                    zip(labels, label_token_ids(tokenizer, prompts[0], labels, {}))}  # fmt: skip
            exact = OpenAIBackend(url, "m", tokenizer, exact="logit_bias" if url == urls[0] else "full")
            got = exact.label_logprobs(prompts, labels)
            top_k = OpenAIBackend(url, "m", tokenizer, exact="off").label_logprobs(prompts, labels)
            diff = max(abs(math.exp(g[lab]) - math.exp(full[lab])) for g in got for lab in labels)
            mass = max(abs(sum(map(math.exp, g.values())) - sum(map(math.exp, full.values()))) for g in got)
            zeros = sum(t[lab] == -math.inf for t in top_k[:1] for lab in labels)
            worst = max(worst, diff, mass)
            seen, total = sum(map(math.exp, top_k[0].values())), sum(map(math.exp, full.values()))
            print(f"exact ({name}, {exact._mode}): {len(labels):3d} labels x {len(prompts)} items: max |p - full| "
                  f"{diff:.1e}, valid_mass {mass:.1e}; top-k read: {zeros} of {len(labels)} labels 0, valid_mass "
                  f"{seen:.3f} of {total:.3f}")  # fmt: skip
    return worst


if __name__ == "__main__":
    sys.exit(main())
