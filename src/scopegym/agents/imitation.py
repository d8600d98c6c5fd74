"""Behaviour cloning of scripted baselines, to start reinforcement learning from an operator.

PPO from random weights spends its first few hundred thousand steps finding out that atomic
resolution needs the smallest field of view and the longest dwell. Cloning the scripted protocols
(:mod:`scopegym.agents.baselines`) first gives it the operator's habits; PPO then improves on
them with the task's reward. ``scopegym-train pretrain.policies=[raster,greedy]`` does this before
``learn``. Privileged teachers (:mod:`scopegym.agents.teachers`), which read the twin's ground
truth, can be cloned the same way; the student still sees only the observation.

The policy is trained to maximise the log-likelihood of the demonstrated commands, counting only
the action entries the demonstrated verb reads (a Scan's ``dx`` is arbitrary, and may even be
masked). Its value head is fitted to the demonstrations' discounted returns, so the first PPO
updates do not undo the cloning with advantages from an untrained critic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from scopegym.agents.baselines import BASELINES, ScriptedPolicy, make_baseline
from scopegym.agents.teachers import TEACHERS
from scopegym.envs.actions import ARGUMENTS, VERB_ARGUMENTS

log = logging.getLogger(__name__)


@dataclass
class Demonstrations:
    """Steps of scripted episodes, stacked.

    Attributes:
        observations: Observation entries, each with a leading step axis.
        actions: MultiDiscrete actions, (steps, entries).
        masks: Action masks the environment gave, (steps, sum of nvec).
        relevant: Which action entries the step's verb reads, (steps, entries).
        returns: Discounted return from each step to the episode's end [reward units].
        episode_returns: Undiscounted return of each episode [reward units].
    """

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    masks: np.ndarray
    relevant: np.ndarray
    returns: np.ndarray
    episode_returns: np.ndarray

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def _relevant_entries(verbs: Sequence[str], action: np.ndarray) -> np.ndarray:
    relevant = np.zeros(action.shape[0], dtype=bool)
    relevant[0] = True
    verb = verbs[int(action[0])]
    for name in VERB_ARGUMENTS[verb]:
        relevant[1 + ARGUMENTS.index(name)] = True
    return relevant


class _Recorder:
    """Episodes of one environment, kept as :class:`Demonstrations` step by step.

    Each step records the observation, the environment's mask and an action to imitate; the
    environment is stepped with a possibly different action (a student acting while a
    teacher labels), and the returns are those of the episode that was run.
    """

    def __init__(self, env: gym.Env[Any, Any], gamma: float) -> None:
        self.env = env
        core: Any = env.unwrapped
        self.core = core
        self.verbs = core.codec.config.verbs
        self.gamma = float(gamma)
        self.observations: dict[str, list[np.ndarray]] = {}
        self.actions: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.relevant: list[np.ndarray] = []
        self.returns: list[np.ndarray] = []
        self.totals: list[float] = []

    def episode(
        self, seed: int, choose: Callable[[Any, np.ndarray], tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """Run one episode; ``choose(obs, mask)`` gives (recorded action, executed action)."""
        obs, _ = self.env.reset(seed=seed)
        rewards: list[float] = []
        done = False
        while not done:
            mask = self.core.action_masks()
            recorded, executed = choose(obs, mask)
            recorded = np.asarray(recorded, dtype=np.int64)
            for key, value in obs.items():
                self.observations.setdefault(key, []).append(np.asarray(value))
            self.actions.append(recorded)
            self.masks.append(mask)
            self.relevant.append(_relevant_entries(self.verbs, recorded))
            obs, reward, terminated, truncated, _ = self.env.step(executed)
            rewards.append(float(reward))
            done = terminated or truncated
        discounted = np.zeros(len(rewards))
        running = 0.0
        for t in range(len(rewards) - 1, -1, -1):
            running = rewards[t] + self.gamma * running
            discounted[t] = running
        self.returns.append(discounted)
        self.totals.append(sum(rewards))

    def demonstrations(self) -> Demonstrations:
        """Everything recorded so far."""
        return Demonstrations(
            observations={key: np.stack(values) for key, values in self.observations.items()},
            actions=np.stack(self.actions),
            masks=np.stack(self.masks),
            relevant=np.stack(self.relevant),
            returns=np.concatenate(self.returns).astype(np.float32),
            episode_returns=np.asarray(self.totals),
        )


def make_demonstrator(name: str, env: gym.Env[Any, Any], **kwargs: Any) -> ScriptedPolicy:
    """A scripted baseline or a privileged teacher (:data:`~scopegym.agents.teachers.TEACHERS`).

    Args:
        name: Baseline or teacher name.
        env: The environment.
        **kwargs: The policy's own arguments (``deadband`` of ``pair_regressor``, ...).

    Raises:
        KeyError: Unknown name; the message lists baselines and teachers.
    """
    if name in TEACHERS:
        return TEACHERS[name](env, **kwargs)
    if name not in BASELINES:
        raise KeyError(
            f"unknown demonstrator {name!r}; baselines: {sorted(BASELINES)}, "
            f"teachers: {sorted(TEACHERS)}"
        )
    return make_baseline(name, env, **kwargs)


def collect_demonstrations(
    make_env: Callable[[], gym.Env[Any, Any]],
    policies: Sequence[str],
    episodes: int,
    gamma: float,
    seed: int = 0,
    policy_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Demonstrations:
    """Run scripted baselines and keep what they saw and did.

    Args:
        make_env: Builds the environment (training samples, as the agent will see them).
        policies: Baseline or teacher names; each runs ``episodes`` episodes.
        episodes: Episodes per baseline.
        gamma: Discount of the returns the value head is fitted to.
        seed: Reset seed of the first episode; the others follow.
        policy_kwargs: Arguments of some of the policies, by name.
    """
    env = make_env()
    recorder = _Recorder(env, gamma)
    try:
        for p_index, name in enumerate(policies):
            policy = make_demonstrator(name, env, **dict((policy_kwargs or {}).get(name, {})))

            def demonstrate(
                obs: Any, mask: np.ndarray, policy: ScriptedPolicy = policy
            ) -> tuple[np.ndarray, np.ndarray]:
                action, _ = policy.predict(obs, action_masks=mask, deterministic=True)
                return action, action

            for episode in range(episodes):
                policy.reset()
                recorder.episode(seed + p_index * episodes + episode, demonstrate)
    finally:
        env.close()
    return recorder.demonstrations()


def to_joint(demonstrations: Demonstrations, joint: Any) -> Demonstrations:
    """Demonstrations in a :class:`~scopegym.envs.JointActions` encoding: one command index each.

    Args:
        demonstrations: Recorded in the environment's MultiDiscrete encoding.
        joint: The JointActions wrapper of that environment (its table and masks).
    """
    actions = np.array([[joint.encode(a)] for a in demonstrations.actions], dtype=np.int64)
    return Demonstrations(
        observations=demonstrations.observations,
        actions=actions.reshape(-1, 1),
        masks=np.stack([joint.joint_masks(m) for m in demonstrations.masks]).reshape(
            len(demonstrations), -1
        ),
        relevant=np.ones((len(demonstrations), 1), dtype=bool),
        returns=demonstrations.returns,
        episode_returns=demonstrations.episode_returns,
    )


def _encoded(model: Any, demonstrations: Demonstrations, joint: Any) -> Demonstrations:
    """The demonstrations in the model's action encoding (MultiDiscrete, or JointActions)."""
    from gymnasium import spaces

    if isinstance(model.action_space, spaces.Discrete):
        if joint is None or joint.action_space != model.action_space:
            raise ValueError(
                "the model chooses whole commands (a Discrete action space): pass the "
                "environment's JointActions wrapper as joint="
            )
        return to_joint(demonstrations, joint)
    assert len(np.asarray(model.action_space.nvec)) == demonstrations.actions.shape[1]
    return demonstrations


