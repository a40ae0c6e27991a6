"""The evaluation report: markdown tables with 95 % intervals and a privacy-utility plot."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt

from ppgan.engine.context import write_text
from ppgan.metrics.bootstrap import CI_HI, CI_LO

# (metric key, column title, group) in table order.
COLUMNS = [
    ("privacy/seen_acc", "id-classifier acc ↓", "privacy"),
    ("privacy/unseen_acc", "unseen id acc ↓", "privacy"),
    ("privacy/unseen_top5", "unseen top-5 ↓", "privacy"),
    ("privacy/adaptive_acc", "adaptive id acc ↓", "privacy"),
    ("privacy/link_siamese_rank1", "link rank-1 (siamese) ↓", "privacy"),
    ("privacy/link_unseen_rank1", "link rank-1 (unseen feat.) ↓", "privacy"),
    ("privacy/link_siamese_auc", "link AUC (siamese) ↓", "privacy"),
    ("privacy/link_siamese_auc_same_disease", "link AUC ∣ disease (siamese) ↓", "privacy"),
    ("privacy/worst_ratio", "worst attack / chance∣disease ↓", "privacy"),
    ("utility/disease_acc", "disease acc ↑", "utility"),
    ("utility/indep_acc", "indep. disease acc ↑", "utility"),
    ("utility/agreement", "agreement ↑", "utility"),
    ("realism/diversity", "diversity ↑ (orig. = 1)", "realism"),
    ("realism/fid", "FD id-feat. ↓", "realism"),
    ("realism/fid_disease", "FD disease-feat. ↓", "realism"),
    ("realism/kid_disease", "KID disease-feat. ↓", "realism"),
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
    ("realism/fid", "FD id-feat. ↓"),
    ("realism/kid", "KID id-feat. ↓"),
    ("privacy/seen_acc", "id-classifier acc ↓"),
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
# Per-attacker adaptive accuracies: `privacy/adaptive_<attacker>_acc` (task.adaptive's names);
# `privacy/adaptive_acc` is the best of them.
ADAPTIVE_PREFIX, ADAPTIVE_SUFFIX = "privacy/adaptive_", "_acc"


def adaptive_key(attacker: str) -> str:
    """The metric key of one adaptive attacker's top-1 identity accuracy."""
    return f"{ADAPTIVE_PREFIX}{attacker}{ADAPTIVE_SUFFIX}"


def adaptive_attackers(row: dict[str, float]) -> list[str]:
    """The adaptive attackers a method's row reports, in the row's order."""
    names = []
    for key in row:
        if key.startswith(ADAPTIVE_PREFIX) and key.endswith(ADAPTIVE_SUFFIX):
            name = key[len(ADAPTIVE_PREFIX) : -len(ADAPTIVE_SUFFIX)]
            if name:  # `privacy/adaptive_acc` itself is the best of them
                names.append(name)
    return names


RELEASE_COLUMNS = [
    ("release/position_join", "position join ↓", "release/position_chance"),
    ("release/mask_join", "mask join ↓", "release/join_chance"),
    ("release/metadata_join", "metadata join ↓", "release/join_chance"),
    ("release/pixel_join", "pixel NN join ↓", "release/join_chance"),
]


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


def _cell(row: dict, key: str) -> str:
    """The value, with its bootstrap 95 % interval when it has one: `0.067 [0.025, 0.117]`."""
    text = _fmt(row.get(key))
    if key + CI_LO in row and text != "–":
        text += f" [{_fmt(row[key + CI_LO])}, {_fmt(row[key + CI_HI])}]"
    return text


