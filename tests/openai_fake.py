"""Test servers on loopback: an OpenAI-compatible `/v1/completions` and `/v1/chat/completions` over a transformers
model (exact top-k logprobs), and a proxy in front of any such server that injects faults on request."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# vLLM's default `max_logprobs` (a request over it is a 400, vllm/sampling_params.py); OpenAI's API allows 0-20.
MAX_TOP_K = 20


def fake_openai_server(
    model, tokenizer, delay_s: float = 0.0, reverse: bool = False, max_top_k: int | None = MAX_TOP_K
) -> _Server:
    """`POST /v1/completions` with `max_tokens=1, logprobs=k`: the model's exact top-k next tokens (legacy shape);
    `POST /v1/chat/completions` with `logprobs=true, top_logprobs=k`: the same after the chat template, a final
    assistant message continued as vLLM's `continue_final_message` does (content shape). With `max_tokens > 1`:
    a greedy continuation up to a `stop` string, with each token's log-prob.

    `/v1/completions` also takes a list of prompts (`prompt: [...]`, as vLLM, SGLang and llama-server do): one choice
    per prompt, with its `index` (`reverse=True` lists them last to first, which a client must put back in order).
    HTTP/1.1 keep-alive, as real servers. A top-k over `max_top_k` (default 20, as vLLM and OpenAI) is an HTTP 400
    as vLLM answers it; `max_top_k=None` lists as many as asked, up to the whole vocabulary (an exactness server for
    tests that compare every label with the local backend, unlike any real one).

    It records what clients did: `authorization` (the last Authorization header), `arrivals` (monotonic time of
    each request), `prompts` (prompts per request), `peers` (the client ports that connected: one per connection)
    and `max_in_flight` (most requests handled at once; `delay_s` holds each one that long)."""
    lock, count = threading.Lock(), threading.Lock()
    state = {"in_flight": 0}

    def next_logprobs(ids):
        with lock, torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)

    def top_k(ids, k, chat):
        top = next_logprobs(ids).topk(k)
        tops = {}
        for lp, i in zip(top.values.tolist(), top.indices.tolist()):  # tokens with the same text: their sum
            text = tokenizer.decode([i])
            tops[text] = float(torch.logaddexp(torch.tensor(tops[text]), torch.tensor(lp))) if text in tops else lp
        if chat:
            listed = [{"token": t, "logprob": lp} for t, lp in tops.items()]
            step = {**listed[0], "top_logprobs": listed}
            return {"message": {"role": "assistant", "content": ""}, "logprobs": {"content": [step]}}
        return {"text": "", "logprobs": {"top_logprobs": [tops]}}

    def generate(ids, max_tokens, stop, chat):
        """Greedy tokens until EOS, `max_tokens` or a stop string (the text ends before it, as OpenAI's does)."""
        new, logprobs, text = [], [], ""
        for _ in range(max_tokens):
            logp = next_logprobs(ids + new)
            token = int(logp.argmax())
            new.append(token)
            logprobs.append(float(logp[token]))
            text = tokenizer.decode(new, skip_special_tokens=True)
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0 or token == tokenizer.eos_token_id:
                text = text[:cut] if cut >= 0 else text
                break
        if chat:
            content = [{"token": tokenizer.decode([t]), "logprob": lp} for t, lp in zip(new, logprobs)]
            return {"message": {"role": "assistant", "content": text}, "logprobs": {"content": content}}
        return {"text": text, "logprobs": {"token_logprobs": logprobs}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            with count:
                server.arrivals.append(time.monotonic())
                server.peers.add(self.client_address[1])
                server.authorization = self.headers.get("Authorization")
                state["in_flight"] += 1
                server.max_in_flight = max(server.max_in_flight, state["in_flight"])
            try:
                time.sleep(delay_s)
                self._answer()
            finally:
                with count:
                    state["in_flight"] -= 1

        def _answer(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            chat = self.path.endswith("/chat/completions")
            if chat:
                *head, last = body["messages"]
                if last["role"] == "assistant":  # continue the open turn
                    assert body["continue_final_message"]
                    prompt = tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
                    prompt += last["content"]
                else:
                    prompt = tokenizer.apply_chat_template(
                        body["messages"], tokenize=False, add_generation_prompt=True
                    )
            else:
                prompt = body["prompt"]
            prompts = prompt if isinstance(prompt, list) else [prompt]
            with count:
                server.prompts.append(len(prompts))
            out = []
            for i, prompt in enumerate(prompts):
                ids = tokenizer(prompt, add_special_tokens=False).input_ids
                if body["max_tokens"] > 1:
                    choice = generate(ids, body["max_tokens"], body.get("stop") or [], chat)
                else:
                    k = int(body["top_logprobs"] if chat else body["logprobs"])
                    if max_top_k is not None and k > max_top_k:
                        return self._error(400, f"Requested sample logprobs of {k}, which is greater than max "
                                                f"allowed: {max_top_k}")  # fmt: skip
                    choice = top_k(ids, k, chat)
                out.append({"index": i, **choice})
            self._send(200, {"choices": out[::-1] if reverse else out})

        def _error(self, status, message):
            self._send(status, {"object": "error", "message": message, "type": "BadRequestError", "code": status})

        def _send(self, status, payload):
            out = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = _Server(Handler)
    server.arrivals, server.prompts, server.peers, server.authorization, server.max_in_flight = [], [], set(), None, 0
    return server


def _without_ratings(body: dict) -> dict:
    def keep(token: str) -> bool:
        return not (token.strip().isdigit() or token.strip() in ("A", "B", "C"))

    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        if "content" in logprobs and isinstance(logprobs["content"], list):
            for step in logprobs["content"]:
                step["top_logprobs"] = [t for t in step["top_logprobs"] if keep(t["token"])]
        else:
            tops = logprobs["top_logprobs"]
            logprobs["top_logprobs"] = [{t: lp for t, lp in top.items() if keep(t)} for top in tops]
    return body


class FaultProxy(_Server):
    """Forwards to `target`; `faults` is a list consumed one per request ("500", "429", "malformed", "nologprobs",
    "noratings" (digits and verdict letters taken out of the top-k), "timeout", "drop"); `always` injects its
    fault into every request; `poison`: a request whose body holds this text gets HTTP 400 (as a server answers a
    batch with one prompt it rejects, e.g. too long). `seen` counts requests."""

    def __init__(self, target: str, timeout_s: float = 2.0):
        import urllib.request

        proxy, lock = self, threading.Lock()  # one lock for all requests: they pop the same list
        self.faults: list[str] = []
        self.always: str | None = None
        self.poison: str | None = None
        self.seen = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    proxy.seen += 1
                    fault = proxy.always or (proxy.faults.pop(0) if proxy.faults else None)
                if proxy.poison and proxy.poison.encode() in raw:
                    fault = "400"
                if fault in ("500", "429", "400"):
                    self.send_response(int(fault))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "timeout":
                    time.sleep(timeout_s)
                request = urllib.request.Request(target + self.path.removeprefix("/v1"), data=raw,
                                                 headers={"Content-Type": "application/json"})  # fmt: skip
                body = urllib.request.urlopen(request).read()
                if fault == "malformed":
                    body = body[: len(body) // 2]
                elif fault == "nologprobs":
                    body = json.dumps({"choices": [{"text": "5"}]}).encode()
                elif fault == "noratings":
                    body = json.dumps(_without_ratings(json.loads(body))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "drop":  # half the promised body, then the connection closes
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        super().__init__(Handler)
