"""The evaluation report: one markdown table and a privacy-utility scatter plot."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt

# (metric key, column title, group) in table order.
COLUMNS = [
    ("privacy/seen_acc", "seen id acc ↓", "privacy"),
    ("privacy/unseen_acc", "unseen id acc ↓", "privacy"),
    ("privacy/unseen_top5", "unseen top-5 ↓", "privacy"),
    ("privacy/adaptive_acc", "adaptive id acc ↓", "privacy"),
    ("privacy/link_siamese_rank1", "link rank-1 (siamese) ↓", "privacy"),
    ("privacy/link_unseen_rank1", "link rank-1 (unseen feat.) ↓", "privacy"),
    ("privacy/link_siamese_auc", "link AUC (siamese) ↓", "privacy"),
    ("utility/disease_acc", "disease acc ↑", "utility"),
    ("utility/indep_acc", "indep. disease acc ↑", "utility"),
    ("utility/agreement", "agreement ↑", "utility"),
    ("realism/fid", "FID ↓", "realism"),
    ("realism/kid", "KID ↓", "realism"),
    ("realism/ssim_roi", "SSIM ROI ↑", "realism"),
    ("realism/psnr_roi", "PSNR ROI ↑", "realism"),
    ("realism/ssim_outside", "SSIM outside", "realism"),
    ("retrieval/precision_at_k", "P@k ↑", "retrieval"),
]
CF_COLUMNS = [
    ("cf/flip_rate", "flip rate ↑"),
    ("cf/indep_flip_rate", "indep. flip rate ↑"),
    ("cf/ssim_outside", "SSIM outside ROI vs factual ↑"),
    ("cf/psnr_outside", "PSNR outside ROI vs factual ↑"),
    ("realism/fid", "FID ↓"),
    ("realism/kid", "KID ↓"),
    ("privacy/seen_acc", "seen id acc ↓"),
    ("privacy/unseen_acc", "unseen id acc ↓"),
    ("privacy/link_siamese_rank1", "link rank-1 (siamese) ↓"),
    ("privacy/link_unseen_rank1", "link rank-1 (unseen feat.) ↓"),
]
# Open-set attacks (ppgan.metrics.openset), reported when some test subjects are not in training.
OPENSET_COLUMNS = [
    ("privacy/openset_siamese_rank1", "open-set rank-1 (siamese) ↓", "chance_rank1"),
    ("privacy/openset_siamese_rank5", "open-set rank-5 (siamese) ↓", "chance_rank5"),
    ("privacy/openset_siamese_auc", "open-set AUC (siamese) ↓", None),
    ("privacy/openset_unseen_rank1", "open-set rank-1 (unseen feat.) ↓", "chance_rank1"),
    ("privacy/openset_unseen_auc", "open-set AUC (unseen feat.) ↓", None),
]


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


def write_report(
    rows: dict[str, dict[str, float]], chance: dict[str, float], k: int, out_dir: Path
) -> Path:
    """Write `report.md` and `privacy_utility.png` into `out_dir`; returns the report's path."""
    key = {c: c.replace("precision_at_k", f"precision_at_{k}") for c, _, _ in COLUMNS}
    head = ["method"] + [t.replace("P@k", f"P@{k}") for _, t, _ in COLUMNS]
    lines = [
        "# ppgan evaluation report",
        "",
        "Test split. ↓ lower is better for privacy (chance = no leakage), ↑ higher is better.",
        "Attacks: *seen* = the identity classifier the GAN was trained against; *unseen* = a "
        "ResNet trained from scratch on the original training split with another seed; "
        "*adaptive* = the same architecture trained on the anonymized training split; *link* = "
        "rank the original training images by distance to each anonymized test image. Realism "
        "features: the unseen identity ResNet's penultimate layer. Retrieval: the k nearest "
        "cases of the (anonymized) training split in the disease network's feature space.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    factual = {n: r for n, r in rows.items() if "utility/indep_acc" in r}
    counterfactual = {n: r for n, r in rows.items() if "cf/flip_rate" in r}
    for name, row in factual.items():
        lines.append(
            "| " + " | ".join([name] + [_fmt(row.get(key[c])) for c, _, _ in COLUMNS]) + " |"
        )
    chance_row = {
        "privacy/seen_acc": chance["identity"],
        "privacy/unseen_acc": chance["identity"],
        "privacy/unseen_top5": chance["identity_top5"],
        "privacy/adaptive_acc": chance["identity"],
        "privacy/link_siamese_rank1": chance["identity"],
        "privacy/link_unseen_rank1": chance["identity"],
        "privacy/link_siamese_auc": 0.5,
        "utility/disease_acc": chance["disease"],
        "utility/indep_acc": chance["disease"],
    }
    lines.append(
        "| *chance* | " + " | ".join(_fmt(chance_row.get(c)) for c, _, _ in COLUMNS) + " |"
    )
    if counterfactual:
        lines += [
            "",
            "## Counterfactuals",
            "",
            "The same test cases shown with the other diagnosis. Flip rate: share whose "
            "disease decision moves to the target class (training and independent disease "
            "networks); proximity is measured against the factual anonymized image.",
            "",
            "| method | " + " | ".join(t for _, t in CF_COLUMNS) + " |",
            "|" + "---|" * (len(CF_COLUMNS) + 1),
        ]
        for name, row in counterfactual.items():
            lines.append(
                "| " + " | ".join([name] + [_fmt(row.get(c)) for c, _ in CF_COLUMNS]) + " |"
            )
    lines += openset_lines(rows)
    lines += ["", "![privacy-utility](privacy_utility.png)", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for name, row in factual.items():
        ax.scatter(row["privacy/unseen_acc"], row["utility/indep_acc"], s=40)
        ax.annotate(
            name,
            (row["privacy/unseen_acc"], row["utility/indep_acc"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=9,
        )
    ax.axvline(chance["identity"], ls="--", c="grey", lw=1, label="identity chance")
    ax.axhline(chance["disease"], ls=":", c="grey", lw=1, label="disease chance")
    ax.set_xlabel("unseen attacker identity accuracy (lower = more private)")
    ax.set_ylabel("independent disease accuracy (higher = more useful)")
    ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("privacy–utility trade-off (test split)")
    fig.tight_layout()
    fig.savefig(out_dir / "privacy_utility.png")
    plt.close(fig)
    return path


def openset_lines(rows: dict[str, dict[str, float]]) -> list[str]:
    """The open-set section of the report; none when every test subject is a training identity."""
    have = {n: r for n, r in rows.items() if OPENSET_COLUMNS[0][0] in r}
    if not have:
        return []
    first = next(iter(have.values()))
    chance = [first[f"privacy/openset_{c}"] if c else 0.5 for _, _, c in OPENSET_COLUMNS]
    lines = [
        "",
        "## Open-set attacks",
        "",
        f"{first['privacy/openset_n_probes']:.0f} test images belong to subjects absent from the "
        "training split. For them the **closed-set** attacks above (seen, unseen and adaptive "
        "identity classifiers, link to the training images) can only succeed by chance, on any "
        "method and on the original images alike, and measure nothing. The open-set attacks "
        "link each anonymized test image to the *other original* test images (its own original "
        "left out): rank-k re-identification among the test subjects, and verification AUC of "
        "same- against other-subject pairs.",
        "",
        "| method | " + " | ".join(t for _, t, _ in OPENSET_COLUMNS) + " |",
        "|" + "---|" * (len(OPENSET_COLUMNS) + 1),
    ]
    for name, row in have.items():
        lines.append(
            "| " + " | ".join([name] + [_fmt(row.get(c)) for c, _, _ in OPENSET_COLUMNS]) + " |"
        )
    lines.append("| *chance* | " + " | ".join(_fmt(v) for v in chance) + " |")
    return lines
