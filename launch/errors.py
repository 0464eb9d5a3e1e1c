"""Errors a user can hit when starting or following a job: each says what is wrong and what to do."""


class LaunchError(Exception):
    """A job cannot be started, found or followed: a missing scheduler, a bad address, an unknown job id."""
