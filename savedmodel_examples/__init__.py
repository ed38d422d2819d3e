"""Runnable examples: train with `tf_adadelta.Adadelta`, export, resume."""
