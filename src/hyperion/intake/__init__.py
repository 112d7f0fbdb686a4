"""Intake: where requests come in. Every source hands bytes to :func:`accept`."""
