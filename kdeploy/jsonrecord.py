"""Loading JSON objects into dataclass records that keep the keys they do not name (a leaf module)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any


def split_known(cls: type, data: dict[str, Any], skip: Collection[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` split into the keys that name fields of the dataclass ``cls`` and the rest, the record's ``extra``.

    The ``extra`` field itself and the keys in ``skip`` (fields the caller builds itself) land in neither part.
    """
    names = {f.name for f in dataclasses.fields(cls)} - {"extra", *skip}
    known = {k: v for k, v in data.items() if k in names}
    return known, {k: v for k, v in data.items() if k not in names and k not in skip}
