"""Group judging through one batching layer, and the server against one direct engine call (issue #28, items 2-3).

On a near-zero-FLOP judge (`bench_host.tiny_judge`: the embedded judge's tokenizer, 1 layer, 64 wide), so what is
measured is the batching and the host work around the forwards, side by side in one run:

1. Prompt tokens run (padding included) for a group of 16 MT-Bench answers compared in all pairs (240 prompts),
   on the embedded judge's tokenizer and width with one layer (`shaped_backend`), with `Judge` cutting every call
   into chunks of 32 (before #28) and handing the backend the whole call, at each `--min_prefix` (a prefix-cache
   level must save that many prompt tokens), against the radix tree of the same prompts (every shared prefix
   counted once): goal within 1.1x at the default. One torch thread; each run's forwards and CPU seconds (best
   of `--rounds`, the runs interleaved) are printed too. `--embedded`: the same on the embedded judge itself (30
   layers, a group of `--embedded_size`); `--against COMMIT`: also with `HFBackend` as of COMMIT, in the same run.
2. `trustreward serve --group_size 8` (its own process, on loopback): 16 prompts x 8 samples, all in flight, one sample
   per request (OpenRLHF's call pattern), against one direct `GroupJudge` call on the same 16 groups: goal >= 0.8x
   its throughput. The rewards must be the direct call's (within 1e-6) and every answer a number. Two clients,
   side by side in each round: a raw one (bodies encoded beforehand, ~0.05 CPU s a run), whose figure is the goal's,
   since OpenRLHF's clients run on the rollout machines, not beside the server; and httpx, whose ~1 CPU s a run
   shares the server's two cores here.

    python bench/bench_group_server.py [--prompts 16] [--samples 8] [--rounds 3] [--quick]
    python bench/bench_group_server.py --tokens_only --embedded --against COMMIT [--min_prefix 32 16]

`--quick` (CI): a group of 8 for the tokens, 4 prompts x 4 samples, one round; fails on wrong rewards, errors,
or groups judged other than once; never on a time or a token ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from bench_host import tiny_judge
from common import tree_tokens

from reward import Judge
from reward.group_judging import Group, GroupJudge
from reward.tokens import encode

ROOT = Path(__file__).resolve().parents[1]


def group(size: int, question: int = 0) -> tuple[str, list[str]]:
    """An MT-Bench question and `size` distinct answers: its 4 known answers, then their first 3/4, 1/2, ...."""
    from trainers.mt_bench import mt_bench_candidates

    c = mt_bench_candidates(max_words=80)[question]
    words = [a.split() for a in c["answers"].values()]
    answers = [" ".join(w[: max(1, len(w) * k // 8)]) for k in (8, 6, 4, 2, 7, 5, 3, 1) for w in words]
    answers = list(dict.fromkeys(answers))  # distinct
    assert len(answers) >= size, f"question {question} has {len(answers)} distinct answers"
    return c["question"], answers[:size]


def recorded(judge):
    """The prompts the backend is handed (label reads), and its forward-token count reset."""
    seen, real = [], judge.backend.label_logprobs

    def record(prompts, labels):
        seen.extend(prompts)
        return real(prompts, labels)

    judge.backend.label_logprobs = record
    judge.backend.forward_tokens = 0
    return seen


def shaped_backend():
    """The embedded judge's tokenizer and width (SmolLM2-135M: 576 wide, 9 heads) with 1 layer, random weights: its
    batching decisions are the real judge's (no padding is free at this width, `HFBackend._free_padding`)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from reward.backends.hf import HFBackend
    from reward.embedded import embedded_judge_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_judge_path()))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return HFBackend(model, tokenizer)


