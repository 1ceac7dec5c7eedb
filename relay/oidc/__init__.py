"""The relying-party side of OpenID Connect, one module per concern.

Specs implemented: OpenID Connect Core 1.0 (authorization-code flow, §3.1; ID token
validation, §3.1.3.7), OpenID Connect Discovery 1.0 (§4), RFC 7636 (PKCE, S256 only),
RFC 9207 (the ``iss`` authorization response parameter), RFC 6749 §2.3.1 / §4.1 (client
authentication, code exchange), and RP-Initiated Logout 1.0.

``http`` is the one place provider I/O errors become relay errors; nothing else catches httpx2.
"""