def _batch_figures(
    policy: Any, demonstrations: Demonstrations, index: np.ndarray, maskable: bool
) -> tuple[Any, Any, Any]:
    """Negative log-likelihood, value loss and agreement of a policy on some demonstrated steps.

    Returns:
        ``(nll, value_loss, agreement)`` as torch scalars: the NLL of the entries each step's
        verb reads, per step [nats]; the value head's squared error against the discounted
        returns; the fraction of steps whose most likely action matches on every such entry.
    """
    import torch

    obs = {key: value[index] for key, value in demonstrations.observations.items()}
    obs_tensor, _ = policy.obs_to_tensor(obs)
    if maskable:
        masks = demonstrations.masks[index]
        distribution = policy.get_distribution(obs_tensor, action_masks=masks)
    else:
        distribution = policy.get_distribution(obs_tensor)
    # One categorical per action entry: sb3-contrib names the list `distributions`; a
    # Discrete action space (JointActions) has a single one.
    parts = getattr(distribution, "distributions", None) or distribution.distribution
    if not isinstance(parts, (list, tuple)):
        parts = [parts]
    actions = torch.as_tensor(demonstrations.actions[index], device=policy.device)
    weights = torch.as_tensor(
        demonstrations.relevant[index], dtype=torch.float32, device=policy.device
    )
    per_entry = torch.stack(
        [part.log_prob(actions[:, i]) for i, part in enumerate(parts)],
        dim=1,
    )
    nll = -(per_entry * weights).sum(dim=1).mean()
    best = torch.stack([part.probs.argmax(dim=1) for part in parts], dim=1)
    correct = ((best == actions) | (weights == 0)).all(dim=1).float().mean()
    values = policy.predict_values(obs_tensor).flatten()
    targets = torch.as_tensor(demonstrations.returns[index], device=policy.device)
    value_loss = torch.nn.functional.mse_loss(values, targets)
    return nll, value_loss, correct


