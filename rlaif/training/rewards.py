"""Reward functions for `rlaif rl`, in the form TRL's on-line trainers call them:
`f(prompts=, completions=, **columns) -> list[float]`, one reward per completion.

- `RewardModelReward`: a reward model from `rlaif train-rm`, scored exactly as `rlaif score`
  scores (same padding and pooling), so RL optimises what `eval rm` measured.
- `JudgeReward` (direct RLAIF): the judge rates each completion against a principle sampled
  from the constitution, with the scorer `label --method rating` uses (`rlaif.judging.rating`): the
  expected rating Σ i·P(i) over the digit tokens 1–9, the digit prior of the reward call's
  batch removed, rescaled to [0, 1]. Reading probabilities instead of a sampled digit gives a
  smooth reward, which policy-gradient methods need to see small differences.
- `import_reward("module:function")`: any Python function with TRL's reward signature.
"""

from __future__ import annotations

import importlib
import random

from rlaif.engines import EngineSettings, make_engine
from rlaif.judging import prompts as templates
from rlaif.judging import rating
from rlaif.judging.constitution import load_constitution, resolve_constitution_path
from rlaif.plumbing.errors import UserError
from rlaif.plumbing.models import resolve_model
from rlaif.plumbing.seeds import derived_seed


def _text(item) -> str:
    """A completion or prompt as TRL passes it: plain text, or a list of chat messages."""
    if isinstance(item, str):
        return item
    return "".join(m["content"] for m in item if m.get("role") == "assistant") or (
        item[-1]["content"] if item else ""
    )


def _chat(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class RewardModelReward:
    __name__ = "reward_model"

    def __init__(self, path: str, batch_size: int = 8):
        from rlaif.training.reward_model import RewardModel

        self.model = RewardModel(path, batch_size=batch_size)

    def __call__(self, prompts, completions, **_) -> list[float]:
        chats = [
            [*_chat(p), {"role": "assistant", "content": _text(c)}]
            for p, c in zip(prompts, completions, strict=True)
        ]
        return self.model.score(chats)


class JudgeReward:
    __name__ = "judge"

    def __init__(
        self, judge_model: str, constitution: str, seed: int, engine: EngineSettings
    ) -> None:
        self.constitution = load_constitution(resolve_constitution_path(constitution))
        self.model = resolve_model(judge_model)
        self.seed = seed
        self.engine = make_engine(self.model.path, engine, seed)
        self.calls = 0

    def principle_for(self, prompt_text: str, completion: str):
        """A principle per completion, seeded by its content: reruns see the same ones."""
        rng = random.Random(derived_seed(self.seed, "judge-reward", prompt_text, completion))
        return rng.choice(self.constitution.principles)

    def __call__(self, prompts, completions, **_) -> list[float]:
        chats = []
        for p, c in zip(prompts, completions, strict=True):
            chat, answer = _chat(p), _text(c)
            principle = self.principle_for(prompts_key(chat), answer)
            chats.append(templates.rating_chat(chat, answer, principle.preference))
        # The whole call is one batch: the digit prior is removed over its completions.
        ratings = rating.rate(self.engine, chats)
        self.calls += 1
        return [rating.to_unit(r.score) for r in ratings]


def prompts_key(chat: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in chat)


def import_reward(spec: str):
    """`package.module:function` -> the function (a user's own reward)."""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--reward {spec}: cannot import it ({e})") from None
    if not callable(fn):
        raise UserError(f"--reward {spec}: not a function")
    return fn
