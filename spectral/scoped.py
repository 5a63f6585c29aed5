"""Scoped state changes: the library changes no process-wide setting that outlives the call that needs it
(a notebook's own random stream and progress bars stay as the user left them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block under ``torch.manual_seed(seed)`` and give the caller's CPU random stream back after it
    (weights are initialised on the CPU: a seeded twin or R member never moves the user's generator)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Hugging Face progress bars off inside the block, back to what they were after it."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
