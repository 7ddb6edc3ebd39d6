"""CINEMA_ENV=production refuses what is only fit for development: payments that are not real."""

from __future__ import annotations

import pytest

from cinema_grpc.settings import ConfigurationError, Settings

LIVE = {"stripe_secret_key": "sk_live_0123456789", "stripe_webhook_secret": "whsec_0123456789"}


def test_production_refuses_the_local_stripe_test_server() -> None:
    with pytest.raises(ConfigurationError, match="CINEMA_STRIPE_SECRET_KEY is unset"):
        Settings(env="production", stripe_webhook_secret="whsec_0123456789").check_production()


def test_production_refuses_a_stripe_test_mode_key() -> None:
    settings = Settings(env="production", stripe_secret_key="sk_test_0123", stripe_webhook_secret="whsec_0123")
    assert settings.test_payments
    with pytest.raises(ConfigurationError, match="not a live key"):
        settings.check_production()


def test_production_refuses_a_live_key_without_a_webhook_secret() -> None:
    with pytest.raises(ConfigurationError, match="CINEMA_STRIPE_WEBHOOK_SECRET is unset"):
        Settings(env="production", stripe_secret_key="sk_live_0123456789").check_production()


def test_production_with_a_live_key_and_webhook_secret_starts_without_test_payments() -> None:
    settings = Settings(env="production", **LIVE)
    settings.check_production()
    assert not settings.test_payments


def test_development_allows_test_payments_and_says_so() -> None:
    settings = Settings(env="development")
    settings.check_production()
    assert settings.test_payments


def test_an_unknown_environment_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="env"):
        Settings(env="prod")
