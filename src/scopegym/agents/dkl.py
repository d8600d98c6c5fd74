"""Deep-kernel-learning active learning for SpectrumDiscovery (needs ``scopegym[gp]``).

As in the DKL experiments of Kalinin et al. (seed 001, section VI): every candidate spectrum
position on the given HAADF frame is described by the image patch around it, a small neural
network embeds the patches in a low-dimensional latent space, and a Gaussian process on that
space (a *deep kernel*) learns, from the spectra acquired so far, a scalar "structure-property"
relation: here, how distinct a spectrum recorded there would be. An upper confidence bound
(UCB) on the not-yet-measured positions picks each next spectrum. The network and the GP's
hyperparameters are trained jointly on the exact marginal likelihood at every step.

gpytorch is imported only when a :class:`DKLSpectrumPolicy` is made, so ``import scopegym``
never needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
from scipy import ndimage

from scopegym.agents.baselines import ScriptedPolicy

__all__ = [
    "DKLSpectrumPolicy",
    "leave_one_out_distinctness",
    "patch_features",
    "spectrum_shape",
]


def _require_gpytorch() -> tuple[Any, Any]:
    """The torch and gpytorch modules, imported on first use (the ``gp`` extra).

    Raises:
        ImportError: gpytorch is missing; the message says how to install it.
    """
    # By name, so that the core package never imports the extra (tests/test_dependencies.py).
    try:
        gpytorch = importlib.import_module("gpytorch")
        import torch
    except ImportError as error:
        raise ImportError("the dkl baseline needs gpytorch: pip install scopegym[gp]") from error
    return torch, gpytorch


def patch_features(
    frame: np.ndarray,
    grid: int,
    patch_px: int = 16,
    window_px: float | None = 4.0,
    components: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Image patches centred on every spectrum grid position, and their whitened PCA scores.

    The frame is standardised once (its median subtracted, divided by its standard deviation),
    so a patch keeps its brightness relative to the whole frame: a heavy dopant or an adatom is
    brighter than the lattice, a hole darker. Patches are sampled bilinearly at the exact probe
    positions ((x + 0.5) / grid of the field of view), reflected at the frame's edges, and
    weighted by a Gaussian window so that the few pixels within a point defect's reach of the
    probe count most.

    Args:
        frame: HAADF frame with two trailing image axes [counts or uint8 levels].
        grid: Spectrum positions per axis.
        patch_px: Side of the square patch [px].
        window_px: Standard deviation of the Gaussian weighting [px]; None for none.
        components: Number of principal components kept (at most the number of positions).

    Returns:
        ``(patches, scores)``: patches as rows ``y * grid + x`` of ``patch_px ** 2`` values
        [frame standard deviations], and their leading principal-component scores, each
        component scaled to unit variance [dimensionless].
    """
    image = np.asarray(frame, dtype=np.float64)
    image = image.reshape(image.shape[-2], image.shape[-1])
    spread = float(image.std())
    image = (image - float(np.median(image))) / (spread if spread > 0 else 1.0)
    rows_px, cols_px = image.shape
    offsets = np.arange(patch_px, dtype=np.float64) - 0.5 * (patch_px - 1)
    weight = np.ones((patch_px, patch_px))
    if window_px is not None:
        weight = np.exp(-0.5 * (offsets[:, None] ** 2 + offsets[None, :] ** 2) / window_px**2)
    patches = np.empty((grid * grid, patch_px * patch_px))
    for y in range(grid):
        for x in range(grid):
            row = (y + 0.5) * rows_px / grid - 0.5
            col = (x + 0.5) * cols_px / grid - 0.5
            rr, cc = np.meshgrid(row + offsets, col + offsets, indexing="ij")
            values = ndimage.map_coordinates(image, [rr, cc], order=1, mode="reflect")
            patches[y * grid + x] = (values * weight).ravel()
    centred = patches - patches.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ axes[: min(components, axes.shape[0])].T
    scale = scores.std(axis=0)
    scores = scores / np.where(scale > 0, scale, 1.0)
    return patches, scores


