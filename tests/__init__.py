"""Photon test suite (a package, so `tests.make_media` cannot be shadowed by a site-packages `tests`)."""
