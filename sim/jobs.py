"""A job (request) as every policy sees it, whatever workload produced it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Job:
    """One request.

    `batch` × `seq_len` is the shape an encoder-style (non-generative) job runs at.
    `prompt_tokens`/`output_tokens` are carried for generative serving (prefill + decode);
    for a trace that only gives tokens, `seq_len` is the prompt length and `batch` is 1.
    """

    request_id: int
    arrival_s: float
    batch: int = 1
    seq_len: int = 128
    prompt_tokens: int = 0
    output_tokens: int = 0

    @property
    def prompt(self) -> int:
        """The tokens a generative server prefills: `prompt_tokens`, else `seq_len`."""
        return self.prompt_tokens or self.seq_len
