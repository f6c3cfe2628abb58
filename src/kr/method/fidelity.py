"""Generator fidelity: how much the synthetic images look like the real ones, measured without any external model.

Four measures, all computed against real images the generator did not train on (the validation split):

- **teacher agreement**: the share of samples the teacher assigns to the class they were drawn for. A direct
  measure of class-conditional fidelity; at chance (1/K) the generator ignores its label.
- **Frechet distance** (Heusel et al. 2017, "GANs trained by a two time-scale update rule...", eq. 6) between
  Gaussians fitted to features of real and synthetic images. The feature space is the teacher's penultimate
  layer (the pooled activations before its linear head), not Inception: MedMNIST images are 28x28 medical
  images, and the teacher is the network trained to tell their classes apart. Values are comparable only within
  one run (one teacher).
- **precision and recall** (Kynkaanniemi et al. 2019, "Improved precision and recall metric for assessing
  generative models", sec. 2): precision is the share of synthetic samples inside the real manifold (the union of
  k-NN balls around real features), recall the share of real samples inside the synthetic manifold. k = 3.
- **broken share**: samples whose simple image statistics fall outside the envelope of real images (see
  `Envelope`): saturated, flat, salt-and-pepper or otherwise not an image of this kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import linalg

from kr.runtime import autocast, device, to_unit

# The statistics an envelope bounds. Each catches one way a sample breaks:
#   mean         saturated white or black tiles
#   std          flat tiles (a single grey level)
#   saturated    pixels at exactly 0 or 255: a diverged sampler clips there
#   roughness    mean absolute difference between neighbouring pixels: salt-and-pepper noise
# saturated and roughness are bounded above only (see fit_envelope).
STATISTICS = ("mean", "std", "saturated", "roughness")
# What `fidelity` reports for a sample set (besides per class): the keys the selection grid and summary carry.
FIDELITY_KEYS = ("teacher_agreement", "broken_fraction", "frechet_distance", "precision", "recall")


def image_statistics(x_uint8: np.ndarray) -> np.ndarray:
    """Per-image statistics of uint8 (N, C, H, W) images -> float64 (N, 4), columns as in `STATISTICS`.

    Intensities are on the 0-255 scale; `saturated` is a fraction in [0, 1].
    """
    x = np.asarray(x_uint8, dtype=np.float64)
    n = len(x)
    flat = x.reshape(n, -1)
    saturated = ((x == 0) | (x == 255)).reshape(n, -1).mean(1)
    dx = np.abs(np.diff(x, axis=-1)).reshape(n, -1).mean(1)
    dy = np.abs(np.diff(x, axis=-2)).reshape(n, -1).mean(1)
    return np.stack([flat.mean(1), flat.std(1), saturated, (dx + dy) / 2], axis=1)


@dataclass(frozen=True)
class Envelope:
    """Per-statistic [low, high] bounds of real images, widened by a margin.

    Bounds are the `quantile` and `1 - quantile` quantiles of the real images' statistics, widened on each side
    by `margin` times the inter-quantile range. With quantile 0.005 and margin 0.25, a real image falls outside on
    one statistic only if it is more extreme than 99.5% of real images and a quarter of the real range beyond;
    `false_positive_rate` reports how many real held-out images the envelope rejects (it should be near 0).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    quantile: float
    margin: float

    def broken(self, x_uint8: np.ndarray) -> np.ndarray:
        """bool (N,): True where any statistic of the image lies outside the envelope."""
        if len(x_uint8) == 0:
            return np.zeros(0, bool)
        s = image_statistics(x_uint8)
        return ((s < np.asarray(self.low)) | (s > np.asarray(self.high))).any(axis=1)

    @classmethod
    def from_dict(cls, values: dict) -> Envelope:
        """The envelope `to_dict` wrote (e.g. the selection result's), without fitting it again."""
        return cls(tuple(values["low"]), tuple(values["high"]), values["quantile"], values["margin"])

    def to_dict(self) -> dict:
        """JSON-ready dict: low, high, quantile, margin, and "statistics" (the names of the bounded columns)."""
        d = asdict(self)
        d["statistics"] = list(STATISTICS)
        return d


# Real MedMNIST images have almost no pixel at exactly 0 or 255 (BreastMNIST: 0.4% at the 99.5% quantile), so a
# fitted bound would flag a clean sample for a handful of clipped pixels. A diverged sampler saturates far more
# (58% of pixels measured on a broken RGB run); 5% (39 of 784 pixels) separates the two.
MIN_SATURATED_BOUND = 0.05


def fit_envelope(x_real_uint8: np.ndarray, quantile: float = 0.005, margin: float = 0.25) -> Envelope:
    """The envelope of real uint8 (N, C, H, W) images. Raises ValueError on an empty set."""
    if len(x_real_uint8) == 0:
        raise ValueError("fit_envelope needs at least one real image")
    s = image_statistics(x_real_uint8)
    lo, hi = np.quantile(s, quantile, axis=0), np.quantile(s, 1 - quantile, axis=0)
    pad = margin * (hi - lo)
    low, high = lo - pad, hi + pad
    sat, rough = STATISTICS.index("saturated"), STATISTICS.index("roughness")
    high[sat] = max(high[sat], MIN_SATURATED_BOUND)
    # saturation and roughness break a sample only upwards: a sample smoother than real images (measured: a
    # generator that drew the RGB shapes cleanly but without their pixel noise) lacks texture, which the Frechet
    # distance and recall measure; it is not broken. Both statistics are >= 0, so 0 leaves them open below.
    low[sat] = low[rough] = 0.0
    return Envelope(tuple(low.tolist()), tuple(high.tolist()), quantile, margin)


