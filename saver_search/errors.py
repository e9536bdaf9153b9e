"""The one exception type users see: a problem with their input, stated with the fix."""


class SaverSearchError(Exception):
    """Bad input or state the user can fix. The CLI prints it as one line and exits with code 2."""
