"""oidc-relay: an OpenID Connect login relay for apps behind a reverse proxy."""

__version__ = "0.1.0"
