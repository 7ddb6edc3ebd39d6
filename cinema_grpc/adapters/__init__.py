"""The outside world behind domain ports: the clock, and later Stripe and the event bus."""
