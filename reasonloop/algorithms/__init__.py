"""Training algorithms: losses are pure functions of tensors; `train_*` loops feed them."""