def _evaluate(
    policy: Any, demonstrations: Demonstrations, maskable: bool, batch_size: int
) -> tuple[float, float]:
    import torch

    n = len(demonstrations)
    policy.set_training_mode(False)
    with torch.no_grad():
        totals = np.zeros(2)
        for start in range(0, n, batch_size):
            index = np.arange(start, min(start + batch_size, n))
            nll, _, correct = _batch_figures(policy, demonstrations, index, maskable)
            totals += np.array([float(nll), float(correct)]) * index.size
    return float(totals[0] / n), float(totals[1] / n)


def agreement(
    model: Any,
    demonstrations: Demonstrations,
    maskable: bool = True,
    batch_size: int = 256,
    joint: Any = None,
) -> dict[str, float]:
    """How well a policy's most likely actions match demonstrations it may never have seen.

    Args:
        model: A PPO or MaskablePPO model.
        demonstrations: From :func:`collect_demonstrations`, e.g. on validation samples.
        maskable: Give the demonstrations' action masks to the policy (MaskablePPO).
        batch_size: Steps per forward pass.
        joint: The environment's :class:`~scopegym.envs.JointActions` wrapper, for a model
            that chooses whole commands (None otherwise).

    Returns:
        ``nll`` (negative log-likelihood of the demonstrated entries, per step [nats]) and
        ``agreement`` (fraction of steps whose most likely action matches the demonstration on
        every entry the demonstrated verb reads).
    """
    encoded = _encoded(model, demonstrations, joint)
    nll, matched = _evaluate(model.policy, encoded, maskable, batch_size)
    return {"nll": nll, "agreement": matched}


