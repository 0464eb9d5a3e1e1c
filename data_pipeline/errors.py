"""Errors a user of the data stage can hit: each says what is wrong and how to fix it."""


class DataError(Exception):
    """A problem with the input corpus, the shards or the manifest."""
