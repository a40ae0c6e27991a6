"""Classification metrics computed with scikit-learn."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from torch import Tensor


def classification_metrics(logits: Tensor, labels: Tensor, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and ROC AUC (one-vs-rest macro when K > 2).

    ROC AUC is NaN when a class is missing from `labels` (it is undefined there).
    """
    prob = torch.softmax(logits.float(), dim=1).cpu().numpy()
    y = labels.cpu().numpy()
    pred = prob.argmax(1)
    out = {
        "acc": accuracy_score(y, pred),
        "balanced_acc": balanced_accuracy_score(y, pred),
        "macro_f1": f1_score(
            y, pred, average="macro", labels=np.arange(n_classes), zero_division=0
        ),
        "roc_auc": float("nan"),
    }
    if len(np.unique(y)) == n_classes and n_classes >= 2:
        if n_classes == 2:
            out["roc_auc"] = roc_auc_score(y, prob[:, 1])
        else:
            out["roc_auc"] = roc_auc_score(y, prob, multi_class="ovr", labels=np.arange(n_classes))
    return {k: float(v) for k, v in out.items()}


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(1)
    return float(hits.float().mean())
