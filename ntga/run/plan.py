"""Which examples each block holds, and which blocks one process of a sharded run takes."""

from __future__ import annotations

from dataclasses import dataclass

from ntga.errors import UserInputError


@dataclass(frozen=True)
class BlockPlan:
    """Contiguous blocks over ``num_examples`` training examples; none dropped.

    All blocks have ``block_size`` examples except possibly the last, which holds
    the remainder (the reference silently dropped it).
    """

    num_examples: int
    block_size: int

    def __post_init__(self):
        if self.block_size < 1:
            raise UserInputError(f"--block-size must be a positive integer, got {self.block_size}")
        if self.block_size > self.num_examples:
            raise UserInputError(
                f"--block-size {self.block_size} is larger than the training set to poison "
                f"({self.num_examples} examples); use at most {self.num_examples}"
            )

    @property
    def num_blocks(self) -> int:
        return -(-self.num_examples // self.block_size)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.block_size
        return start, min(start + self.block_size, self.num_examples)

    def sizes(self) -> list[int]:
        return [b - a for a, b in map(self.bounds, range(self.num_blocks))]


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parses ``K/N`` (1-based K) into ``(K-1, N)``; None means the whole run ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserInputError(f"--shard must look like K/N with integers, e.g. 1/4; got {text!r}") from None
    if not 1 <= k <= n:
        raise UserInputError(f"--shard {text!r}: need 1 <= K <= N")
    return k - 1, n
