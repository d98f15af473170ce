"""Load test of `trustreward serve` on loopback: OpenRLHF-style per-sample clients, the embedded judge.

`--reward pairwise` (default): the server holds groups of `--group_size` (8) samples per prompt; `--clients`
threads send one sample per request, the samples of consecutive prompts interleaved as OpenRLHF's vLLM engines
send them, so every request waits for its group. `--reward score`: pointwise, every request judged on its own
(batched across requests). Prints requests/s, p50 / p99 latency, errors (must be 0: a non-200 answer or a reward
that is not a finite number), groups judged and items per judge call (from /health). Bounded in count and time.

    python bench/bench_server.py [--reward pairwise --group_size 8 --clients 16 --prompts 8] [--quick]
    python bench/bench_server.py --reward score --clients 16 --requests 100
    python bench/bench_server.py --hostile [--requests 4] [--quick]

`--hostile` (pointwise): 15 well-behaved per-sample clients, first alone, then next to one hostile client that
loops over huge requests it abandons after 1 s, rows with NaN or lone surrogates, missing columns and requests
over the item cap; prints the well-behaved clients' p50 / p99 and errors of both runs side by side and the p99
ratio (goal: 0 errors, within 2x), and what the hostile client got back.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = ["Blue, like the sea.", "Red: it is warm.", "Green, the colour of leaves in spring.", "Yellow.",
           "I like purple because it is calm.", "Orange, for the sunsets.", "Black. It goes with everything.",
           "White, it is clean and bright."]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "trainers.cli", "serve", "--judge", args.judge, "--port", str(port),
               "--reward", args.reward, "--max_wait_s", "0.05"]  # fmt: skip
    if args.reward == "pairwise":
        command += ["--group_size", str(args.group_size), "--group_timeout", str(args.group_timeout)]
    server = subprocess.Popen(command, env=os.environ | {"PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("bench_server: the server did not start")


def requests_of(args) -> list[dict]:
    """The request bodies in sending order: prompt by prompt, each prompt's samples in turn."""
    bodies = []
    if args.reward == "pairwise":
        for p, k in itertools.product(range(args.prompts), range(args.group_size)):
            prompt = (
                f"<|im_start|>user\nName a colour and say why you like it ({p}).<|im_end|>\n<|im_start|>assistant\n"
            )
            bodies.append({"query": [prompt + ANSWERS[k % len(ANSWERS)] + "<|im_end|>"], "prompts": [prompt]})
        return bodies
    prompt = "<|im_start|>user\nName a colour and say why you like it.<|im_end|>\n<|im_start|>assistant\n"
    for r in range(args.clients * args.requests):
        bodies.append({"query": [prompt + f"Colour {r}: blue, like the sea.<|im_end|>"], "prompts": [prompt]})
    return bodies