def backend_at(commit: str):
    """`HFBackend` as it was at a git commit, loaded beside today's (its relative imports resolve to today's
    package): the old batching measured in the same run as the new."""
    import types

    source = subprocess.run(["git", "show", f"{commit}:reward/backends/hf.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    module = types.ModuleType("reward.backends._hf_at")
    module.__package__ = "reward.backends"
    exec(compile(source, f"{commit}:reward/backends/hf.py", "exec"), module.__dict__)
    return module.HFBackend


def tokens_part(
    size: int, rounds: int, prefixes: list[int] | None, embedded: bool = False, against: str | None = None
):
    """Prompt tokens, forwards and CPU seconds (best of `rounds`, the runs interleaved) of one group judged in
    all pairs, on `shaped_backend` or the embedded judge itself (30 layers): `Judge` cutting the call into chunks of
    32 (before #28), then the whole call at each `min_prefix`, with today's backend and (`against`) a commit's."""
    import inspect

    from reward import load_judge
    from reward.backends.hf import HFBackend

    question, answers = group(size)
    base = load_judge("embedded", device="cpu").backend if embedded else shaped_backend()  # the model, loaded once
    default = inspect.signature(HFBackend).parameters["min_prefix"].default
    prefixes = prefixes or sorted({32, default}, reverse=True)  # before #28's default and today's
    runs = [("before #28: chunks of 32, min_prefix=32", 32, HFBackend, 32)]
    runs += [(f"whole call, min_prefix={m}{' (default)' * (m == default)}", None, HFBackend, m) for m in prefixes]
    if against:
        old = backend_at(against)
        runs += [(f"{against}'s backend, whole call, min_prefix={m}", None, old, m) for m in prefixes]
    forwards = []  # one entry per forward: the embedding runs once in each (lean or transformers')
    base.model.get_input_embeddings().register_forward_hook(lambda *_: forwards.append(1))
    judges = []
    for _, batch_size, backend, min_prefix in runs:
        judge = Judge(
            backend(base.model, base.tokenizer, min_prefix=min_prefix), progress=False, batch_size=batch_size
        )
        GroupJudge()(judge, [Group(question, answers[:2])])  # warm: the head check, the label tokenisation
        judges.append(judge)
    cpu, counts = {}, {}
    for _ in range(rounds):
        for (label, *_), judge in zip(runs, judges):
            seen = recorded(judge)
            forwards.clear()
            start = time.process_time()
            GroupJudge()(judge, [Group(question, answers)])
            cpu[label] = min(cpu.get(label, float("inf")), time.process_time() - start)
            del judge.backend.label_logprobs  # (`recorded`'s)
            counts[label] = (seen, judge.backend.forward_tokens, len(forwards))
    prompts = [seen for seen, _, _ in counts.values()]
    assert all(seen == prompts[0] for seen in prompts), "the runs judged different prompts"
    radix = tree_tokens(encode(base.tokenizer, prompts[0]))
    name = "the embedded judge (30 layers)" if embedded else "the shaped judge (1 layer)"
    print(f"{name}, group of {size}, all pairs: {len(prompts[0])} prompts, radix tree {radix} tokens; CPU s best "
          f"of {rounds}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for label, (_, run, n) in counts.items():
        print(f"  {label}: {run} prompt tokens run, {run / radix:.3f}x the radix tree (goal <= 1.1x at the default), "
              f"{n} forwards, {cpu[label]:.2f} CPU s")  # fmt: skip


def groups_of(prompts: int, samples: int) -> list[Group]:
    out = []
    for q in range(prompts):
        question, answers = group(samples, question=q % 10)
        out.append(Group(f"[{q}] {question}", answers))
    return out


async def post_all(url: str, groups: list[Group], client: str) -> tuple[list, float]:
    """Every sample in flight at once, one per request, the prompts' samples interleaved. `client`: "httpx" (a
    Python client, 1 CPU s a run on the same two cores as the server), or "raw" (the bodies encoded beforehand,
    one plain HTTP/1.1 connection per request: ~0.05 CPU s, so the server is what is timed, as with OpenRLHF,
    whose clients run on the rollout machines). Each answer: (status, body)."""
    order = [(g.prompt, a) for k in range(len(groups[0].completions)) for g in groups for a in [g.completions[k]]]
    bodies = [json.dumps({"query": [p + a], "prompts": [p]}).encode() for p, a in order]
    if client == "raw":
        host, port = url.removeprefix("http://").split(":")
        start = time.perf_counter()
        answers = await asyncio.gather(*[raw_post(host, int(port), "/get_reward", body) for body in bodies])
        return list(zip(order, answers)), time.perf_counter() - start
    limits = httpx.Limits(max_connections=len(order), max_keepalive_connections=len(order))
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await http.get(f"{url}/health")
        start = time.perf_counter()
        answers = await asyncio.gather(*[http.post(f"{url}/get_reward", content=b, headers=headers) for b in bodies])
        took = time.perf_counter() - start
    return [(key, (r.status_code, r.json())) for key, r in zip(order, answers)], took


async def raw_post(host: str, port: int, path: str, body: bytes) -> tuple[int, dict]:
    """One POST on its own connection, read to its Content-Length (the server always sends one)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = b"POST %b HTTP/1.1\r\nHost: %b:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        writer.write(head % (path.encode(), host.encode(), port, len(body)) + body)
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
        return int(lines[0].split()[1]), json.loads(await reader.readexactly(length))
    finally:
        writer.close()


def serve(model_dir: str, samples: int):
    """`trustreward serve` in its own process (the client is another process, as OpenRLHF is), one torch thread."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "trainers.cli",
        "serve",
        "--judge",
        model_dir,
        "--judge_device",
        "cpu",
        "--port",
        str(port),
        "--group_size",
        str(samples),
        "--group_timeout",
        "60",
        "--max_wait_s",
        "0.05",
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux `/proc/PID/stat`, fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_part(prompts: int, samples: int, rounds: int) -> int:
    import tempfile

    from reward import load_judge

    groups = groups_of(prompts, samples)
    engine = GroupJudge()
    with tempfile.TemporaryDirectory() as model_dir:
        tiny = tiny_judge()
        tiny.backend.model.save_pretrained(model_dir)
        tiny.tokenizer.save_pretrained(model_dir)
        judge = load_judge(model_dir, device="cpu", progress=False)  # as the server loads it
        engine(judge, groups[:1])  # warm: the first forward, the label tokenisation
        server, url = serve(model_dir, samples)
        try:
            asyncio.run(post_all(url, groups[:1], "httpx"))  # warm the server the same way
            errors, calls, clients = 0, [], ("raw", "httpx")
            best = dict.fromkeys(("direct", *clients), float("inf"))  # wall seconds, best round
            cpu = {"direct": float("inf")} | {
                f"{c} {side}": float("inf") for c in clients for side in ("server", "client")
            }
            for _ in range(rounds):
                start, start_cpu = time.perf_counter(), time.process_time()
                results = engine(judge, groups)
                best["direct"] = min(best["direct"], time.perf_counter() - start)
                cpu["direct"] = min(cpu["direct"], time.process_time() - start_cpu)
                want = {
                    (g.prompt, a): r for g, res in zip(groups, results) for a, r in zip(g.completions, res.rewards)
                }
                for client in clients:  # side by side, the same round
                    before = httpx.get(f"{url}/health").json()
                    server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
                    answered, took = asyncio.run(post_all(url, groups, client))
                    spent = {
                        "client": time.process_time() - client_cpu,
                        "server": cpu_seconds(server.pid) - server_cpu,
                    }
                    for side, seconds in spent.items():
                        cpu[f"{client} {side}"] = min(cpu[f"{client} {side}"], seconds)
                    health = httpx.get(f"{url}/health").json()
                    best[client] = min(best[client], took)
                    calls.append(health["judge_calls"] - before["judge_calls"])
                    for key, (status, body) in answered:
                        errors += not (status == 200 and abs(body["rewards"][0] - want[key]) <= 1e-6)
                    errors += health["groups"] - before["groups"] != prompts
                    errors += sum(health[k] - before[k] for k in ("failures", "lone", "incomplete", "late"))
        finally:
            server.terminate()
            server.wait(30)
    n, direct = prompts * samples, best["direct"]
    print(f"direct engine call: {n / direct:.1f} samples/s ({direct:.2f} s, {cpu['direct']:.2f} CPU s); "
          f"judge calls per server run {calls}; {errors} errors; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for client, what in (("raw", "goal >= 0.8x"), ("httpx", "its client on the same 2 cores")):
        print(f"server, {n} requests in flight, {client} client: {n / best[client]:.1f} samples/s "
              f"({best[client]:.2f} s); ratio {direct / best[client]:.2f}x ({what}); CPU s: server process "
              f"{cpu[client + ' server']:.2f}, client {cpu[client + ' client']:.2f}")  # fmt: skip
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--size", type=int, default=16, help="group size of the token count")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embedded", action="store_true", help="the tokens part on the embedded judge too")
    parser.add_argument("--embedded_size", type=int, default=8, help="its group size")
    parser.add_argument("--min_prefix", type=int, nargs="+", help="the tokens part's (default: 32 and today's)")
    parser.add_argument("--against", metavar="COMMIT", help="also the tokens part with HFBackend as of COMMIT")
    parser.add_argument("--tokens_only", action="store_true", help="skip the server part")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.samples, args.size, args.rounds = 4, 4, 8, 1
    torch.set_num_threads(1)  # on a shared machine two OpenMP threads mostly wait for each other (bench_host.py)
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, 1 torch thread")
    tokens_part(args.size, args.rounds, args.min_prefix, against=args.against)
    if args.embedded:
        tokens_part(args.embedded_size, args.rounds, args.min_prefix, embedded=True, against=args.against)
    if args.tokens_only:
        return 0
    return 1 if server_part(args.prompts, args.samples, args.rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
