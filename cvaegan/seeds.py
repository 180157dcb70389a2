"""Per-sample seeding: "seed s, class c" maps to the same z (and so the same image) everywhere."""

from __future__ import annotations

import re

import torch

from .errors import InputError

MAX_SEED = 2**63 - 1


class SeedError(InputError):
    """A seed or seed list that cannot be used."""


def check_seed(seed) -> int:
    """Validate one seed: an integer 0 <= seed <= 2**63 - 1 (bools, floats with fractions, NaN refused)."""
    if isinstance(seed, bool):
        raise SeedError(f"seed must be an integer, got {seed!r}")
    if isinstance(seed, float):
        if seed != seed or seed in (float("inf"), float("-inf")) or not seed.is_integer():
            raise SeedError(f"seed must be a whole number, got {seed!r}")
        seed = int(seed)
    if isinstance(seed, str):
        if not re.fullmatch(r"\s*\d+\s*", seed):
            raise SeedError(f"seed must be a non-negative integer, got {seed!r}")
        seed = int(seed)
    if not isinstance(seed, int):
        raise SeedError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise SeedError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    return seed


def parse_seeds(text: str, limit: int = 10_000) -> list[int]:
    """ "0-7,12" -> [0, 1, ..., 7, 12]. Ranges are inclusive; at most `limit` seeds."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = check_seed(m.group(1)), check_seed(m.group(2))
            if b < a:
                raise SeedError(f"seed range {part!r} goes backwards; write it as {b}-{a}")
            if b - a + 1 + len(seeds) > limit:
                raise SeedError(f"too many seeds (over {limit})")
            seeds.extend(range(a, b + 1))
        else:
            seeds.append(check_seed(part))
    if not seeds:
        raise SeedError(f"no seeds in {text!r}; write e.g. 0-7,12")
    if len(seeds) > limit:
        raise SeedError(f"too many seeds (over {limit})")
    return seeds


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """(z_dim,) standard normal vector drawn from its own CPU generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(check_seed(seed))
    return torch.randn(z_dim, generator=gen)


def z_from_seeds(seeds: list[int], z_dim: int, truncation: float = 1.0) -> torch.Tensor:
    """(len(seeds), z_dim): one z per seed, scaled by `truncation` (1 = the prior, <1 = less varied)."""
    if not (truncation == truncation) or not 0.0 <= truncation <= 3.0:
        raise SeedError(f"truncation must be between 0 and 3, got {truncation!r}")
    return torch.stack([z_from_seed(s, z_dim) for s in seeds]) * float(truncation)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator for training step `step`: all of a step's randomness derives from (seed, step)."""
    return torch.Generator().manual_seed((check_seed(seed) * 1_000_003 + step) % MAX_SEED)
