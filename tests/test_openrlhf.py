"""The reward server under OpenRLHF 0.11's own remote-reward client (`SingleTurnAgentExecutor`).

OpenRLHF 0.11.2's code is installed beside the environment (`pip install --no-deps --target`, with aiohttp);
its package `__init__` pulls math-grading extras, so `openrlhf/utils/agent.py` is imported from its own file
with empty parent packages. A fake vLLM engine returns the response's token ids; OpenRLHF decodes the query itself
(special tokens kept), posts it, and its answer goes through the same conversions as
`samples_generator._process_response_into_experience` (`torch.tensor([reward])`, one tensor per extra_logs key).
"""

import asyncio
import importlib
import os
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
import torch  # noqa: E402
from live_server import by_quality, finite, live, points_by_quality  # noqa: E402
from test_server_groups import ANSWERS, LOG_KEYS, templated, want_pairwise  # noqa: E402

from trainers.server import create_app  # noqa: E402

OPENRLHF = Path(os.environ.get("TRUSTREWARD_CACHE", Path.home() / ".cache" / "trustreward")) / "openrlhf-0.11.2"
AIOHTTP = ["aiohttp==3.14.5", "attrs", "aiohappyeyeballs", "aiosignal", "frozenlist", "multidict", "propcache", "yarl"]


@pytest.fixture
def agent(monkeypatch):
    if not (OPENRLHF / "openrlhf" / "utils" / "agent.py").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(OPENRLHF),
                        "openrlhf==0.11.2", *AIOHTTP], check=True)  # fmt: skip
    monkeypatch.syspath_prepend(str(OPENRLHF))
    for name in ("openrlhf", "openrlhf.utils"):
        package = types.ModuleType(name)
        package.__path__ = [str(OPENRLHF / name.replace(".", "/"))]
        monkeypatch.setitem(sys.modules, name, package)
    for name in ("openrlhf.utils.agent", "openrlhf.utils.logging_utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("openrlhf.utils.agent")


class FakeEngine:
    """vLLM's `generate` as the executor awaits it: the response's tokens plus the end token, a little later."""

    def __init__(self, tok, answers):
        self.tok, self.answers, self.calls = tok, answers, 0

    async def generate(self, prompt_token_ids, params, multi_modal_data=None):
        answer = self.answers[tuple(prompt_token_ids)].pop(0)
        ids = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        self.calls += 1
        await asyncio.sleep(0.03 * self.calls)  # samples finish in the order they started
        return SimpleNamespace(
            outputs=[SimpleNamespace(token_ids=ids, text=answer, finish_reason="stop", logprobs=None)]
        )


def rollouts(agent, tok, urls, pattern=(0, 1)):
    """n=4 samples of each of two prompts, concurrently, through one executor (as one vLLM actor); they finish
    in the order `pattern` repeated (prompt indices)."""
    executor = agent.SingleTurnAgentExecutor(urls)
    prompts = [templated(tok, q) for q in ANSWERS]
    engine = FakeEngine(tok, {tuple(tok(p, add_special_tokens=False)["input_ids"]): list(a)
                              for p, a in zip(prompts, ANSWERS.values())})  # fmt: skip
    params = SimpleNamespace(max_tokens=64, logprobs=None)
    order = [prompts[i] for _ in range(8 // len(pattern)) for i in pattern]

    async def run():
        return await asyncio.gather(*[executor.execute(p, None, params, 512, tok, engine) for p in order])

    return order, asyncio.run(run())


def experience_info(output):
    """OpenRLHF's conversion of one answer (samples_generator.py): what crashes on a null or a None."""
    info = {"reward": torch.tensor([output["reward"]]), "score": torch.tensor([output["scores"]])}
    return info | {key: torch.tensor([value]) for key, value in output["extra_logs"].items()}


def test_openrlhf_executor_gets_each_groups_pairwise_rewards(agent, fake_judge):
    judge = fake_judge(rule=by_quality, points=points_by_quality)
    with live(create_app(judge, group_size=4)) as url:
        order, outputs = rollouts(agent, judge.tokenizer, f"{url}/get_reward")
    wants = {templated(judge.tokenizer, q): want_pairwise(judge, templated(judge.tokenizer, q), a)
             for q, a in ANSWERS.items()}  # fmt: skip
    seen = {p: [] for p in wants}
    for prompt, out in zip(order, outputs):
        info = experience_info(out)
        (reward,) = out["reward"]
        assert finite([reward]) and set(out["extra_logs"]) == LOG_KEYS and info["reward"].shape == (1, 1)
        seen[prompt].append(reward)
        assert out["extra_logs"]["judge/group_size"] == 4 and out["extra_logs"]["judge/failures"] == 0
    for prompt, want in wants.items():
        assert sorted(seen[prompt]) == pytest.approx(sorted(want.values()), abs=1e-6)


def test_openrlhf_with_two_reward_servers_splits_groups_never_a_null(agent, fake_judge):
    """OpenRLHF cycles its URLs request by request: here each server sees half of every group, judged after the
    timeout (finishing order: 2 samples of one prompt, 2 of the other, ...)."""
    judge = fake_judge(rule=by_quality, points=points_by_quality)
    with (
        live(create_app(judge, group_size=4, group_timeout=0.5)) as a,
        live(create_app(judge, group_size=4, group_timeout=0.5)) as b,
    ):
        order, outputs = rollouts(agent, judge.tokenizer, [f"{a}/get_reward", f"{b}/get_reward"], (0, 0, 1, 1))
    infos = [experience_info(out) for out in outputs]
    assert all(finite(out["reward"]) and set(out["extra_logs"]) == LOG_KEYS for out in outputs)
    assert torch.cat([i["reward"] for i in infos]).shape == (8, 1)
    assert all(out["extra_logs"]["judge/incomplete"] == 1 for out in outputs)
    assert sorted(out["extra_logs"]["judge/group_size"] for out in outputs) == [2.0] * 8
