"""How the telemetry contract (DESIGN §3) maps onto a real warehouse's tables and columns.

``tools`` imports nothing of the project, so the mapping arrives as plain mappings (the lifecycle
settings ``telemetry_tables`` / ``telemetry_columns`` pass straight through
:meth:`TelemetrySchema.from_mappings`). Unknown contract names are rejected with the field's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa

from tools.errors import ConfigError

__all__ = ["CONTRACT_COLUMNS", "DEFAULT_DIMENSIONS", "MappedTable", "TelemetrySchema"]

_Types = Mapping[str, sa.types.TypeEngine[Any]]

_COLUMN_TYPES: Mapping[str, _Types] = MappingProxyType(
    {
        "requests": MappingProxyType(
            {
                "ts": sa.DateTime(),
                "request_id": sa.BigInteger(),
                "unit_id": sa.BigInteger(),
                "country": sa.String(),
                "platform": sa.String(),
                "ad_type": sa.String(),
                "model_id": sa.String(),
                "model_version": sa.String(),
                "prediction": sa.Float(),
                "fallback": sa.Boolean(),
                "label": sa.Integer(),
                "revenue": sa.Float(),
                "latency_ms": sa.Float(),
                "error": sa.Boolean(),
            }
        ),
        "exposures": MappingProxyType(
            {
                "ts": sa.DateTime(),
                "request_id": sa.BigInteger(),
                "unit_id": sa.BigInteger(),
                "experiment_id": sa.String(),
                "arm": sa.String(),
            }
        ),
        "model_snapshots": MappingProxyType(
            {
                "model_id": sa.String(),
                "model_version": sa.String(),
                "trained_at": sa.DateTime(),
                "published_at": sa.DateTime(),
                "training_ne": sa.Float(),
                "training_calibration": sa.Float(),
            }
        ),
    }
)

CONTRACT_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {table: tuple(cols) for table, cols in _COLUMN_TYPES.items()}
)
"""The contract's tables and their columns (DESIGN §3)."""

DEFAULT_DIMENSIONS: tuple[str, ...] = ("country", "platform", "ad_type")

_NOT_DIMENSIONS = frozenset(CONTRACT_COLUMNS["requests"]) - set(DEFAULT_DIMENSIONS)


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class TelemetrySchema:
    """Contract table/column names -> warehouse names, plus the dimensions to drill into.

    Attributes:
        tables: Contract table -> warehouse table (``"ads.req_log"`` may carry a schema prefix).
            Missing entries keep the contract name.
        columns: Per contract table, contract column -> warehouse column.
        dimensions: Request columns (contract names) the checks break results down by.
    """

    tables: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    columns: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS

    def __post_init__(self) -> None:
        for table, name in self.tables.items():
            if table not in CONTRACT_COLUMNS:
                raise ConfigError(
                    f"telemetry_tables.{table}",
                    name,
                    f"unknown table; use {list(CONTRACT_COLUMNS)}",
                )
            if not name:
                raise ConfigError(f"telemetry_tables.{table}", name, "table name is empty")
        for table, cols in self.columns.items():
            known = CONTRACT_COLUMNS.get(table)
            if known is None:
                raise ConfigError(
                    f"telemetry_columns.{table}",
                    dict(cols),
                    f"unknown table; use {list(CONTRACT_COLUMNS)}",
                )
            for col, name in cols.items():
                if col not in known and not (table == "requests" and col in self.dimensions):
                    raise ConfigError(
                        f"telemetry_columns.{table}.{col}",
                        name,
                        f"unknown column; use {list(known)} or a dimension",
                    )
                if not name:
                    raise ConfigError(
                        f"telemetry_columns.{table}.{col}", name, "column name is empty"
                    )
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ConfigError("dimensions", self.dimensions, "dimensions repeat")
        for dim in self.dimensions:
            if dim in _NOT_DIMENSIONS or not dim.isidentifier():
                raise ConfigError(
                    "dimensions", dim, "a dimension is a categorical requests column name"
                )

    @classmethod
    def from_mappings(
        cls,
        tables: Mapping[str, str] | None = None,
        columns: Mapping[str, Mapping[str, str]] | None = None,
        dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    ) -> TelemetrySchema:
        """Build a schema from plain mappings such as the lifecycle settings carry.

        Args:
            tables: Contract table -> warehouse table.
            columns: Per contract table, contract column -> warehouse column.
            dimensions: Request columns to drill into.

        Returns:
            The validated, immutable schema.

        Raises:
            ConfigError: A table, column or dimension the contract does not know, named by field.
        """
        return cls(
            tables=_frozen(tables or {}),
            columns=MappingProxyType({t: _frozen(c) for t, c in (columns or {}).items()}),
            dimensions=tuple(dimensions),
        )

    def table(self, name: str, alias: str | None = None) -> MappedTable:
        """The warehouse table behind contract table ``name``, columns reachable by contract name.

        Args:
            name: ``requests``, ``exposures`` or ``model_snapshots``.
            alias: SQL alias for the table (for joins).

        Returns:
            A :class:`MappedTable`; ``t.c("prediction")`` is the mapped column.
        """
        types = dict(_COLUMN_TYPES[name])
        if name == "requests":
            for dim in self.dimensions:
                types.setdefault(dim, sa.String())
        mapped = self.columns.get(name, {})
        names = {col: mapped.get(col, col) for col in types}
        schema, _, bare = self.tables.get(name, name).rpartition(".")
        clause: sa.FromClause = sa.table(
            bare, *(sa.column(names[col], typ) for col, typ in types.items()), schema=schema or None
        )
        if alias is not None:
            clause = clause.alias(alias)
        return MappedTable(clause=clause, names=MappingProxyType(names))


@dataclass(frozen=True)
class MappedTable:
    """A warehouse table whose columns are looked up by their contract names."""

    clause: sa.FromClause
    names: Mapping[str, str]

    def c(self, contract: str) -> sa.ColumnElement[Any]:
        """The SQL column for contract column ``contract``."""
        return self.clause.c[self.names[contract]]
