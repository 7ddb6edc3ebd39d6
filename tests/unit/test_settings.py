"""CINEMA_ENV=production refuses what is only fit for development: payments that are not real,
and signing keys each replica would generate for itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices, ValidationError

from cinema_grpc.settings import ConfigurationError, Settings, describe_errors, unknown_variables

LIVE = {
    "database_url": "postgresql://cinema@db.internal:5432/cinema",
    "stripe_secret_key": "sk_live_0123456789",
    "stripe_webhook_secret": "whsec_0123456789",
}
KEYS = {
    "token_signing_key": "t" * 48,
    "ticket_signing_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "audit_key": "a" * 48,
}


def test_production_refuses_the_local_stripe_test_server() -> None:
    with pytest.raises(ConfigurationError, match="CINEMA_STRIPE_SECRET_KEY is unset"):
        Settings(env="production", stripe_webhook_secret="whsec_0123456789", **KEYS).check_production()


def test_production_refuses_a_stripe_test_mode_key() -> None:
    settings = Settings(env="production", stripe_secret_key="sk_test_0123", stripe_webhook_secret="whsec_0123")
    assert settings.test_payments
    with pytest.raises(ConfigurationError, match="not a live key"):
        settings.check_production()


def test_production_refuses_a_live_key_without_a_webhook_secret() -> None:
    with pytest.raises(ConfigurationError, match="CINEMA_STRIPE_WEBHOOK_SECRET is unset"):
        Settings(env="production", stripe_secret_key="sk_live_0123456789", **KEYS).check_production()


@pytest.mark.parametrize(
    ("unset", "setting"),
    [
        ("token_signing_key", "CINEMA_TOKEN_SIGNING_KEY"),
        ("ticket_signing_key", "CINEMA_TICKET_SIGNING_KEY"),
        ("audit_key", "CINEMA_AUDIT_KEY"),
    ],
)
def test_production_refuses_a_key_generated_in_the_data_dir(unset: str, setting: str) -> None:
    settings = Settings(env="production", **LIVE, **{name: key for name, key in KEYS.items() if name != unset})
    with pytest.raises(ConfigurationError) as refused:
        settings.check_production()
    assert str(refused.value).count(" is unset") == 1
    assert f"{setting} is unset" in str(refused.value)


def test_production_names_every_missing_setting_at_once() -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings(env="production").check_production()
    for setting in (
        "DATABASE_URL",
        "CINEMA_STRIPE_SECRET_KEY",
        "CINEMA_STRIPE_WEBHOOK_SECRET",
        "CINEMA_TOKEN_SIGNING_KEY",
        "CINEMA_TICKET_SIGNING_KEY",
        "CINEMA_AUDIT_KEY",
    ):
        assert f"{setting} is unset" in str(refused.value)


def test_an_empty_signing_key_counts_as_unset_in_production() -> None:
    settings = Settings(env="production", **LIVE, token_signing_key="", ticket_signing_key="")
    with pytest.raises(ConfigurationError) as refused:
        settings.check_production()
    assert "CINEMA_TOKEN_SIGNING_KEY is unset" in str(refused.value)
    assert "CINEMA_TICKET_SIGNING_KEY is unset" in str(refused.value)


@pytest.mark.parametrize("base", ["http://stripe.internal:12111", "localhost:12111"])
def test_production_refuses_a_stripe_api_base_that_is_not_https(base: str) -> None:
    settings = Settings(env="production", **LIVE, **KEYS, stripe_api_base=base)
    with pytest.raises(ConfigurationError, match="CINEMA_STRIPE_API_BASE is not an https:// URL"):
        settings.check_production()
    Settings(env="production", **LIVE, **KEYS, stripe_api_base="https://stripe-proxy.internal").check_production()


def test_production_refuses_the_embedded_postgresql() -> None:
    settings = Settings(env="production", **{**LIVE, "database_url": ""}, **KEYS)
    with pytest.raises(ConfigurationError) as refused:
        settings.check_production()
    assert str(refused.value).count(" is unset") == 1
    assert "DATABASE_URL is unset" in str(refused.value)


def test_development_generates_the_signing_keys_when_unset() -> None:
    Settings(env="development").check_production()


def test_a_token_signing_key_shorter_than_32_characters_is_a_configuration_error_that_hides_it() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(token_signing_key="short-secret-key")
    described = describe_errors(refused.value)
    assert described == "CINEMA_TOKEN_SIGNING_KEY: the key must be at least 32 characters"


def test_a_configured_audit_key_shorter_than_32_characters_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(audit_key="short-audit-key")
    assert describe_errors(refused.value) == "CINEMA_AUDIT_KEY: the key must be at least 32 characters"


def test_configuration_errors_name_each_setting_as_it_is_set_and_never_repeat_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CINEMA_GRPC_PORT", "99999")
    monkeypatch.setenv("CINEMA_TOKEN_SIGNING_KEY", "a-secret-that-is-too-short")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@h/db")
    with pytest.raises(ValidationError) as refused:
        Settings()
    described = describe_errors(refused.value).splitlines()
    assert [line.split(":")[0] for line in described] == ["CINEMA_GRPC_PORT", "CINEMA_TOKEN_SIGNING_KEY"]
    assert not any("a-secret-that-is-too-short" in line or "99999" in line for line in described)


def test_production_with_live_payments_and_both_signing_keys_starts_without_test_payments() -> None:
    settings = Settings(env="production", **LIVE, **KEYS)
    settings.check_production()
    assert not settings.test_payments


def test_development_allows_test_payments_and_says_so() -> None:
    settings = Settings(env="development")
    settings.check_production()
    assert settings.test_payments


def test_an_unknown_environment_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="env"):
        Settings(env="prod")


def _documented_settings() -> dict[str, str]:
    """README's configuration table: variable -> its documented default, as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Command line")]
    documented: dict[str, str] = {}
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, default_cell = (cell.strip() for cell in line.strip("|").split(" | ")[:2])
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", names_cell)
        defaults = [d.strip() for d in default_cell.split(" / ")]
        assert len(defaults) in (1, len(names)), line
        for i, name in enumerate(names):
            documented[name] = defaults[i] if len(defaults) == len(names) else default_cell
    return documented


def _variable(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"CINEMA_{field.upper()}"


def test_the_readme_documents_every_setting_with_its_default_and_no_other() -> None:
    documented = _documented_settings()
    in_code = {_variable(field): info.default for field, info in Settings.model_fields.items()}
    assert sorted(set(in_code) - set(documented)) == [], "settings missing from README's configuration table"
    assert sorted(set(documented) - set(in_code)) == [], "README documents settings the code does not read"
    for name, default in in_code.items():
        written = documented[name]
        if default is None or default == "":
            assert written.startswith("*("), f"{name}: README says {written}, the code has no default"
        else:
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert written == f"`{shown}`", f"{name}: README says {written}, the code's default is {shown}"


def test_a_misspelt_setting_is_named_as_unknown_instead_of_ignored_in_silence() -> None:
    environ = {
        "CINEMA_TRUSTED_PROXY": "10.0.0.0/8",  # CINEMA_TRUSTED_PROXIES
        "CINEMA_TRUSTED_PROXIES": "10.0.0.0/8",
        "DATABASE_URL": "postgresql://db/cinema",
        "CINEMA_DATABASE_URL": "postgresql://db/cinema",
        "cinema_log_level": "INFO",
        "CINEMA_GATEWAY_PROXY_KEY": "read by the gateway",
        "HOME": "/root",
    }
    assert unknown_variables(environ) == ["CINEMA_TRUSTED_PROXY"]
