"""Regression against a reviewed baseline: pin a document, compare later parses with it."""
