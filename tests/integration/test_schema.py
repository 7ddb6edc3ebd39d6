"""The row classes describe exactly the tables and columns the migrations create."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from cinema_grpc.storage.database import sqlalchemy_url
from cinema_grpc.storage.rows import Row

SCHEMAS = {table.schema for table in Row.metadata.tables.values()}


def test_row_classes_match_the_migrated_schema(database_url: str) -> None:
    engine = create_engine(sqlalchemy_url(database_url))

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name in SCHEMAS
        return True

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        # Indexes and constraints are written in SQL in the migrations (partial, expression
        # and exclusion ones cannot be expressed on the rows); tables and columns must agree.
        return type_ in {"table", "column"}

    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "include_name": include_name,
                "include_object": include_object,
                "compare_type": True,
                "compare_server_default": False,
            },
        )
        differences = compare_metadata(context, Row.metadata)
    engine.dispose()
    assert differences == []
