"""Load test of `trustreward serve` on loopback: concurrent clients, OpenRLHF's /get_reward, the embedded judge.

Starts the server (pointwise reward, so that requests batch), runs `--clients` threads each sending
`--requests` requests of one (prompt, response), and prints requests/s, p50 / p99 latency, errors (must be 0)
and the batching factor (items per judge call, from /health). Bounded in count and in time (`--timeout`).

    python bench/bench_server.py [--clients 16] [--requests 100]
"""

from __future__ import annotations

import argparse
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "trainers.cli", "serve", "--judge", "embedded", "--port",
                               str(port), "--reward", "score", "--max_wait_s", "0.05"],
                              env=os.environ | {"PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        latencies, errors = [], []
        prompt = "<|im_start|>user\nName a colour and say why you like it.<|im_end|>\n<|im_start|>assistant\n"

        def client(c: int):
            with httpx.Client(timeout=args.timeout) as http:
                for r in range(args.requests):
                    body = {"query": [prompt + f"Colour {c}-{r}: blue, like the sea.<|im_end|>"], "prompts": [prompt]}
                    start = time.perf_counter()
                    try:
                        resp = http.post(f"{url}/get_reward", json=body)
                        if resp.status_code != 200 or resp.json()["rewards"][0] is None:
                            errors.append(resp.text[:200])
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                    latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.timeout)
        elapsed = time.perf_counter() - start
        health = httpx.get(f"{url}/health").json()
        q = statistics.quantiles(latencies, n=100)
        n = len(latencies)
        print(f"{n} requests from {args.clients} clients in {elapsed:.1f} s: {n / elapsed:.2f} "
              f"req/s, p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, errors {len(errors)}, batching factor "
              f"{health['items'] / max(1, health['judge_calls']):.1f} items per judge call")  # fmt: skip
        return 1 if errors else 0
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
