"""Synthetic users and the bounded load generator."""