def run_load(url: str, bodies: list[dict], clients: int, timeout: float) -> tuple[list[float], list[str], float]:
    """`clients` threads take the bodies in order and post each to /get_reward; (latencies, errors, elapsed)."""
    todo, lock = iter(bodies), threading.Lock()
    latencies, errors = [], []

    def client():
        with httpx.Client(timeout=timeout) as http:
            while True:
                with lock:
                    body = next(todo, None)
                if body is None:
                    return
                start = time.perf_counter()
                try:
                    resp = http.post(f"{url}/get_reward", json=body)
                    rewards = resp.json().get("rewards") if resp.status_code == 200 else None
                    if not rewards or not all(isinstance(r, float | int) and math.isfinite(r) for r in rewards):
                        errors.append(f"{resp.status_code}: {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return latencies, errors, time.perf_counter() - start


def hostile_client(url: str, stop: threading.Event, answers: dict) -> None:
    """Huge requests abandoned after 1 s, NaN / lone-surrogate rows, missing columns, requests over the cap."""
    huge = {"rows": [{"prompt": "Say something.", "response": f"Filler answer {i}."} for i in range(1000)]}
    bad = [b'{"rows": [{"prompt": "q", "response": "a", "w": NaN}]}',
           b'{"rows": [{"prompt": "q", "response": "\\ud800"}]}',
           b'{"rows": [{"prompt": "q"}]}', b'{"query": ["x"], "prompts": []}']  # fmt: skip
    over = {"rows": [{"prompt": "q", "response": "a"}] * 5000}
    with httpx.Client(timeout=1.0) as http:
        for k in itertools.count():
            if stop.is_set():
                return
            try:
                if k % 3 == 0:
                    r = http.post(f"{url}/score", json=huge)
                elif k % 3 == 1:
                    r = http.post(f"{url}/score", json=over)
                else:
                    path = "/get_reward" if b"query" in bad[k % 4] else "/score"
                    r = http.post(f"{url}{path}", content=bad[k % 4], headers={"Content-Type": "application/json"})
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            answers[key] = answers.get(key, 0) + 1


def hostile(args) -> int:
    """Well-behaved clients' latency and errors without, then with, one hostile client (same server)."""
    args.reward = "score"
    server, url = start_server(args)
    try:
        bodies = requests_of(args)
        run_load(url, bodies[: args.clients * 2], args.clients, args.timeout)  # warm-up, not counted
        quiet = run_load(url, bodies, args.clients, args.timeout)
        stop, answers = threading.Event(), {}
        thread = threading.Thread(target=hostile_client, args=(url, stop, answers))
        thread.start()
        time.sleep(0.5)
        noisy = run_load(url, bodies, args.clients, args.timeout)
        stop.set()
        thread.join(30)
        health = httpx.get(f"{url}/health").json()
        p99 = []
        for name, (latencies, errors, elapsed) in (("alone", quiet), ("with the hostile client", noisy)):
            q = statistics.quantiles(latencies, n=100)
            p99.append(q[98])
            print(f"{args.clients} well-behaved clients {name}: {len(latencies)} requests in {elapsed:.1f} s, "
                  f"p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, errors {len(errors)}")  # fmt: skip
        print(f"p99 ratio (with / without the hostile client): {p99[1] / p99[0]:.2f}x (goal <= 2x); hostile answers "
              f"{dict(sorted(answers.items()))}; abandoned items dropped {health['abandoned_items']}")  # fmt: skip
        return 1 if quiet[1] or noisy[1] else 0
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default="embedded")
    parser.add_argument("--reward", choices=("pairwise", "score"), default="pairwise")
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--group_timeout", type=float, default=60.0)
    parser.add_argument("--prompts", type=int, default=8, help="pairwise: prompts (each sends group_size samples)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100, help="score: requests per client")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--hostile", action="store_true", help="15 well-behaved clients without / with a hostile one")
    parser.add_argument("--quick", action="store_true", help="CI: 2 prompts x 4 samples (score: 8 x 4 requests)")
    args = parser.parse_args()
    if args.hostile:
        args.clients, args.requests = 15, 2 if args.quick else args.requests
        return hostile(args)
    if args.quick:
        args.prompts, args.group_size, args.clients, args.requests = 2, 4, min(args.clients, 8), 4
    server, url = start_server(args)
    try:
        bodies = requests_of(args)
        latencies, errors, elapsed = run_load(url, bodies, args.clients, args.timeout)
        health = httpx.get(f"{url}/health").json()
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
        n = len(latencies)
        what = f"groups of {args.group_size}" if args.reward == "pairwise" else "pointwise"
        print(f"{args.reward} ({what}): {n} per-sample requests from {args.clients} clients in {elapsed:.1f} s: "
              f"{n / elapsed:.2f} req/s, p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, errors {len(errors)}, "
              f"{health['groups']} groups ({health['lone']} lone, {health['incomplete']} incomplete), "
              f"{health['failures']} failures, {health['items'] / max(1, health['judge_calls']):.1f} items per "
              f"judge call")  # fmt: skip
        for e in errors[:5]:
            print("  error:", e)
        return 1 if errors or n != len(bodies) else 0
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
