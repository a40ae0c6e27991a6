"""Side-channel attacks on an exported release: can its row order, masks, metadata or pixels be
joined to the original file? Each attack holds the original file (the strongest outsider: a
hospital insider or a leaked copy) and guesses, for every released row, the original row it came
from; `identity_rate` scores the guesses by identity against the truth, `chance_rate` is what the
same guess scores when the side channel carries no information.
"""

from __future__ import annotations

import numpy as np
import torch

# Release columns that are not metadata: the pixels, masks (own attack) and the evaluation-only
# identity labels (the attacker's target, never a join key).
NOT_METADATA = ("images", "masks", "id")


def position_join(release_split: np.ndarray, original_split: np.ndarray) -> np.ndarray:
    """Guess: the k-th released row of split s is the k-th original row of split s (an export
    that keeps the file's order). Returns the guessed original row per released row, -1 if none."""
    guess = np.full(len(release_split), -1, dtype=np.int64)
    for s in np.unique(release_split):
        rel, orig = np.flatnonzero(release_split == s), np.flatnonzero(original_split == s)
        n = min(len(rel), len(orig))
        guess[rel[:n]] = orig[:n]
    return guess


def mask_join(release_masks: np.ndarray, original_masks: np.ndarray) -> np.ndarray:
    """Guess: the original row whose ROI mask differs from the released one in fewest pixels.

    Args:
        release_masks: [R, H, W], non-zero inside the ROI; original_masks: [O, H, W].
    """
    rel = torch.from_numpy(release_masks.reshape(len(release_masks), -1) != 0).float()
    orig = torch.from_numpy(original_masks.reshape(len(original_masks), -1) != 0).float()
    # Hamming distance of binary masks: |a| + |b| - 2 a.b
    d = rel.sum(1, keepdim=True) + orig.sum(1)[None, :] - 2 * rel @ orig.T  # [R, O]
    return d.argmin(1).numpy()


def metadata_join(
    release_cols: dict[str, np.ndarray], original_cols: dict[str, np.ndarray]
) -> tuple[list[np.ndarray], list[str]]:
    """Candidates: the original rows whose values agree with the released row in every per-row
    column that both files have (e.g. `dis`, `set`; a leaked `index` or file name makes the match
    unique). The attacker guesses one of them at random; `candidate_hits` scores that guess by
    its expectation, so the result does not depend on a random draw or on the release's order.

    Returns:
        Per released row, its candidate original rows (all rows when nothing can be joined),
        and the join columns used.
    """
    n, n_orig = _rows(release_cols), _rows(original_cols)
    keys = sorted(
        k
        for k in release_cols.keys() & original_cols.keys()
        if k not in NOT_METADATA
        and np.ndim(release_cols[k]) >= 1
        and np.shape(release_cols[k])[0] == n
        and np.ndim(original_cols[k]) >= 1
        and np.shape(original_cols[k])[0] == n_orig
    )
    if not keys:
        return [np.arange(n_orig)] * n, keys
    rel = np.stack([np.asarray(release_cols[k]).reshape(n, -1)[:, 0] for k in keys], 1)
    orig = np.stack([np.asarray(original_cols[k]).reshape(n_orig, -1)[:, 0] for k in keys], 1)
    out = []
    for r in range(n):
        match = np.flatnonzero((orig == rel[r]).all(1))
        out.append(match if len(match) else np.arange(n_orig))
    return out, keys


def _rows(cols: dict[str, np.ndarray]) -> int:
    """The number of rows of a file's columns (that of its longest per-row array)."""
    return max((np.shape(v)[0] for v in cols.values() if np.ndim(v) >= 1), default=0)


@torch.no_grad()
def pixel_join(release: torch.Tensor, original: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Guess: the original image nearest to the released one in pixel space (L2).

    Args:
        release: [R, C, H, W]; original: [O, C, H, W], same scale.
    """
    flat = original.flatten(1).float()
    out = [
        torch.cdist(release[i : i + batch_size].flatten(1).float(), flat).argmin(1)
        for i in range(0, len(release), batch_size)
    ]
    return torch.cat(out).cpu().numpy()


def truth_matrix(true_ids: np.ndarray, n_ids: int) -> np.ndarray:
    """The truth as [R, n_ids] probabilities: one-hot rows for known identities, or a given
    distribution (e.g. uniform over the identities of several equally matching original rows)."""
    true_ids = np.asarray(true_ids)
    if true_ids.ndim == 2:
        return true_ids.astype(np.float64)
    return np.eye(n_ids)[true_ids]


def identity_hits(guess: np.ndarray, true_ids: np.ndarray, original_ids: np.ndarray) -> np.ndarray:
    """Per released row: does the guessed original row have the row's true identity? [R] in
    [0, 1] (the probability of it, when the truth is a distribution; 0 for no guess, -1)."""
    p = truth_matrix(true_ids, int(original_ids.max()) + 1)
    ok = guess >= 0
    hits = np.zeros(len(guess))
    hits[ok] = p[np.flatnonzero(ok), original_ids[guess[ok]]]
    return hits


def candidate_hits(
    candidates: list[np.ndarray], true_ids: np.ndarray, original_ids: np.ndarray
) -> np.ndarray:
    """Per released row: the chance that a uniform guess among its candidates has its identity."""
    p = truth_matrix(true_ids, int(original_ids.max()) + 1)
    return np.array([p[r, original_ids[c]].mean() for r, c in enumerate(candidates)])


def chance_rate(
    true_ids: np.ndarray,
    true_groups: np.ndarray,
    original_ids: np.ndarray,
    original_groups: np.ndarray,
) -> float:
    """Expected identity rate of a guess drawn uniformly from the original rows that share the
    released row's public group (its split for the position join, its disease for the others):
    mean over released rows of (#group rows with its identity) / (#group rows)."""
    n_ids = int(original_ids.max()) + 1
    p = truth_matrix(true_ids, n_ids)
    rates = []
    for r, g in enumerate(true_groups):
        pool = original_ids[original_groups == g]
        share = np.bincount(pool, minlength=n_ids) / max(len(pool), 1)
        rates.append(float(p[r] @ share))
    return float(np.mean(rates)) if rates else float("nan")


def match_truth(
    release: torch.Tensor,
    outputs: torch.Tensor,
    output_ids: np.ndarray,
    n_ids: int,
    tol: float = 0.05,
) -> np.ndarray | None:
    """Which identity each released image came from, known to the evaluation only: the original
    rows whose method output equals the released image (RMS difference within one grey level,
    2/255 on the [-1, 1] scale, of the best match). Several equal outputs (a collapsed method)
    make the truth a uniform distribution over their identities [R, n_ids]; None when some image
    matches no output within `tol` (RMS)."""
    truth = np.zeros((len(release), n_ids))
    scale = release[0].numel() ** 0.5
    for start in range(0, len(release), 256):
        rms = torch.cdist(release[start : start + 256].flatten(1), outputs.flatten(1)) / scale
        best = rms.min(1, keepdim=True).values
        if float(best.max()) > tol:
            return None
        tied = (rms <= best + 2 / 255).numpy()  # [B, O]: equally good matches
        for i, row in enumerate(tied):
            truth[start + i] = np.bincount(output_ids[row], minlength=n_ids) / row.sum()
    return truth
