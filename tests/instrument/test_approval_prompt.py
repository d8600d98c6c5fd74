"""The approval question marks the task's opening commands (sent on reset, before the policy)."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np

import scopegym  # noqa: F401  (registers the ids)
from scopegym.instrument import Scan, Zoom
from scopegym.instrument.safety import OPENING_MARK, Approval, SafeInstrument
from scopegym.sim import TwinMicroscope


class Answers:
    """Says yes to every question and keeps the prompts."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return "y"


def test_questions_inside_opening_are_marked_and_later_ones_are_not():
    answers = Answers()
    approval = Approval("command", input_fn=answers, out=io.StringIO())
    safe = SafeInstrument(TwinMicroscope("graphene", seed=0), approval=approval)
    with approval.opening():
        safe.execute(Zoom(8.0))
    safe.execute(Scan(64, 2.0))
    assert answers.prompts[0] == f"{OPENING_MARK}approve Zoom(fov_nm=8.0)? [y]es/[n]o/[s]top: "
    assert answers.prompts[1].startswith("approve Scan(size_px=64")
    safe.close()


def test_the_mark_ends_even_when_the_opening_fails():
    answers = Answers()
    approval = Approval("command", input_fn=answers, out=io.StringIO())
    try:
        with approval.opening():
            raise RuntimeError("the instrument dropped out during the opening")
    except RuntimeError:
        pass
    safe = SafeInstrument(TwinMicroscope("graphene", seed=0), approval=approval)
    safe.execute(Zoom(8.0))
    assert not answers.prompts[0].startswith(OPENING_MARK)
    safe.close()


def test_an_environment_reset_inside_opening_marks_exactly_its_opening_commands():
    answers = Answers()
    approval = Approval("command", input_fn=answers, out=io.StringIO())
    safe = SafeInstrument(TwinMicroscope("graphene", seed=0), approval=approval)
    env = gym.make("scopegym/Autotune-v1", instrument=safe, frame_px=64)
    with approval.opening():
        env.reset(seed=0)
    opening = len(answers.prompts)
    assert opening >= 1
    masks = env.unwrapped.action_masks()
    offsets = np.concatenate([[0], np.cumsum(env.action_space.nvec)])
    first_valid = [
        int(np.flatnonzero(masks[a:b])[0]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]
    env.step(np.array(first_valid))
    marked = [prompt.startswith(OPENING_MARK) for prompt in answers.prompts]
    assert marked == [True] * opening + [False] * (len(marked) - opening)
    assert len(marked) == opening + 1  # one command per step
    env.close()
