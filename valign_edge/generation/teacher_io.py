"""Talking to the teacher: prompt files, chat messages, list parsing, per-chunk seeds, rejection counts.

Shared by the generators (``synth`` for questions and answers, ``stances`` for stance pairs).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from valign_edge.runs.workspace import hash_obj


@lru_cache(maxsize=None)
def prompt(name: str) -> str:
    return resources.files("valign_edge").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8").strip()


def messages(task: str, chunk: str, **fields: Any) -> list[dict]:
    return [{"role": "system", "content": prompt("system")},
            {"role": "user", "content": prompt(task).format(chunk=chunk, **fields)}]


def parse_list(text: str, key: str, n: int) -> list | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) != n:
        return None
    return items


def chunk_seed(seed: int, chunk_id: str, attempt: int, salt: str) -> int:
    return int(hash_obj([seed, chunk_id, attempt, salt]), 16) % (2**31 - 1)


def count(rejected: dict, reason: str) -> None:
    """Count one discarded candidate under ``reason`` (reported in the manifest)."""
    rejected[reason] = rejected.get(reason, 0) + 1
