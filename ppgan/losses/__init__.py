"""Loss functions: pure functions of tensors and modules."""
