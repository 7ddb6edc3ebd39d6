"""Configuration: one typed settings object read from environment variables (CINEMA_* and a
few conventional names). Secrets are never logged."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CINEMA_", extra="ignore")

    # PostgreSQL 15+ URL (postgresql://user:pass@host:5432/db). Empty: an embedded PostgreSQL
    # is started in data_dir/pgdata.
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CINEMA_DATABASE_URL")
    )
    data_dir: Path = Path(".cinema-data")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    # Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    # Server-side cap on one statement and on waiting for a row lock, in milliseconds.
    db_statement_timeout_ms: int = Field(default=15000, ge=100)
    db_lock_timeout_ms: int = Field(default=3000, ge=10)
    # Largest request or response message the server accepts, in bytes.
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Key that signs access and refresh tokens (HS256, at least 32 characters). Every replica
    # needs the same one. Empty: a development key is generated once in data_dir.
    token_signing_key: SecretStr | None = None
    # Seconds a replica trusts its cached check that a session is still signed in.
    session_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    log_level: str = "INFO"
    # "json" for one JSON object per line (production), "console" for people.
    log_format: str = Field(default="json", pattern="^(json|console)$")
