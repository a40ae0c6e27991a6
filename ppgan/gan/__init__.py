"""The adversarial training step shared by every GAN loop (the anonymizer, the counterfactual
decoder) and by the benchmark: batch stream, critic phase, generator phase, AMP policy."""

from ppgan.gan.rid import identity_support, random_identity_step
from ppgan.gan.step import (
    REQUIRED_JUDGES,
    GanStep,
    anonymizer_step,
    critic_phase,
    reference_embeddings,
    require_bf16,
    run_epoch,
    train_stream,
)

__all__ = [
    "REQUIRED_JUDGES",
    "GanStep",
    "anonymizer_step",
    "critic_phase",
    "reference_embeddings",
    "require_bf16",
    "identity_support",
    "random_identity_step",
    "run_epoch",
    "train_stream",
]
