"""CUDA correctness: the same tiny runs on the GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch

from ppgan.engine import load_frozen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("amp", ["false", "true"])
def test_tiny_pipeline_on_cuda(run, amp):
    metrics, out = run(
        "task=pipeline", "trainer.device=cuda", f"trainer.amp={amp}", name=f"pipe_cuda_amp_{amp}"
    )
    assert all(v == v for k, v in metrics.items() if "kid" not in k)  # no NaN
    assert metrics["original/privacy/unseen_acc"] > metrics["chance/identity"]
    assert (out / "evaluate" / "report.md").exists()
    # A checkpoint written on the GPU rebuilds on the CPU and gives the same outputs.
    net, _ = load_frozen(out / "disease" / "checkpoints" / "best.pt")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    net_gpu, _ = load_frozen(out / "disease" / "checkpoints" / "best.pt", device="cuda")
    assert torch.allclose(net(x), net_gpu(x.cuda()).cpu(), atol=1e-4)


def test_cuda_and_cpu_identity_runs_agree_in_quality(run):
    cpu, _ = run("task=identity", "task.epochs=12", name="cpu")
    gpu, _ = run("task=identity", "task.epochs=12", "trainer.device=cuda", name="gpu")
    assert abs(cpu["test/acc"] - gpu["test/acc"]) <= 0.34  # different kernels, same learning
    assert gpu["test/acc"] >= 3 * gpu["chance"]
