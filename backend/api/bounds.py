"""Integer bounds for request fields that reach an integer column or a LIMIT / OFFSET, so a
number the database cannot hold (10^20) is a 4xx at the schema, not an overflow in the driver."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

INT32_MAX = 2**31 - 1  # Integer columns (ids, types) on PostgreSQL and MySQL
INT64_MAX = 2**63 - 1  # BigInteger columns, OFFSET

IdPath = Annotated[int, Path(ge=0, le=INT32_MAX)]
OptIntQuery = Annotated[int | None, Query(ge=-INT32_MAX - 1, le=INT32_MAX)]
OffsetQuery = Annotated[int, Query(ge=0, le=INT32_MAX)]