def clone(
    model: Any,
    demonstrations: Demonstrations,
    epochs: int = 4,
    batch_size: int = 256,
    value_coef: float = 0.5,
    maskable: bool = True,
    seed: int = 0,
    learning_rate: float | None = None,
    joint: Any = None,
) -> dict[str, float]:
    """Fit an SB3 actor-critic policy (PPO, MaskablePPO) to demonstrations.

    Args:
        model: The PPO or MaskablePPO model; its policy's optimiser is used.
        demonstrations: From :func:`collect_demonstrations`.
        epochs: Passes over the demonstrations.
        batch_size: Steps per gradient step.
        value_coef: Weight of the value head's squared error (0: policy only).
        maskable: Give the demonstrations' action masks to the policy (MaskablePPO).
        seed: Seed of the minibatch order.
        learning_rate: The optimiser's learning rate while cloning (None: the model's own);
            the model's rate is restored afterwards.
        joint: The environment's :class:`~scopegym.envs.JointActions` wrapper, for a model
            that chooses whole commands; the demonstrations (MultiDiscrete) are encoded with
            it (:func:`to_joint`).

    Returns:
        ``nll_before``/``nll_after`` (negative log-likelihood of the demonstrated entries,
        per step [nats]) and ``accuracy_after`` (fraction of steps whose most likely action
        matches the demonstration on every relevant entry).
    """
    import torch

    policy = model.policy
    demonstrations = _encoded(model, demonstrations, joint)
    rng = np.random.default_rng(seed)
    n = len(demonstrations)

    nll_before, _ = _evaluate(policy, demonstrations, maskable, batch_size)
    rates = [group["lr"] for group in policy.optimizer.param_groups]
    if learning_rate is not None:
        for group in policy.optimizer.param_groups:
            group["lr"] = float(learning_rate)
    parameters = list(policy.parameters())
    policy.set_training_mode(True)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            nll, value_loss, _ = _batch_figures(policy, demonstrations, index, maskable)
            # Each loss's gradient is clipped on its own. Clipped together, a batch whose
            # returns the value head misses by tens (a student's failed episodes, exactly the
            # states aggregation adds) scaled the policy's step down with the value's.
            policy.optimizer.zero_grad()
            nll.backward(retain_graph=value_coef > 0)
            torch.nn.utils.clip_grad_norm_(parameters, 0.5)
            if value_coef > 0:
                policy_grads = [None if p.grad is None else p.grad.clone() for p in parameters]
                policy.optimizer.zero_grad()
                (value_coef * value_loss).backward()
                torch.nn.utils.clip_grad_norm_(parameters, 0.5)
                for parameter, grad in zip(parameters, policy_grads, strict=True):
                    if grad is not None:
                        parameter.grad = grad if parameter.grad is None else parameter.grad + grad
            policy.optimizer.step()
    for group, rate in zip(policy.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    nll_after, accuracy = _evaluate(policy, demonstrations, maskable, batch_size)
    policy.set_training_mode(False)
    return {"nll_before": nll_before, "nll_after": nll_after, "accuracy_after": accuracy}


def sharpen(model: Any, temperature: float) -> None:
    """Divide the policy's action logits by ``temperature``, every head alike.

    A clone's most likely commands can be its teacher's in every step while its samples slip
    now and then; PPO learns from samples, so it starts from the slips' return, not the
    clone's (on Survey-v1 the clone of ``backlash_raster`` returned 648 by its most likely
    commands and 279 by sampled ones). A temperature below 1 keeps every head's most likely
    entry and makes the rest rarer (at 0.5 the samples were the clone's own commands).

    Args:
        model: A PPO or MaskablePPO model whose ``policy.action_net`` is one linear layer.
        temperature: Positive; below 1 sharpens, above 1 flattens.

    Raises:
        ValueError: The temperature is not a positive number, or the policy's action logits
            do not come from one linear layer.
    """
    import torch

    if not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"the temperature must be a positive number, got {temperature!r}")
    layer = getattr(model.policy, "action_net", None)
    if not isinstance(layer, torch.nn.Linear):
        raise ValueError(
            f"{type(model.policy).__name__} has no linear action_net to divide by a temperature"
        )
    with torch.no_grad():
        layer.weight.div_(temperature)
        if layer.bias is not None:
            layer.bias.div_(temperature)
    # Scores added to the logits outside the action layer (scopegym.agents.pointer's cells).
    for module in model.policy.modules():
        divide = getattr(module, "divide_scores", None)
        if callable(divide):
            divide(temperature)


def concatenate(parts: Sequence[Demonstrations]) -> Demonstrations:
    """Demonstrations stacked one after another."""
    return Demonstrations(
        observations={
            key: np.concatenate([part.observations[key] for part in parts])
            for key in parts[0].observations
        },
        actions=np.concatenate([part.actions for part in parts]),
        masks=np.concatenate([part.masks for part in parts]),
        relevant=np.concatenate([part.relevant for part in parts]),
        returns=np.concatenate([part.returns for part in parts]),
        episode_returns=np.concatenate([part.episode_returns for part in parts]),
    )


def can_label(name: str) -> bool:
    """Whether a baseline or teacher labels any observation (has ``label(obs, masks)``)."""
    policy = BASELINES.get(name) or TEACHERS.get(name)
    return policy is not None and callable(getattr(policy, "label", None))


