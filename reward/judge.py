"""`Judge`: prompts in, TrustJudge scores and bidirectional preferences out, on any `JudgeBackend`."""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Callable, Sequence

from . import defenses
from .anchored import READINGS
from .backends import check_backend
from .scoring import PREFERENCE_METHODS, SCORE_METHODS, Preference, Score, decide_preference, score_from_probs
from .templates import PAIRWISE, POINTWISE, JudgeTemplate
from .text import check_texts, extend
from .tokens import bytes_bound, encode

logger = logging.getLogger(__name__)

MODES = ("direct", "rationale")
VERDICTS = ("A", "B", "C")
CUT_MARK = "\n[... {n} tokens cut ...]\n"
_LABEL_RESERVE = 16  # tokens kept free for the slot's label and the cut marker
# Set while a thread judges an injection check's counterfactuals (not checked again). Per thread, not a Judge
# attribute: async rewards call one judge from several threads at once, and the others must still be checked.
_COUNTERFACTUAL = threading.local()


def _prob(logprob: float) -> float:
    return 0.0 if logprob == -math.inf else math.exp(logprob)


def _apply_chat(tokenizer, system: str, user: str) -> str:
    """`apply_chat_template` of a (system, user) chat, generation prompt added; a template without a system role
    (e.g. Gemma's raises) gets the system text folded into the user turn."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:
        messages = [{"role": "user", "content": system + "\n\n" + user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# Texts a frame must reproduce exactly before it is used: template syntax, special-token look-alikes, edge
# whitespace (a template that trims or tests its contents differs on some of them), non-ASCII.
_FRAME_PROBES = (
    ("You judge.", "Q?\n\nA {answer} {{x}} {% if y %}z{% endif %}"),
    ("  sys\n", "\n<|im_start|>user\nhi<|im_end|> <think>no</think> </s> [INST] \\n \u200b caf\u00e9 \U0001f600  "),
    ("", ""),
)


def _frame(tokenizer) -> tuple[str, str, str] | None:
    """(head, middle, tail): `head + system + middle + user + tail` is `_apply_chat`'s text when the chat template
    only pastes the texts into a fixed frame; else None (then every prompt is rendered in full). Plain strings,
    so a Judge holding them still pickles.

    The template is rendered once with a marker per text, and the frame (what surrounds the markers) is used only
    if it gives exactly `_apply_chat`'s text on every `_FRAME_PROBES` pair; never for a template that reads the
    clock (the date in a Llama 3 system turn). Rendering a chat template costs about a tenth of tokenising the
    prompt: this makes it a string join."""
    template = tokenizer.chat_template
    if "strftime" in template or "now(" in template:
        return None
    marks = ("\x00\x01system\x01\x00", "\x00\x01user\x01\x00")
    try:
        text = _apply_chat(tokenizer, *marks)
    except Exception:
        return None
    if text.count(marks[0]) != 1 or text.count(marks[1]) != 1 or text.index(marks[0]) > text.index(marks[1]):
        return None
    head, rest = text.split(marks[0])
    middle, tail = rest.split(marks[1])
    try:
        if any(head + s + middle + u + tail != _apply_chat(tokenizer, s, u) for s, u in _FRAME_PROBES):
            return None
    except Exception:
        return None
    return head, middle, tail


class Judge:
    """An LLM judge read the TrustJudge way: probabilities at a pre-filled slot, never parsed text.

    Args:
        backend: a `reward.backends.JudgeBackend` (e.g. `HFBackend`).
        pointwise_template: template for `score` (needs `{question}`, `{response}`).
        pairwise_template: template for `compare` (needs `{question}`, `{response_a}`, `{response_b}`).
        rationale_tokens: most tokens the judge may write before the slot in `mode="rationale"`.
        batch_size: most prompts per backend call (also the progress bar's step); default `None`: each call goes to
            the backend whole, which batches it by its own budget (a local model: tokens per forward and the prefix
            cache over the whole call; a served judge: prompts per request).
        progress: show a progress bar on calls of more than one batch.
        neutralize: remove look-alikes of the template's syntax from responses ("Score: [5]", "[[A]]", also with
            zero-width characters, full-width brackets or Cyrillic letters; `reward.defenses.neutralize`).
        injection_check: the counterfactual check: a response holding rating-like or judge-addressed text
            (`reward.defenses.suspicious_spans`) is judged again without it and keeps the lower result. Costs one
            more judgement per suspect; `injection_stats` counts suspects, extra prompts and lowered results.
        fence_secret: key of the fence nonces for templates with a `{nonce}` field (e.g. `POINTWISE_FENCED`);
            default: a random key per judge. The nonce is an HMAC of the judged texts, so a prompt is the same
            every time for the same texts (deterministic results), yet a response cannot guess its fence.
        score_reading: how pointwise rewards read this judge (`reward.anchored.reward_scores`): "anchored"
            (default: a both-order comparison with an anchor answer, which a rating written in the response cannot
            move) or "direct" (the score slot, as `score` reads it; a judge copies ratings written in the answer).
            `score` itself always reads the slot.

    Responses longer than the judge's context are cut: the head and the tail are kept around a
    "[... N tokens cut ...]" mark, and the result is flagged `truncated`.
    """

    def __init__(
        self,
        backend,
        *,
        pointwise_template: JudgeTemplate = POINTWISE,
        pairwise_template: JudgeTemplate = PAIRWISE,
        rationale_tokens: int = 256,
        batch_size: int | None = None,
        progress: bool = True,
        neutralize: bool = True,
        injection_check: bool = False,
        fence_secret: bytes | str | None = None,
        score_reading: str = "anchored",
    ):
        if score_reading not in READINGS:
            raise ValueError(f"score_reading must be one of {', '.join(READINGS)}; got {score_reading!r}")
        for template, fields in (
            (pointwise_template, {"question", "response"}),
            (pairwise_template, {"question", "response_a", "response_b"}),
        ):
            if not isinstance(template, JudgeTemplate) or set(template.required) != fields:
                raise ValueError(f"template must be a JudgeTemplate with required fields {sorted(fields)}")
        self.backend = backend
        self.pointwise_template = pointwise_template
        self.pairwise_template = pairwise_template
        self.rationale_tokens = rationale_tokens
        self.batch_size = batch_size
        self.progress = progress
        self._factory: Callable[[], Judge] | None = None  # set by load_judge: pickles as "load it again"
        check_backend(backend)
        tokenizer = backend.tokenizer
        self._specials = defenses.special_tokens(tokenizer)  # all of them, not only the chat-turn ones
        self.neutralize, self.injection_check = neutralize, injection_check
        self._fence_secret = fence_secret.encode() if isinstance(fence_secret, str) else fence_secret
        self._fence_secret = self._fence_secret or secrets.token_bytes(16)
        self.injection_stats = {"checked": 0, "suspects": 0, "extra_prompts": 0, "lowered": 0}
        self._chat = backend.chat
        self.score_reading = score_reading

    @property
    def model(self):
        return getattr(self.backend, "model", None)

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    def __reduce__(self):
        # TRL's AsyncGRPOTrainer pickles rewards into a child process: ship the recipe, not the weights.
        if self._factory is None:
            return super().__reduce__()
        return (self._factory, ())

    # -- prompt building -------------------------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        # A response must not open or close chat turns or emit control tokens: break every special-token string.
        return defenses.break_specials(text, self._specials)

    def _defend(self, template: JudgeTemplate, fields: dict) -> dict:
        """The responses' injection defenses, applied right before rendering (after cutting: they only shorten the
        text, so the fitted prompt still fits): template look-alikes removed, specials broken, the fence's nonce."""
        keys = [k for k in template.required if k != "question"]
        fields = dict(fields)
        if self.neutralize:
            for k in keys:
                fields[k] = defenses.neutralize(fields[k], template)
        if "nonce" in template.optional and "nonce" not in fields:
            fields["nonce"] = defenses.fence_nonce(self._fence_secret, *(fields[k] for k in keys))
        return fields

    def _render(self, template: JudgeTemplate, fields: dict, text: bool = False, defended: bool = False):
        """The prompt, ending right where the judge's answer starts (the slot is appended later): chat-formatted
        text, or the messages themselves for a backend that takes chats (`backend.chat`; the server formats them).
        `defended`: `fields` went through `_defend` already."""
        system, user = template.render(**(fields if defended else self._defend(template, fields)))
        if self._chat and not text:
            return [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self._chat_text(system, user)

    def _chat_text(self, system: str, user: str) -> str:
        """The chat template's text of a (system, user) chat with the generation prompt: the template's frame,
        rendered once, around the two texts (see `_frame`), or the template rendered in full."""
        tok = self.tokenizer
        template = getattr(tok, "chat_template", None)
        if not template:
            return f"{tok.bos_token or ''}{system}\n\n{user}\n\n"
        if self.__dict__.get("_framed", (None,))[0] is not template:  # once per chat template
            self._framed = (template, _frame(tok))
        frame = self._framed[1]
        if frame is not None:
            return frame[0] + system + frame[1] + user + frame[2]
        return _apply_chat(tok, system, user)

    def _count(self, text: str) -> int:
        return len(encode(self.tokenizer, [text])[0])

    def _bound(self, text: str) -> int | None:
        """An upper bound on `_count(text)` without tokenising (UTF-8 bytes + 1, byte-level BPE), else None."""
        tokenizer = self.tokenizer
        if self.__dict__.get("_bounded", (None,))[0] is not tokenizer:  # checked once per tokenizer
            self._bounded = (tokenizer, bytes_bound(tokenizer))
        return len(text.encode()) + 1 if self._bounded[1] else None

    def _cut(self, text: str, budget: int) -> tuple[str, bool]:
        bound = self._bound(text)
        if bound is not None and bound <= budget:  # fits for sure: no need to tokenise it
            return text, False
        ids = encode(self.tokenizer, [text])[0]
        if len(ids) <= budget:
            return text, False
        keep = max(budget - _LABEL_RESERVE, 2)
        while True:
            head, tail = ids[: keep // 2], ids[len(ids) - (keep - keep // 2) :]
            cut = self.tokenizer.decode(head) + CUT_MARK.format(n=len(ids) - keep) + self.tokenizer.decode(tail)
            # Decoded pieces tokenise again differently (a character split at the cut, merges across it): the
            # cut text is counted and cut shorter until it fits.
            over = self._count(cut) - budget
            if over <= 0 or keep <= 2:
                return cut, True
            keep = max(keep - over, 2)

    def _fit(self, template: JudgeTemplate, fields: dict, response_keys: tuple[str, ...], mode: str):
        """Cleans the fields and cuts the responses to fit the context; returns (fields or None, truncated, error)."""
        fields = {k: self._clean(v) if isinstance(v, str) else v for k, v in fields.items()}
        empty = self._render(template, {**fields, **{k: "" for k in response_keys}}, text=True)
        slots = self.__dict__.setdefault("_slot_counts", {})  # a template's slot is counted once
        if template.slot not in slots:
            slots[template.slot] = self._count(template.slot)
        reserve = _LABEL_RESERVE + slots[template.slot] + (self.rationale_tokens if mode == "rationale" else 0)
        # The prompt around the responses is counted only if its bound leaves too little room for them: a prompt
        # that fits is then tokenised once, by the backend.
        bound = self._bound(empty)
        budget = (self.backend.max_length - (bound or 0) - reserve) // len(response_keys)
        if bound is None or budget < 2 * _LABEL_RESERVE or any(self._bound(fields[k]) > budget for k in response_keys):
            budget = (self.backend.max_length - self._count(empty) - reserve) // len(response_keys)
        if budget < 2 * _LABEL_RESERVE:
            return None, False, f"the question alone fills the judge's context (max_length={self.backend.max_length})"
        truncated = False
        for key in response_keys:
            fields[key], cut = self._cut(fields[key], budget)
            truncated |= cut
        return fields, truncated, None

    def fit_responses(self, prompt: str, responses: Sequence[str], mode: str = "direct") -> list[tuple[str, bool]]:
        """Each response cut once to what a pairwise prompt of `prompt` holds for it: (text, cut). A group's
        responses meet several peers; cut here, `compare` finds every pair fitting and tokenises only what fits,
        instead of a long response in full once per pair. The same cut `compare` would make."""
        keys = ("response_a", "response_b")
        fields = {"question": self._clean(prompt), **dict.fromkeys(keys, "")}
        if all((bound := self._bound(r)) is not None and bound * 2 < self.backend.max_length for r in responses):
            return [(r, False) for r in responses]  # short: nothing to cut (the usual case), nothing tokenised
        empty = self._render(self.pairwise_template, fields, text=True)
        slots = self.__dict__.setdefault("_slot_counts", {})
        if self.pairwise_template.slot not in slots:
            slots[self.pairwise_template.slot] = self._count(self.pairwise_template.slot)
        reserve = _LABEL_RESERVE + slots[self.pairwise_template.slot]
        reserve += self.rationale_tokens if mode == "rationale" else 0
        budget = (self.backend.max_length - self._count(empty) - reserve) // 2
        if budget < 2 * _LABEL_RESERVE:
            return [(r, False) for r in responses]  # compare reports the question filling the context
        return [self._cut(self._clean(r), budget) for r in responses]  # cleaning again in compare changes nothing

    def _build(self, template: JudgeTemplate, fields: dict, response_keys: tuple[str, ...], mode: str):
        """Renders one prompt, cutting its responses to fit; returns (prompt or None, truncated, error)."""
        fitted, truncated, error = self._fit(template, fields, response_keys, mode)
        return (self._render(template, fitted) if fitted else None), truncated, error

    # -- running -----------------------------------------------------------------------------------------------

    def _chunks(self, n: int, desc: str):
        """Starts of the backend calls: one for the whole call (the backend batches by its own budget), or
        `batch_size` prompts each, with a progress bar on more than one."""
        step = self.batch_size or max(1, n)
        starts = range(0, n, step)
        if self.progress and n > step:
            from tqdm.auto import tqdm

            return tqdm(starts, desc=desc, unit="batch")
        return starts

    def _read(self, prompts: list[str], template: JudgeTemplate, labels: list[str], mode: str, desc: str):
        """Label log-probs (and the judge's output log-prob and length) per prompt; failures become error strings
        (a failed batch is judged again prompt by prompt, so a bad prompt costs only itself)."""
        out: list[tuple[dict[str, float], float, int] | str] = []
        lockstep = self.backend.lockstep
        n, step = len(prompts), self.batch_size or max(1, len(prompts))
        if lockstep:  # a sharded judge: every rank makes as many backend calls as the busiest (empty ones too)
            n = max(n, self.backend.agree(-(-n // step) if self.batch_size else 1) * step)
        for start in self._chunks(n, desc):
            out += self._isolated(prompts[start : start + step], template, labels, mode)
        return out

    def _isolated(self, prompts: list, template: JudgeTemplate, labels: list[str], mode: str) -> list:
        """`_run`'s reads; a backend call that raises is split in halves until the failing prompts are alone, so
        one bad prompt costs only itself (the one place failures are isolated). A sharded judge raises instead: the
        other ranks wait in collectives for this one, and must fail too rather than hang."""
        try:
            return self._run(prompts, template, labels, mode)
        except Exception as exc:
            if self.backend.lockstep:
                raise
            if len(prompts) <= 1:
                logger.warning("judge prompt failed: %s: %s", type(exc).__name__, exc)
                return [f"{type(exc).__name__}: {exc}"] * len(prompts)
            half = len(prompts) // 2
            return [*self._isolated(prompts[:half], template, labels, mode),
                    *self._isolated(prompts[half:], template, labels, mode)]  # fmt: skip

    def _run(self, prompts: list, template: JudgeTemplate, labels: list[str], mode: str) -> list:
        """One backend call (two in rationale mode: the critique, then the slot after it)."""
        gen = [("", 0.0, 0)] * len(prompts)
        if mode == "rationale":
            marker = template.slot.split("[")[0].strip() or template.slot
            gen = self.backend.generate(prompts, self.rationale_tokens, stop=[marker])
            prompts = [extend(p, text.removesuffix(marker).rstrip() + "\n" + template.slot)
                       for p, (text, _, _) in zip(prompts, gen)]  # fmt: skip
        else:
            prompts = [extend(p, template.slot) for p in prompts]
        lps = self.backend.label_logprobs(prompts, labels)
        return [(lp, g_lp, g_n) for lp, (_, g_lp, g_n) in zip(lps, gen)]

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        scale: int = 5,
        method: str = "trustjudge",
        mode: str = "direct",
        temperature: float = 0.2,
    ) -> list[Score]:
        """Pointwise TrustJudge scores, one `Score` per (prompt, response).

        Args:
            prompts: the questions.
            responses: the answers to judge.
            scale: ratings 1..scale (5 and 100 are the paper's; multi-digit ratings are chained exactly).
            method: "trustjudge", "mean", "geval" or "argmax" (see `reward.scoring.expected_score`).
            mode: "direct" (read the slot right away) or "rationale" (the judge critiques first).
            temperature: temperature of the "trustjudge" softmax.
        """
        prompts = check_texts("prompts", prompts)
        responses = check_texts("responses", responses, len(prompts))
        if method not in SCORE_METHODS:
            raise ValueError(f"unknown score method {method!r}; choose from {SCORE_METHODS}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        if not isinstance(scale, int) or not 2 <= scale <= 100:
            raise ValueError(f"scale must be an integer in [2, 100], got {scale!r}")
        labels = [str(s) for s in range(1, scale + 1)]
        built = [
            self._build(
                self.pointwise_template,
                {"question": q, "response": r, "min_score": "1", "max_score": str(scale)},
                ("response",),
                mode,
            )
            for q, r in zip(prompts, responses)
        ]
        ok = [i for i, (p, _, _) in enumerate(built) if p is not None]
        reads = self._read([built[i][0] for i in ok], self.pointwise_template, labels, mode, "judge score")
        results = [Score(expected=None, error=err, truncated=cut) for _, cut, err in built]
        for i, read in zip(ok, reads):
            if isinstance(read, str):
                results[i].error = read
                continue
            probs = {int(label): _prob(lp) for label, lp in read[0].items()}
            results[i] = score_from_probs(probs, method, temperature, truncated=built[i][1])
            results[i].valid_mass_exact = self.backend.exact_reads  # a served top-k: a bound
        if self.injection_check and not getattr(_COUNTERFACTUAL, "active", False):
            options = {"scale": scale, "method": method, "mode": mode, "temperature": temperature}
            results = self._check_scores(prompts, responses, results, options)
        return results

    def compare(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        *,
        method: str = "likelihood",
        mode: str = "direct",
    ) -> list[Preference]:
        """Bidirectional pairwise judgements: each pair is judged in both orders and the two are merged.

        Args:
            prompts: the questions.
            responses_a, responses_b: the two answers of each pair.
            method: "likelihood" (merged probabilities decide), "ppl" (the order whose judge output has the
                lower perplexity decides) or "baseline" (both orders must agree, else tie).
            mode: "direct" or "rationale".
        """
        prompts = check_texts("prompts", prompts)
        responses_a = check_texts("responses_a", responses_a, len(prompts))
        responses_b = check_texts("responses_b", responses_b, len(prompts))
        if method not in PREFERENCE_METHODS:
            raise ValueError(f"unknown preference method {method!r}; choose from {PREFERENCE_METHODS}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        keys = ("response_a", "response_b")
        built = []  # per pair: (prompt a-first, prompt b-first) or None, truncated, error
        for q, a, b in zip(prompts, responses_a, responses_b):
            # Both orders hold the same texts, so one fit (tokenise, cut) serves both renders.
            fitted, truncated, error = self._fit(
                self.pairwise_template, dict(zip(("question", *keys), (q, a, b))), keys, mode
            )
            if fitted:  # the defenses work per response (the nonce is order-free): once for both orders
                fitted = self._defend(self.pairwise_template, fitted)
                swapped = {**fitted, "response_a": fitted["response_b"], "response_b": fitted["response_a"]}
                fitted = tuple(self._render(self.pairwise_template, f, defended=True) for f in (fitted, swapped))
            built.append((fitted, truncated, error))
        ok = [i for i, (orders, _, _) in enumerate(built) if orders]
        flat = [built[i][0][order] for i in ok for order in (0, 1)]
        reads = self._read(flat, self.pairwise_template, list(VERDICTS), mode, "judge compare")
        results = [Preference(None, None, None, error=error, truncated=truncated) for _, truncated, error in built]
        for k, i in enumerate(ok):
            truncated = built[i][1]
            read_ab, read_ba = reads[2 * k], reads[2 * k + 1]
            if isinstance(read_ab, str) or isinstance(read_ba, str):
                results[i].error = read_ab if isinstance(read_ab, str) else read_ba
                continue
            orders = [{label: _prob(lp) for label, lp in read[0].items()} for read in (read_ab, read_ba)]
            if min(sum(o.values()) for o in orders) <= 0:
                results[i].error = "the judge put no probability on any verdict in one order"
                results[i].valid_mass_exact = self.backend.exact_reads
                continue
            # Perplexity of the judge's own output in each order: its critique (if any) plus its likeliest verdict.
            ppl = None
            if method == "ppl":
                ppl = tuple(math.exp(-(g_lp + max(lp.values())) / (g_n + 1)) for lp, g_lp, g_n in (read_ab, read_ba))
            pref = decide_preference(orders[0], orders[1], method, perplexity=ppl)
            pref.truncated, pref.valid_mass_exact = truncated, self.backend.exact_reads
            results[i] = pref
        if self.injection_check and not getattr(_COUNTERFACTUAL, "active", False):
            results = self._check_prefs(prompts, responses_a, responses_b, results, {"method": method, "mode": mode})
        return results

    def rubric(self, prompts: Sequence[str], responses: Sequence[str], rubrics: Sequence, *, mode: str = "explicit",
               references: Sequence[str] | None = None) -> list:  # fmt: skip
        """Rubric rewards, one `reward.rubric_judging.RubricScore` per (prompt, response): each criterion's choices
        read exactly ("explicit"), one 1-10 score given all criteria in both orders ("implicit"), or each criterion
        compared with an anchor answer in both orders ("pairwise", `references`). See `reward.rubric_judging`."""
        from .rubric_judging import judge_rubrics  # (it builds on this module)

        return judge_rubrics(self, prompts, responses, rubrics, mode=mode, references=references)

    # -- the counterfactual injection check (injection_check=True) ------------------------------------------------

    def _counterfactual(self, template: JudgeTemplate, text: str, labels=()) -> str | None:
        """`text` without its suspicious spans, or `None` when it has none (`labels`: a rubric's own choices)."""
        if not defenses.suspicious_spans(text, template, labels):
            return None
        cleaned = defenses.without_suspicious(text, template, labels)
        if self.neutralize and cleaned == defenses.neutralize(text, template, labels):
            return None  # only template look-alikes, which neutralize removed already: nothing to judge again
        return cleaned or "(empty answer)"

    def _suspects(self, template: JudgeTemplate, items: list, n_items: int):
        """Indexes to judge again, (items rewritten); counts them. A sharded judge judges again on every rank."""
        redo = [i for i, item in enumerate(items) if item is not None]
        self.injection_stats["checked"] += n_items
        self.injection_stats["suspects"] += len(redo)
        return redo, bool(redo) or self.backend.lockstep

    def _check_scores(self, prompts, responses, results, options) -> list:
        cleaned = [self._counterfactual(self.pointwise_template, r) for r in responses]
        redo, call = self._suspects(self.pointwise_template, cleaned, len(responses))
        if not call:
            return results
        _COUNTERFACTUAL.active = True  # the counterfactual judgement itself is not checked again
        try:
            again = self.score([prompts[i] for i in redo], [cleaned[i] for i in redo], **options)
        finally:
            _COUNTERFACTUAL.active = False
        self.injection_stats["extra_prompts"] += len(redo)
        for i, alt in zip(redo, again):
            old = results[i]
            if alt.error is None and (old.error is not None or alt.expected < old.expected):
                alt.truncated = alt.truncated or old.truncated
                results[i] = alt
                self.injection_stats["lowered"] += 1
        return results

    def _check_prefs(self, prompts, responses_a, responses_b, results, options) -> list:
        template = self.pairwise_template
        pairs = list(zip(responses_a, responses_b))
        cleaned = [(self._counterfactual(template, a), self._counterfactual(template, b)) for a, b in pairs]
        items = [None if ca is None and cb is None else (ca or a, cb or b) for (a, b), (ca, cb) in zip(pairs, cleaned)]
        redo, call = self._suspects(template, items, len(pairs))
        if not call:
            return results
        _COUNTERFACTUAL.active = True
        try:
            again = self.compare(
                [prompts[i] for i in redo], [items[i][0] for i in redo], [items[i][1] for i in redo], **options
            )
        finally:
            _COUNTERFACTUAL.active = False
        self.injection_stats["extra_prompts"] += 2 * len(redo)
        for i, alt in zip(redo, again):
            old = results[i]
            if alt.error is not None:
                continue
            if old.error is not None or (cleaned[i][0] and cleaned[i][1]):  # both suspects: the cleaned pair
                results[i] = alt
                self.injection_stats["lowered"] += old.error is None
                continue
            # One suspect: keep the judgement that gives it the lower win probability (a tie counts half).
            side = "p_a" if cleaned[i][0] else "p_b"
            if getattr(alt, side) + alt.p_tie / 2 < getattr(old, side) + old.p_tie / 2:
                alt.truncated = alt.truncated or old.truncated
                results[i] = alt
                self.injection_stats["lowered"] += 1
        return results