def write_report(
    rows: dict[str, dict[str, float]],
    chance: dict[str, float],
    k: int,
    out_dir: Path,
    split: str = "test",
    seen: dict[str, str] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write `report.md` and `privacy_utility.png` into `out_dir` (atomically); returns the
    report's path. `seen[name]` is the identity network a method was trained against
    (`identity`, `siamese` or empty): an id-classifier cell of a method that never saw that
    classifier is marked †."""
    seen = seen or {}
    key = {c: c.replace("precision_at_k", f"precision_at_{k}") for c, _, _ in COLUMNS}
    head = ["method"] + [t.replace("P@k", f"P@{k}") for _, t, _ in COLUMNS]
    lines = [
        "# ppgan evaluation report",
        "",
        f"**{split} split.** ↓ lower is better for privacy (chance = no leakage), ↑ higher is "
        "better. Rates and AUCs: value [bootstrap 95 % interval over the evaluated images, "
        "fixed seed].",
        "",
        "Attacks: *id-classifier* = the identity classifier PP-MIR was trained against († = "
        "this method never saw it: PP-SIR was trained against the siamese network, the "
        "baselines against nothing); *unseen* = a ResNet trained from scratch on the "
        "original training split with another seed; *adaptive* = the strongest of several "
        "attackers trained on the anonymized training split with the true identities, each "
        "stopped or tuned on the anonymized validation split (table below); *link* = rank "
        "the original training images by distance to each anonymized image. *worst attack / "
        "chance∣disease* = the largest of unseen, adaptive and link rank-1, each divided by "
        "`chance | disease` (the sweeps' privacy "
        "score is its inverse, capped at 1). *diversity* = mean pairwise distance between "
        "images of one disease class in the independent disease network's feature space, "
        "relative to the originals' (a class prototype scores 0). *FD* = Fréchet distance in "
        "the unseen identity network's / the disease network's feature space. Retrieval: the "
        "k nearest cases of the (anonymized) training split in the disease network's feature "
        "space. *chance | disease* = mean over evaluated images of 1 / #identities with that "
        "image's disease: what an attacker reaches from any output that keeps the disease.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    factual = {n: r for n, r in rows.items() if "utility/indep_acc" in r}
    counterfactual = {n: r for n, r in rows.items() if "cf/flip_rate" in r}
    for name, row in factual.items():
        cells = [_cell(row, key[c]) for c, _, _ in COLUMNS]
        if seen.get(name) != "identity":
            cells[0] += " †"
        lines.append("| " + " | ".join([name, *cells]) + " |")
    identity_rows = [
        "privacy/seen_acc",
        "privacy/unseen_acc",
        "privacy/adaptive_acc",
        "privacy/link_siamese_rank1",
        "privacy/link_unseen_rank1",
    ]
    chance_row = dict.fromkeys(identity_rows, chance["identity"])
    chance_row |= {
        "privacy/unseen_top5": chance["identity_top5"],
        "privacy/link_siamese_auc": 0.5,
        "privacy/link_siamese_auc_same_disease": 0.5,
        "utility/disease_acc": chance["disease"],
        "utility/indep_acc": chance["disease"],
    }
    lines.append(
        "| *chance* | " + " | ".join(_fmt(chance_row.get(c)) for c, _, _ in COLUMNS) + " |"
    )
    disease_row = dict.fromkeys(identity_rows, chance["identity_disease"])
    disease_row["privacy/worst_ratio"] = 1.0
    lines.append(
        "| *chance ∣ disease* | "
        + " | ".join(_fmt(disease_row.get(c)) for c, _, _ in COLUMNS)
        + " |"
    )
    lines += adaptive_lines(factual, chance)
    released = {n: r for n, r in rows.items() if "release/position_join" in r}
    if released:
        lines += [
            "",
            "## The release as shipped (side channels)",
            "",
            "The exported file (`task=export`) attacked with the original file in hand: "
            "*position join* = the k-th released row of a split is the k-th original row; *mask "
            "join* = the original row with the nearest ROI mask (– = the release has no masks); "
            "*metadata join* = a random original row agreeing on every column both files have "
            "(`dis`, `set`, ...); *pixel NN join* = the original image nearest in pixel space. "
            "Each is scored by identity, next to its chance (the same guess from public "
            "information only: the split for position, the disease for the others).",
            "",
            "| method | " + " | ".join(f"{t} | chance" for _, t, _ in RELEASE_COLUMNS) + " | "
            "HDF5 attributes |",
            "|" + "---|" * (2 * len(RELEASE_COLUMNS) + 2),
        ]
        for name, row in released.items():
            cells = [f"{_cell(row, c)} | {_fmt(row.get(ch))}" for c, _, ch in RELEASE_COLUMNS]
            attrs = str(int(row.get("release/n_attributes", 0)))
            twin = " (twin)" if row.get("release/twin") else ""
            lines.append("| " + " | ".join([name + twin, *cells, attrs]) + " |")
        if any(r.get("release/twin") for r in released.values()):
            lines += [
                "",
                "*(twin)*: a stochastic method (a new person per image and per export): no "
                "released image matches any of its outputs, so nobody, the evaluation included, "
                "can tell from the shipped file who a row shows. The shipped file was checked "
                "for the exporter's columns and its attributes counted; the joins were scored "
                "on a twin export (same exporter and generator, identities recorded, deleted).",
            ]
    if counterfactual:
        lines += [
            "",
            "## Counterfactuals",
            "",
            "The same cases shown with another diagnosis. Flip rate: share whose disease "
            "decision moves to the target class the counterfactual was trained toward (training "
            "and independent disease networks, same target); proximity is measured against the "
            "factual anonymized image.",
            "",
            "| method | " + " | ".join(t for _, t in CF_COLUMNS) + " |",
            "|" + "---|" * (len(CF_COLUMNS) + 1),
        ]
        for name, row in counterfactual.items():
            lines.append("| " + " | ".join([name] + [_cell(row, c) for c, _ in CF_COLUMNS]) + " |")
    lines += openset_lines(rows)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "![privacy-utility](privacy_utility.png)", ""]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))

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
    ax.axvline(chance["identity_disease"], ls="-.", c="grey", lw=1, label="chance | disease")
    ax.axhline(chance["disease"], ls=":", c="grey", lw=1, label="disease chance")
    ax.set_xlabel("unseen attacker identity accuracy (lower = more private)")
    ax.set_ylabel("independent disease accuracy (higher = more useful)")
    ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"privacy–utility trade-off ({split} split)")
    fig.tight_layout()
    tmp = out_dir / "privacy_utility.tmp.png"
    fig.savefig(tmp)
    tmp.replace(out_dir / "privacy_utility.png")
    plt.close(fig)
    return path


def adaptive_lines(rows: dict[str, dict[str, float]], chance: dict[str, float]) -> list[str]:
    """The adaptive-attacker section: each attacker's top-1 with its interval, per method."""
    names = next((adaptive_attackers(r) for r in rows.values() if adaptive_attackers(r)), [])
    if not names:
        return []
    lines = [
        "",
        "## Adaptive attackers",
        "",
        "Each attacker learns identity from the method's anonymized training split (true "
        "identities) and makes every choice on its anonymized validation split: *resnet* = the "
        "unseen attacker's ResNet on per-pixel standardized inputs, stopped early on validation "
        "accuracy; *resnet_aug* = the same on augmented batches (shifts, brightness, contrast, "
        "noise; no flips); *linear* = logistic regression on whitened principal components of "
        "standardized pixels, its regularisation picked on validation; *knn* = nearest "
        "anonymized training images on such components, k picked on validation. Top-1 identity "
        "accuracy on the evaluated split; *adaptive id acc* above is the best of them (taking a "
        "maximum on the evaluated images favours the attacker: conservative).",
        "",
        "| method | " + " | ".join(f"{n} ↓" for n in names) + " |",
        "|" + "---|" * (len(names) + 1),
    ]
    for name, row in rows.items():
        cells = [_cell(row, adaptive_key(n)) for n in names]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    for label, value in (("chance", "identity"), ("chance ∣ disease", "identity_disease")):
        lines.append(f"| *{label}* | " + " | ".join([_fmt(chance[value])] * len(names)) + " |")
    return lines


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