def can_perturb(name: str) -> bool:
    """Whether a teacher also makes observations beside given ones (has ``perturb``)."""
    policy = BASELINES.get(name) or TEACHERS.get(name)
    return can_label(name) and callable(getattr(policy, "perturb", None))


def perturbed_steps(
    make_env: Callable[[], gym.Env[Any, Any]],
    teacher: str,
    demonstrations: Demonstrations,
    copies: int,
    seed: int = 0,
    teacher_kwargs: Mapping[str, Any] | None = None,
) -> Demonstrations:
    """The teacher's actions on observations beside demonstrated ones (data augmentation).

    Dataset aggregation labels the states a student reaches; this labels states near them
    without running an episode, as noise injected into demonstrations does (Laskey et al.,
    "DART", CoRL 2017), but in the observation: the teacher's ``perturb`` makes ``copies``
    changed observations of each step it can change, and its ``label`` says what it would do
    there. A clone fitted to them learns the teacher's rule around its path rather than the
    path (on AutotuneRonchigram-v2 cloning alone matched more validation episodes with them;
    README). The masks and the returns are those of the step each copy came from: the
    perturbations stay far inside the corrector's range, and the value head's targets are
    approximate there.

    Args:
        make_env: Builds the environment (for the teacher's configuration and masks).
        teacher: A baseline or teacher with ``label`` and ``perturb`` (:func:`can_perturb`).
        demonstrations: Steps to start from (the teacher's own or a student's).
        copies: Changed observations made from each step.
        seed: Seed of the changes.
        teacher_kwargs: The teacher's own arguments.

    Returns:
        The changed steps with the teacher's labels (no ``episode_returns``: they are no
        episodes).

    Raises:
        TypeError: The teacher cannot make or label such observations.
    """
    env = make_env()
    try:
        labeller: Any = make_demonstrator(teacher, env, **dict(teacher_kwargs or {}))
        if not (
            callable(getattr(labeller, "label", None))
            and callable(getattr(labeller, "perturb", None))
        ):
            raise TypeError(f"{teacher} cannot label observations beside its own")
        rows = np.repeat(np.arange(len(demonstrations)), int(copies))
        observations, changed = labeller.perturb(
            {key: value[rows] for key, value in demonstrations.observations.items()},
            np.random.default_rng(seed),
        )
        rows = rows[changed]
        observations = {key: value[changed] for key, value in observations.items()}
        masks = demonstrations.masks[rows]
        actions = [
            np.asarray(labeller.label({k: v[i] for k, v in observations.items()}, masks[i]))
            for i in range(rows.size)
        ]
        verbs = labeller.config.verbs
    finally:
        env.close()
    width = demonstrations.actions.shape[1]
    stacked = np.stack(actions).astype(np.int64) if actions else np.zeros((0, width), np.int64)
    return Demonstrations(
        observations=observations,
        actions=stacked,
        masks=masks,
        relevant=np.array([_relevant_entries(verbs, a) for a in stacked], dtype=bool).reshape(
            -1, width
        ),
        returns=demonstrations.returns[rows],
        episode_returns=np.zeros(0),
    )


