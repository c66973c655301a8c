"""Observability: TensorBoard runs and HPARAMS sessions, training monitors, system information."""
