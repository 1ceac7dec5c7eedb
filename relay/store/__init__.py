"""Persistence: the one ``sessions`` table, and everything that reads or writes it.

The store knows nothing of HTTP: it takes hashes, timestamps and values, and returns rows.
"""