def collect_student_steps(
    make_env: Callable[[], gym.Env[Any, Any]],
    model: Any,
    teacher: str,
    episodes: int,
    gamma: float,
    seed: int = 0,
    maskable: bool = True,
    teacher_kwargs: Mapping[str, Any] | None = None,
    joint: Any = None,
) -> Demonstrations:
    """Run a model and label every observation it reaches with the teacher's action.

    The model acts (deterministically); the teacher (one that can label any observation,
    :func:`can_label`) says what it would have done. Returns are those of the model's own
    episodes, for its value head.

    Args:
        make_env: Builds the environment (training samples).
        model: A PPO or MaskablePPO model.
        teacher: Name of a baseline or teacher with ``label``.
        episodes: Episodes to run.
        gamma: Discount of the returns.
        seed: Reset seed of the first episode; the others follow.
        maskable: Give the environment's action masks to the model.
        teacher_kwargs: The teacher's own arguments.
        joint: The environment's :class:`~scopegym.envs.JointActions` wrapper, for a model
            that chooses whole commands (its masks and actions are translated; the steps are
            recorded in the MultiDiscrete encoding, as the teacher's).

    Raises:
        TypeError: The teacher cannot label observations it did not reach itself.
    """
    env = make_env()
    labeller: Any = make_demonstrator(teacher, env, **dict(teacher_kwargs or {}))
    if not callable(getattr(labeller, "label", None)):
        raise TypeError(f"{teacher} cannot label observations it did not reach itself")
    kwargs: dict[str, Any] = {}

    def act_and_label(obs: Any, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if maskable:
            kwargs["action_masks"] = mask if joint is None else joint.joint_masks(mask)
        action, _ = model.predict(obs, deterministic=True, **kwargs)
        if joint is not None:
            action = joint.action(action)
        return labeller.label(obs, mask), action

    recorder = _Recorder(env, gamma)
    try:
        for episode in range(episodes):
            recorder.episode(seed + episode, act_and_label)
    finally:
        env.close()
    return recorder.demonstrations()


def aggregate(
    model: Any,
    make_env: Callable[[], gym.Env[Any, Any]],
    teacher: str,
    demonstrations: Demonstrations,
    iterations: int,
    episodes: int,
    gamma: float,
    seed: int = 0,
    on_round: Callable[[int, Demonstrations, dict[str, float]], None] | None = None,
    teacher_kwargs: Mapping[str, Any] | None = None,
    perturbed_copies: int = 0,
    **clone_kwargs: Any,
) -> tuple[Demonstrations, list[dict[str, float]]]:
    """Dataset aggregation (DAgger; Ross, Gordon and Bagnell, AISTATS 2011) after cloning.

    A clone that matches its teacher on 95 % of the teacher's own steps can still fail most
    episodes: one wrong tune leads to observations the teacher never showed it, where it errs
    again. Each iteration runs the clone, labels every observation it reaches with the
    teacher's action (:func:`collect_student_steps`), adds them to the demonstrations and fits
    the model to all of them (:func:`clone`).

    Args:
        model: The cloned PPO or MaskablePPO model (fitted further in place).
        make_env: Builds the environment (training samples).
        teacher: A baseline or teacher that labels any observation (:func:`can_label`).
        demonstrations: The teacher's own steps, cloned already.
        iterations: Rounds of running, labelling and fitting.
        episodes: Episodes the model runs per round.
        gamma: Discount of the returns.
        seed: Reset seed of the first episode of the first round; the others follow.
        on_round: Called after each round with its number (from 1), all demonstrations so far
            and the round's figures (below), e.g. to log or save them while a long run goes on.
        teacher_kwargs: The teacher's own arguments (as in the demonstrations it cloned).
        perturbed_copies: Also add this many labelled observations beside each step the
            model reached (:func:`perturbed_steps`; 0: none).
        **clone_kwargs: Passed to :func:`clone` (epochs, batch size, learning rate, ...).

    Returns:
        All demonstrations at the end, and per round the model's mean episode return while
        it ran (``student_return``), the steps added (``steps_added``; ``perturbed_added``
        beside them) and :func:`clone`'s figures.
    """
    rounds: list[dict[str, float]] = []
    for iteration in range(iterations):
        student = collect_student_steps(
            make_env,
            model,
            teacher,
            episodes,
            gamma,
            seed=seed + iteration * episodes,
            maskable=bool(clone_kwargs.get("maskable", True)),
            teacher_kwargs=teacher_kwargs,
            joint=clone_kwargs.get("joint"),
        )
        added = [student]
        if perturbed_copies:
            added.append(
                perturbed_steps(
                    make_env,
                    teacher,
                    student,
                    perturbed_copies,
                    seed=seed + iteration,
                    teacher_kwargs=teacher_kwargs,
                )
            )
        demonstrations = concatenate([demonstrations, *added])
        figures = clone(model, demonstrations, **clone_kwargs)
        rounds.append(
            {
                "student_return": float(student.episode_returns.mean()),
                "steps_added": float(len(student)),
                "perturbed_added": float(sum(len(part) for part in added[1:])),
                **figures,
            }
        )
        if on_round is not None:
            on_round(iteration + 1, demonstrations, rounds[-1])
    return demonstrations, rounds


__all__ = [
    "Demonstrations",
    "aggregate",
    "agreement",
    "can_label",
    "clone",
    "collect_demonstrations",
    "collect_student_steps",
    "concatenate",
]
