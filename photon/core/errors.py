"""The error users see: the CLI prints its message and exits with code 2."""


class PhotonError(Exception):
    """Bad input or configuration, described in words a user can act on."""