def spectrum_shape(spectrum: np.ndarray, band_channels: int = 6) -> np.ndarray:
    """Shape of an observed spectrum: core-loss and low-loss parts, each of unit norm.

    The observation is log counts in 256 channels of 4 eV from −20 eV, normalised to the
    largest. Its core-loss region (channels 16–153, about 44–592 eV, as
    :func:`scopegym.rewards.spectra_probe.spectrum_features`) is averaged in bands of
    ``band_channels`` and its linear trend (the power-law background) removed, so that edges
    stand out; the low-loss region (channels 6–15, about 4–40 eV: plasmons, where vacuum,
    contamination and a thicker or thinner specimen differ) keeps its shape with the mean
    removed. Each part is scaled to unit norm and the two are joined with weight 1/√2, so
    the result has unit norm and a plain Euclidean distance compares two spectra.

    Args:
        spectrum: The ``spectrum`` observation (256 values in [0, 1]) [dimensionless].
        band_channels: Channels per core-loss band.

    Returns:
        Feature vector of unit norm (zeros for an empty spectrum) [dimensionless].
    """
    values = np.asarray(spectrum, dtype=np.float64).ravel()
    core = values[16 : 16 + ((154 - 16) // band_channels) * band_channels]
    bands = core.reshape(-1, band_channels).mean(axis=1)
    index = np.arange(bands.size)
    bands = bands - np.polyval(np.polyfit(index, bands, 1), index)
    low = values[6:16] - values[6:16].mean()
    parts = []
    for part in (bands, low):
        norm = float(np.linalg.norm(part))
        parts.append(part / norm if norm > 0 else part)
    return np.concatenate(parts) / np.sqrt(2.0)


def leave_one_out_distinctness(features: np.ndarray) -> np.ndarray:
    """How distinct each spectrum is from all the others: distance to its nearest neighbour.

    Args:
        features: Spectrum features as rows (see :func:`spectrum_shape`) [dimensionless].

    Returns:
        One value per row [dimensionless]; zeros for fewer than two rows.
    """
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        return np.zeros(len(features))
    distance = np.linalg.norm(features[:, None, :] - features[None, :, :], axis=-1)
    np.fill_diagonal(distance, np.inf)
    return np.asarray(distance.min(axis=1))


class DKLSpectrumPolicy(ScriptedPolicy):
    """Deep-kernel-learning active learning of where spectra are most distinct.

    Candidates are the task's ``spectrum_grid`` × ``spectrum_grid`` probe positions on the
    given frame; each is described by the whitened principal-component scores of its
    Gaussian-weighted image patch (:func:`patch_features`). A few seed spectra are spread over
    patch space by farthest-point sampling from a position drawn with the policy's seed; after
    that each step

    1. scores every acquired spectrum by its *distinctness*: the distance of its shape
       (:func:`spectrum_shape`) to the nearest other acquired spectrum
       (:func:`leave_one_out_distinctness`), recomputed every step;
    2. fits an exact GP with a deep kernel (MLP ``components`` → ``hidden`` →
       ``embedding_dim``, tanh; ScaleKernel(RBF) on the embedding) to those scores, by Adam on
       the marginal likelihood (``iterations`` steps, network and GP together, from the same
       seeded initialisation each step, on one CPU thread);
    3. measures the unmeasured position of greatest UCB, μ + ``beta`` · σ.

    Why this target: the task rewards every *class* of spectrum once, so what is worth
    predicting is where a spectrum unlike the others would be recorded. The distance to the
    nearest other spectrum is what ``spectral_novelty`` scores (the same core-loss shape, with
    the plasmon region added), but left one out and recomputed: a class recorded only once
    keeps a high score and makes patches like its own attractive, while a class recorded twice
    drops both spectra to the noise floor, so the GP's mean turns away from patch types whose
    class has been found and the UCB's σ towards patch types not yet measured. (Novelty frozen
    at acquisition would instead keep rewarding a class's first patch type for ever, and a
    projection on leading components would rank spectra along one direction of difference
    only.) At the task's 20 ms exposure, a single dopant, vacancy, adatom or grain boundary
    changes the observed spectrum by less than its counting noise; vacuum, contamination,
    edges and the lattice are clearly distinct. Only the latter can steer the GP's mean; the
    point defects are found through the σ term, which favours unusual patches.

    Where the task offers no spectrum verb the policy scans (the base class's plan). After
    every position has been measured it starts over on the same order.

    Args:
        env: The environment (needs the spectrum verb).
        seed: Seed of the first seed position and of the network's initialisation.
        patch_px: Side of the image patch around each candidate [px]; None: 2 nm of the 8 nm
            frame (16 px of a 64 px frame, 32 of a 128 px one).
        window_px: Standard deviation of the patch's Gaussian weighting [px]; None: 0.5 nm.
        components: Principal components of the patches fed to the network.
        embedding_dim: Dimension of the learned latent space.
        seed_spectra: Spectra placed by farthest-point sampling before the GP takes over.
        iterations: Adam steps of the joint fit per spectrum.
        learning_rate: Adam's learning rate.
        beta: Weight of the posterior standard deviation in the UCB [dimensionless].
        hidden: Width of the network's hidden layer.
        weight_decay: Adam's weight decay on the network's weights: with a few dozen
            spectra an unregularised network fits the targets but predicts unmeasured
            patches worse [dimensionless].

    Raises:
        ImportError: gpytorch is missing (``pip install scopegym[gp]``).
    """

    name = "dkl"

    def __init__(
        self,
        env: gym.Env[Any, Any],
        seed: int = 0,
        patch_px: int | None = None,
        window_px: float | None = None,
        components: int = 8,
        embedding_dim: int = 2,
        seed_spectra: int = 4,
        iterations: int = 40,
        learning_rate: float = 0.05,
        beta: float = 2.0,
        hidden: int = 32,
        weight_decay: float = 0.1,
    ) -> None:
        self._torch, self._gpytorch = _require_gpytorch()
        super().__init__(env)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        # The patch keeps its physical size whatever the frame's pixel count.
        frame_px = int(self.config.frame_px)
        self.patch_px = int(patch_px) if patch_px is not None else 16 * frame_px // 64
        self.window_px = float(window_px) if window_px is not None else 4.0 * frame_px / 64
        self.components = int(components)
        self.embedding_dim = int(embedding_dim)
        self.seed_spectra = max(1, int(seed_spectra))
        self.iterations = int(iterations)
        self.learning_rate = float(learning_rate)
        self.beta = float(beta)
        self.hidden = int(hidden)
        self.weight_decay = float(weight_decay)
        #: Grid indices (y * grid + x) measured in the present episode, in order.
        self.measured: list[int] = []
        #: Distinctness targets of the last fit, one per measured spectrum [dimensionless].
        self.targets = np.zeros(0)

    # -- the model ------------------------------------------------------------------------

    def _model(self, train_x: Any, train_y: Any) -> tuple[Any, Any]:
        """A fresh deep-kernel GP and its likelihood on the training data (torch tensors)."""
        torch, gpytorch = self._torch, self._gpytorch
        hidden = self.hidden
        extractor = torch.nn.Sequential(
            torch.nn.Linear(train_x.shape[-1], hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, self.embedding_dim),
            torch.nn.Tanh(),
        ).double()

        exact_gp: Any = gpytorch.models.ExactGP

        class _DeepKernelGP(exact_gp):
            def __init__(self, x: Any, y: Any, likelihood: Any) -> None:
                super().__init__(x, y, likelihood)
                self.extractor = extractor
                self.mean_module = gpytorch.means.ConstantMean()
                self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

            def forward(self, x: Any) -> Any:
                embedded = self.extractor(x)
                return gpytorch.distributions.MultivariateNormal(
                    self.mean_module(embedded), self.covar_module(embedded)
                )

        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(1e-4)
        ).double()
        return _DeepKernelGP(train_x, train_y, likelihood).double(), likelihood

    def fit_predict(
        self, scores: np.ndarray, measured: list[int], targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fit the deep-kernel GP and predict every candidate.

        Args:
            scores: Patch features of every candidate, as rows [dimensionless].
            measured: Rows of the measured candidates.
            targets: Their targets [any units].

        Returns:
            Posterior mean and standard deviation at every candidate, in units of the
            targets' standard deviation about their mean.
        """
        torch = self._torch
        spread = float(targets.std())
        standard = (targets - targets.mean()) / (spread if spread > 1e-12 else 1.0)
        # A few dozen points: threads only add synchronisation (tens of times slower on a
        # loaded machine), so the fit runs on one and the caller's setting is restored.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fit_predict(scores, measured, standard)
        finally:
            torch.set_num_threads(threads)

    def _fit_predict(
        self, scores: np.ndarray, measured: list[int], standard: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        torch, gpytorch = self._torch, self._gpytorch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            x_all = torch.as_tensor(scores, dtype=torch.float64)
            train_x = x_all[measured]
            train_y = torch.as_tensor(standard, dtype=torch.float64)
            model, likelihood = self._model(train_x, train_y)
            model.train()
            likelihood.train()
            optimiser = torch.optim.Adam(
                [
                    {"params": model.extractor.parameters(), "weight_decay": self.weight_decay},
                    {"params": [p for n, p in model.named_parameters() if "extractor" not in n]},
                ],
                lr=self.learning_rate,
            )
            mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
            for _iteration in range(self.iterations):
                optimiser.zero_grad()
                loss = -mll(model(train_x), train_y)
                loss.backward()
                optimiser.step()
            model.eval()
            likelihood.eval()
            with torch.no_grad(), gpytorch.settings.fast_pred_var():
                posterior = model(x_all)
                mean = posterior.mean.numpy().copy()
                std = posterior.variance.clamp_min(0.0).sqrt().numpy().copy()
        return mean, std

    # -- the plan -------------------------------------------------------------------------

    def _seed_order(self, scores: np.ndarray) -> list[int]:
        """Farthest-point sampling in patch space from a position drawn with the seed."""
        order = [int(self.rng.integers(len(scores)))]
        distance = np.linalg.norm(scores - scores[order[0]], axis=1)
        while len(order) < min(self.seed_spectra, len(scores)):
            nxt = int(np.argmax(distance))
            order.append(nxt)
            distance = np.minimum(distance, np.linalg.norm(scores - scores[nxt], axis=1))
        return order

    def _script(self) -> Iterator[np.ndarray]:
        if "spectrum" not in self.config.verbs:
            yield from super()._script()
            return
        grid = self.config.spectrum_grid
        _, scores = patch_features(
            self.observation["frame"], grid, self.patch_px, self.window_px, self.components
        )
        self.measured = []
        self.targets = np.zeros(0)
        shapes: list[np.ndarray] = []
        for index in self._seed_order(scores):
            yield self.action("spectrum", x=index % grid, y=index // grid)
            self.measured.append(index)
            shapes.append(spectrum_shape(self.observation["spectrum"]))
        while len(self.measured) < grid * grid:
            self.targets = leave_one_out_distinctness(np.asarray(shapes))
            mean, std = self.fit_predict(scores, self.measured, self.targets)
            ucb = mean + self.beta * std
            ucb[self.measured] = -np.inf
            index = int(np.argmax(ucb))
            yield self.action("spectrum", x=index % grid, y=index // grid)
            self.measured.append(index)
            shapes.append(spectrum_shape(self.observation["spectrum"]))
        cycle = list(self.measured)
        while True:
            for index in cycle:
                yield self.action("spectrum", x=index % grid, y=index // grid)
