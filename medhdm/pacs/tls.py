"""TLS for DIMSE (pynetdicom) and DICOMweb (requests): certificates and keys read from PEM files.

:class:`TlsFiles` holds the paths (``cert``/``key``: our certificate and its private key;
``ca``: the certificates we trust for the peer) and makes the :class:`ssl.SSLContext` of each
side. A client verifies the server's certificate against ``ca`` and its host name (or IP
address); a server given ``ca`` asks every client for a certificate signed by it. There is no
fallback to plain text: a peer whose certificate does not verify ends the connection, and
:func:`describe_tls_failure` turns the handshake error into one line.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles", "describe_tls_failure"]


def _readable(path: Path | None, what: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: {path} is not a file")
    return path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS.

    Args:
        cert: our certificate (chain), for a server always, for a client when the peer asks for one.
        key: the private key of ``cert`` (default: in the ``cert`` file).
        ca: the certificates trusted for the peer (a CA bundle); a client without it trusts the system's.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert", _readable(self.cert, "tls_cert"))
        object.__setattr__(self, "key", _readable(self.key, "tls_key"))
        object.__setattr__(self, "ca", _readable(self.ca, "tls_ca"))
        if self.key is not None and self.cert is None:
            raise ValueError("tls_key: given without tls_cert (the certificate it belongs to)")

    def _load_chain(self, context: ssl.SSLContext) -> None:
        if self.cert is None:
            return
        try:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        except (ssl.SSLError, OSError) as err:
            key = f" with the key {self.key}" if self.key else ""
            raise ValueError(f"tls_cert: {self.cert}{key} cannot be loaded as a certificate and key ({err})") from None

    def _load_ca(self, context: ssl.SSLContext) -> None:
        try:
            context.load_verify_locations(cafile=str(self.ca))
        except (ssl.SSLError, OSError) as err:
            raise ValueError(f"tls_ca: {self.ca} holds no usable certificate ({err})") from None

    def client_context(self) -> ssl.SSLContext:
        """A client's context: the server's certificate and host name verified against ``ca``."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca is not None:
            self._load_ca(context)
        self._load_chain(context)
        return context

    def server_context(self) -> ssl.SSLContext:
        """A server's context (``cert`` required); with ``ca``, clients must present a certificate it signed."""
        if self.cert is None:
            raise ValueError("tls_cert: a TLS server needs its certificate and key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(context)
        if self.ca is not None:
            self._load_ca(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def verify(self) -> str | bool:
        """What :mod:`requests` takes as ``verify``: the CA bundle's path, or True (the system's)."""
        return str(self.ca) if self.ca is not None else True

    @property
    def client_cert(self) -> tuple[str, str] | str | None:
        """What :mod:`requests` takes as ``cert``."""
        if self.cert is None:
            return None
        return (str(self.cert), str(self.key)) if self.key else str(self.cert)


def describe_tls_failure(error: BaseException) -> str:
    """One line for a failed handshake: ``TLS handshake failed (certificate verify failed: <why>)`` when we refused
    the peer's certificate, ``TLS handshake failed (the peer refused: TLSV1_ALERT_UNKNOWN_CA)`` when it refused ours."""
    verify = getattr(error, "verify_message", None)
    if verify:
        return f"TLS handshake failed (certificate verify failed: {verify})"
    reason = getattr(error, "reason", None)
    if reason and "ALERT" in str(reason):
        return f"TLS handshake failed (the peer refused: {reason})"
    return f"TLS handshake failed ({reason or error})"