@torch.no_grad()
def teacher_outputs(model: torch.nn.Module, x_uint8: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, ...]:
    """(logits float32 (N, K), features float64 (N, D)) of the `SmallResNet` teacher; D is its last stage's width.

    Features are the pooled activations that feed the linear head (dropout is inactive in eval mode).
    """
    model.eval()
    dev = device()
    pool, head = model.head[:2], model.head[2:]  # AdaptiveAvgPool2d + Flatten | Dropout + Linear
    logits, feats = [], []
    for i in range(0, len(x_uint8), batch_size):
        xb = to_unit(x_uint8[i : i + batch_size]).to(dev)
        with autocast("auto", dev):
            f = pool(model.stages(model.stem(xb))).float()
        feats.append(f.cpu().double())
        logits.append(head(f).float().cpu())
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0))
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to float (N, D) and (M, D) feature sets (Heusel et al. 2017, eq. 6):
    ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)). Needs N, M >= 2; returns NaN otherwise.

    With few samples the estimate is biased upwards: compare values at equal sample sizes only.
    """
    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s_r @ s_f)
    if not np.isfinite(covmean).all():  # singular product: regularise as in the reference implementation
        eps = np.eye(len(s_r)) * 1e-6
        covmean = linalg.sqrtm((s_r + eps) @ (s_f + eps))
    covmean = np.real(covmean)
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r) + np.trace(s_f) - 2 * np.trace(covmean))


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(feats, feats)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is its own nearest neighbour


def _inside(queries: torch.Tensor, refs: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    return (torch.cdist(queries, refs) <= radii[None, :]).any(dim=1)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, sec. 2) of float (M, D) synthetic features against
    float (N, D) real ones, with k-NN manifolds. Both in [0, 1]; NaN when either set has k or fewer points."""
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    r, f = torch.as_tensor(real), torch.as_tensor(fake)
    precision = _inside(f, r, _knn_radii(r, k)).double().mean().item()
    recall = _inside(r, f, _knn_radii(f, k)).double().mean().item()
    return float(precision), float(recall)


@dataclass(frozen=True)
class RealReference:
    """What fidelity is measured against: real held-out images' teacher features and labels, and the envelope."""

    features: np.ndarray  # float64 (N, D)
    labels: np.ndarray  # int64 (N,)
    envelope: Envelope
    envelope_false_positive_rate: float  # share of these real images the envelope calls broken


def real_reference(
    teacher: torch.nn.Module, x_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> RealReference:
    """Fit the envelope on real training images (uint8 (N, C, H, W)) and embed real validation images (uint8 (M,
    C, H, W), int labels (M,)) in the teacher's feature space.

    The envelope's false-positive rate is the share of val images it calls broken (NaN for no val image).
    Raises ValueError when x_train is empty.
    """
    envelope = fit_envelope(x_train)
    _, feats = teacher_outputs(teacher, x_val)
    fpr = float(envelope.broken(x_val).mean()) if len(x_val) else float("nan")
    return RealReference(feats, np.asarray(y_val).astype(np.int64), envelope, fpr)


def fidelity(teacher: torch.nn.Module, ref: RealReference, x_fake: np.ndarray, y_fake: np.ndarray, k: int = 3) -> dict:
    """Fidelity of synthetic uint8 (M, C, H, W) images drawn for int labels (M,), overall and per class.

    Returns {teacher_agreement, broken_fraction, frechet_distance, precision, recall, n, per_class: {c: {...}},
    envelope_false_positive_rate}; agreement, broken fraction, precision and recall are fractions in [0, 1], the
    distance is in squared teacher-feature units (Heusel et al. 2017; precision and recall: Kynkaanniemi et al.
    2019, with k neighbours). A class compares with the real images of that class; a measure without enough
    samples is NaN.
    """
    y_fake = np.asarray(y_fake).astype(np.int64)
    logits, feats = teacher_outputs(teacher, x_fake)
    agree = logits.argmax(1) == y_fake if len(logits) else np.zeros(0, bool)
    broken = ref.envelope.broken(x_fake)

    def measures(mask_fake: np.ndarray, mask_real: np.ndarray) -> dict:
        p, r = precision_recall(ref.features[mask_real], feats[mask_fake], k)
        return {
            "n": int(mask_fake.sum()),
            "teacher_agreement": float(agree[mask_fake].mean()) if mask_fake.any() else float("nan"),
            "broken_fraction": float(broken[mask_fake].mean()) if mask_fake.any() else float("nan"),
            "frechet_distance": frechet_distance(ref.features[mask_real], feats[mask_fake]),
            "precision": p,
            "recall": r,
        }

    out = measures(np.ones(len(y_fake), bool), np.ones(len(ref.labels), bool))
    out["per_class"] = {str(c): measures(y_fake == c, ref.labels == c) for c in np.unique(y_fake).tolist()}
    out["envelope_false_positive_rate"] = ref.envelope_false_positive_rate
    return out
