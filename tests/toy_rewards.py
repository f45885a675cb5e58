"""Rewards with a known right answer, for testing that RL moves a policy where it is told.

Importable as `toy_rewards:<name>` by `rlaif rl --reward` when tests/ is on the Python path.
"""

MAX_NEW_TOKENS = 32


def brevity(prompts, completions, completion_ids, **_):
    """1 for an immediate end of turn, 0 for a completion cut off at the length limit."""
    return [1.0 - len(ids) / MAX_NEW_TOKENS for ids in completion_ids]
