"""Did the attack fit the update? The reconstruction's fit against the private batch's, on the same observation.

A low PSNR is evidence that an update is safe only if the attack explained the update and still could not
rebuild the image. An attack that stopped far from explaining it (too few iterations, a victim whose landscape
it cannot descend, e.g. a fresh ResNet-18 at B = 1 where every recipe ends at a cosine distance of about 0.7)
reports a low PSNR that says nothing about the update: a stronger or longer attack may go further. The auditor
holds the private batch, so it can tell the two apart after the fact (like the metrics, never to select):

    d_rec  = D(u(x_rec, y_rec), u*)     d_true = D(u(x, y), u*)     d_null = D(u(x_0, y), u*)

with u* the update the server observed, u(., .) the update the attacker simulates for a batch (the FedSGD
gradient, or the unrolled FedAvg local training, :class:`~gradaudit.attacks.matching.objective.MatchingObjective`),
D the global cosine distance of Inverting Gradients (Geiping et al., NeurIPS 2020), and x_0 a guess with no
information: the attacks' usual random start (a standard normal in the normalised space, in the pixel box) with
the true labels. Without a defense d_true = 0; a defense raises it by what it removes or adds. How much a random
guess already "fits" depends on the model (LeNet's sigmoids: d_null ~ 0.07 at B = 1; a fresh ResNet-18: ~ 0.86),
so the fit is measured as the share of the way from the guess to the truth the attack closed,

    closed = (d_null - d_rec) / (d_null - d_true),

and a reconstruction with closed < :data:`FIT_SHARE` is **under-fit**: the attack stopped short of explaining the
update (e.g. a fresh ResNet-18 at B = 1, where every recipe ends near d = 0.72: closed ~ 0.16), so its PSNR is a
lower bound on the leakage only and a longer or stronger attack may go further. Where the truth is hardly closer
than the guess (d_null - d_true < :data:`MIN_SIGNAL`, e.g. under heavy noise) the update carries next to nothing
about the batch and nothing is under-fit. Not defined for secure aggregates (the truth is several clients'
batches), for FedAvg over minibatches (the simulation above takes full-batch steps, and the order of the
minibatches is the client's: in the audit demo the private batch itself then sat further from the update than a
random guess), or for reconstructions without labels or with another batch size.

**Fit, and recovered nothing.** Fitting the update is necessary for a low PSNR to mean "safe", not sufficient:
where many non-images produce the update of the batch (a trained ResNet-18 at B = 4: every attack closes 91-98%
and ends below a flat image, and running longer fits the update more closely while the image gets worse), a
reconstruction can fit and show nothing. The auditor sees this too, after the fact: the reconstruction is no
closer to the private batch than a flat image of the data's mean colour, which the server has without looking
at the update (``PSNR(x_rec) < PSNR(mean colour)``). Under a defense that removed what the update said about the
batch that is what a working defense looks like; but where the private batch itself still explains the
observed update nearly as well as without a defense (d_true <= :data:`INTACT` d_null: no defense, or one that
keeps the update's direction, e.g. clipping), it says that these attacks could not tell the batch from other
preimages, not that the update is safe. Such a run **recovered nothing** (:attr:`UpdateFit.recovered_nothing`)
and, like an under-fit one, is no evidence of safety.

**A landscape matching cannot descend.** An under-fit attack may have stopped short on a landscape it could
descend with more time, or be lost on one that has no slope towards the batch at all. The auditor tells the two
apart by the private batch with a little noise: its copy with N(0, :data:`NOISY_COPY_SIGMA`^2) added in the
normalised space (about 32 dB, invisible to the eye; clipped to the pixel box like the attacks' iterates) sits at

    d_copy = D(u(clip(x + sigma n), y), u*).

On a smooth landscape d_copy is a small part of the way to the guess (benchmarks/matching_landscape.py: at most
0.19 of it on LeNet, the ConvNet with and without BN and a trained ResNet-18, 8 photos each); on a fresh
ResNet-18 at B = 1 (batch norm at initialisation in 20 layers) it is 0.79-1.05 of it on 16 photos and faces
(0.62-0.66 on two batches of 4): the update forgets the batch within about 40 dB of it, and a matching attack has
no slope to follow from anywhere it can start. Such an update is **rough** (:attr:`UpdateFit.rough`: d_copy - d_true >=
:data:`ROUGH` (d_null - d_true)); an under-fit there says that more of the same attack will not help, not that
the batch is safe: an attack of another kind (a prior, an analytic or a malicious-server attack) may still
rebuild it.

Without the private batch (an update captured elsewhere) the same measure is taken against a perfect fit,
d_true := 0, with the reconstruction's own labels for the guess: it needs the observation only, and under a
defense that puts a perfect fit out of reach it errs towards "under-fit", i.e. towards not calling anything safe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch

from ..attacks.matching.distances import cosine_from_statistics, tensor_statistics
from ..attacks.matching.engine import to_pixels
from ..attacks.matching.objective import MatchingObjective
from ..attacks.matching.victim import FunctionalVictim
from ..errors import ConfigError
from ..metrics import psnr as psnr_per_image
from ..threat.observation import Observation

#: a reconstruction that closed less than this share of the way from the random guess to the truth is under-fit
FIT_SHARE = 0.8
#: below this margin of the guess over the truth (d_null - d_true) the update says too little to under-fit
MIN_SIGNAL = 0.02
#: the observed update is (nearly) intact when the private batch fits it this close, as a share of the guess's
#: distance (no defense: d_true = 0); a fit reconstruction below the flat image then recovered nothing
INTACT = 0.2
#: the noise (standard deviation in the normalised space) of the private batch's copy that probes the landscape
NOISY_COPY_SIGMA = 0.1
#: the landscape is rough when that copy is at least this share of the way from the truth to the random guess
ROUGH = 0.5


@dataclass(frozen=True)
class UpdateFit:
    """Cosine distances to the observed update of the simulated updates of the reconstruction, the private batch
    and a random guess (see the module docstring)."""

    reconstruction: float
    truth: float
    guess: float
    #: False: no private batch, ``truth`` is a perfect fit (0) rather than measured
    measured: bool = True
    #: the reconstruction's mean PSNR against the private batch, and a flat image's of the data's mean colour
    #: (:func:`against_flat_image`); None without a private batch
    psnr: Optional[float] = None
    flat_psnr: Optional[float] = None
    #: the distance of the private batch's noisy copy (:func:`noisy_copy`; None without a private batch)
    copy_distance: Optional[float] = None

    @property
    def closed(self) -> Optional[float]:
        """The share of the way from the guess to the truth the reconstruction closed (None: no signal)."""
        span = self.guess - self.truth
        return None if span < MIN_SIGNAL else (self.guess - self.reconstruction) / span

    @property
    def underfit(self) -> bool:
        closed = self.closed
        return closed is not None and closed < FIT_SHARE

    @property
    def recovered_nothing(self) -> bool:
        """Fit an intact update and still no closer to the private batch than the flat mean-colour image (see
        the module docstring): no evidence of safety either."""
        if self.psnr is None or self.flat_psnr is None or self.closed is None or self.underfit:
            return False
        return self.truth <= INTACT * self.guess and self.psnr < self.flat_psnr

    @property
    def rough(self) -> bool:
        """The private batch's noisy copy is as far from the update as :data:`ROUGH` of the way to the random
        guess: a landscape gradient matching cannot descend (see the module docstring)."""
        span = self.guess - self.truth
        copy = self.copy_distance
        return copy is not None and span >= MIN_SIGNAL and copy - self.truth >= ROUGH * span

    def to_dict(self) -> dict:
        return {"distance": "cosine", "reconstruction": self.reconstruction, "truth": self.truth,
                "guess": self.guess, "closed": self.closed, "underfit": self.underfit,
                "truth_measured": self.measured, "psnr": self.psnr, "flat_psnr": self.flat_psnr,
                "recovered_nothing": self.recovered_nothing, "noisy_copy": self.copy_distance, "rough": self.rough}

    def describe(self) -> str:
        truth = f"private batch {self.truth:.3f}" if self.measured else "no private batch: against a perfect fit"
        head = f"update fit: cosine distance {self.reconstruction:.3f} ({truth}, random guess {self.guess:.3f})"
        closed, goal = self.closed, "truth" if self.measured else "perfect fit"
        if closed is None:
            return head + "; the update says next to nothing about the batch"
        if self.underfit:
            text = (head + f"; under-fit: the attack closed {closed:.0%} of the way from the guess to the {goal}, "
                    "so what it rebuilt is a lower bound on the leakage, not evidence of safety")
            if self.rough:
                text += (f". This update has no slope towards the batch: the private batch itself with a little "
                         f"noise (standard deviation {NOISY_COPY_SIGMA} in the normalised space, about 32 dB on "
                         f"photos) is already at {self.copy_distance:.3f}, so gradient matching cannot descend here "
                         "and more of it will not help; an attack of another kind may")
            return text
        head += f"; the attack closed {closed:.0%} of the way from the guess to the {goal}"
        if self.recovered_nothing:
            return (head + f", and recovered nothing: {self.psnr:.2f} dB is below a flat image of the data's mean "
                    f"colour ({self.flat_psnr:.2f} dB), so other images explain this update as well and the attack "
                    "could not tell them apart; not evidence of safety")
        return head


def update_fit(observation: Observation, images: torch.Tensor, labels: Optional[torch.Tensor],
               truth: Optional[torch.Tensor] = None, true_labels: Optional[torch.Tensor] = None,
               device: torch.device | str = "cpu") -> Optional[UpdateFit]:
    """:class:`UpdateFit` of a reconstruction (``images`` in [0, 1], ``labels`` [B]) against the private batch
    (``truth``, ``true_labels``; without them, against a perfect fit), or None where it is not defined (see the
    module docstring)."""
    if "num_clients" in observation.extras or labels is None or labels.is_floating_point():
        return None
    if observation.update_kind == "local_update" and observation.local_training.minibatched(observation.batch_size):
        return None
    if truth is None or true_labels is None:
        truth, true_labels, measured = None, labels, False
    else:
        measured = True
    shape = images.shape if truth is None else truth.shape
    if not (images.shape[0] == shape[0] == labels.shape[0] == observation.batch_size):
        return None
    distance = update_distance(observation, device)
    guess = to_pixels(torch.randn(shape, generator=torch.Generator().manual_seed(0)), observation)  # the attacks' start
    if not measured:
        return UpdateFit(distance(images, labels), 0.0, distance(guess, true_labels), measured)
    return UpdateFit(distance(images, labels), distance(truth, true_labels), distance(guess, true_labels), measured,
                     copy_distance=distance(noisy_copy(truth, observation, NOISY_COPY_SIGMA), true_labels))


def noisy_copy(truth: torch.Tensor, observation: Observation, sigma: float, seed: int = 0) -> torch.Tensor:
    """``truth`` (pixels in [0, 1]) plus N(0, sigma^2) noise in the normalised space (seeded), clipped to the
    pixel box: a copy of the private batch a little way off, to probe the landscape around it."""
    std = torch.tensor(observation.data.std, dtype=torch.float32).view(1, -1, 1, 1)
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed))
    return (truth.detach().cpu().float() + sigma * std * noise).clamp(0, 1)


def update_distance(observation: Observation, device: torch.device | str = "cpu",
                    exclude: tuple[str, ...] = ()) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """``distance(images, labels)``: the global cosine distance D(u(x, y), u*) of a batch (``images`` in [0, 1],
    hard ``labels`` [B]) to the observed update, over every parameter tensor except those named in ``exclude``
    (e.g. the classifier's, to see how far the layers below it fit)."""
    distances = update_distances(observation, device, (exclude,))
    return lambda x, y: distances(x, y)[0]


def update_distances(observation: Observation, device: torch.device | str = "cpu",
                     excludes: Sequence[tuple[str, ...]] = ((),)
                     ) -> Callable[[torch.Tensor, torch.Tensor], list[float]]:
    """Like :func:`update_distance`, one distance per entry of ``excludes``, all from one simulated update."""
    victim = FunctionalVictim(observation, device)
    objective = MatchingObjective(victim, observation, distances=["cosine"])
    views = []
    for exclude in excludes:
        unknown = set(exclude) - set(objective.names)
        if unknown:
            raise ConfigError(f"'{sorted(unknown)[0]}' is not a parameter of the model")
        rows = torch.tensor([i for i, n in enumerate(objective.names) if n not in set(exclude)], device=device)
        views.append((rows, objective.target_sq[rows]))  # the target's norms once
    mean = torch.tensor(observation.data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(observation.data.std, device=device).view(1, -1, 1, 1)

    def distances(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        u, _ = objective.update_of((x.to(device, torch.float32) - mean) / std, y.to(device).long())
        dot, sq = tensor_statistics(u, objective.target)
        # 1 - cos >= 0 (rounding aside)
        return [max(0.0, float(cosine_from_statistics(dot[r], sq[r], tsq).detach())) for r, tsq in views]

    return distances


def flat_image(observation: Observation, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """A batch of ``shape`` filled with the data's mean colour in [0, 1] (the normalisation's mean, which the
    server knows): what an attacker has without looking at the update."""
    return torch.tensor(observation.data.mean, dtype=torch.float32).view(1, -1, 1, 1).expand(shape).clone()


def flat_image_psnr(observation: Observation, truth: torch.Tensor) -> float:
    """Mean PSNR of :func:`flat_image` against the private batch ``truth`` in [0, 1]: a reconstruction below it
    recovered nothing of the batch."""
    return float(psnr_per_image(flat_image(observation, truth.shape), truth.detach().cpu().float()).mean())


def against_flat_image(fit: Optional[UpdateFit], observation: Observation, truth: torch.Tensor,
                       psnr: float) -> Optional[UpdateFit]:
    """``fit`` with the reconstruction's mean PSNR and the flat mean-colour image's (:func:`flat_image_psnr`)
    against the private batch ``truth``, so that :attr:`UpdateFit.recovered_nothing` can be read off it."""
    if fit is None:
        return None
    return replace(fit, psnr=float(psnr), flat_psnr=flat_image_psnr(observation, truth))


__all__ = ["FIT_SHARE", "INTACT", "MIN_SIGNAL", "NOISY_COPY_SIGMA", "ROUGH", "UpdateFit", "against_flat_image",
           "flat_image", "flat_image_psnr", "noisy_copy", "update_distance", "update_distances",
           "update_fit"]
