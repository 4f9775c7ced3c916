"""Credentials for a DICOMweb server, from the environment or a file: never from the command line, never logged.

Sources, first found wins:

- ``token_file`` / ``basic_auth_file`` arguments (``medhdm pacs explain --token-file``,
  ``--basic-auth-file``): a file holding a bearer token, or ``user:password``;
- ``MEDHDM_PACS_TOKEN_FILE`` / ``MEDHDM_PACS_BASIC_AUTH_FILE``: the same, named by the environment;
- ``MEDHDM_PACS_TOKEN``: a bearer token;
- ``MEDHDM_PACS_USER`` and ``MEDHDM_PACS_PASSWORD``: HTTP basic authentication.

:class:`Credentials` never shows its secret (``repr``, ``str`` and :meth:`describe`
name only its kind and, for basic authentication, the user).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Credentials", "SecretError", "credentials_from_env", "read_secret_file"]


class SecretError(ValueError):
    """A credential source is unusable (a file missing, empty, or malformed)."""


@dataclass(frozen=True)
class Credentials:
    """Bearer token or basic authentication for HTTP requests.

    Attributes:
        kind: ``"bearer"`` or ``"basic"``.
        user: the user name of basic authentication (not secret).
        secret: the token or the password; kept out of ``repr``.
        source: where it came from (an environment variable's or a file's name), for messages.
    """

    kind: str
    secret: str = field(repr=False)
    user: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("bearer", "basic"):
            raise SecretError(f"credentials: kind must be 'bearer' or 'basic', got {self.kind!r}")
        if not self.secret:
            raise SecretError(f"credentials from {self.source or 'the caller'}: the secret is empty")

    def apply(self, session) -> None:
        """Set the credentials on a :class:`requests.Session`."""
        if self.kind == "bearer":
            session.headers["Authorization"] = f"Bearer {self.secret}"
        else:
            session.auth = (self.user, self.secret)

    def describe(self) -> str:
        """``"bearer token from X"`` / ``"basic auth as USER from X"``: no secret."""
        what = "bearer token" if self.kind == "bearer" else f"basic auth as {self.user}"
        return f"{what} from {self.source}" if self.source else what

    def __str__(self) -> str:
        return self.describe()


def read_secret_file(path: str | os.PathLike, what: str) -> str:
    """The stripped text of ``path``; :class:`SecretError` naming ``what`` and the file if unreadable or empty."""
    file = Path(path)
    try:
        text = file.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise SecretError(f"{what}: cannot read {file} ({getattr(err, 'strerror', None) or err})") from None
    if not text:
        raise SecretError(f"{what}: {file} is empty")
    return text


def _basic_from_file(path: str | os.PathLike, what: str) -> Credentials:
    user, sep, password = read_secret_file(path, what).partition(":")
    if not sep or not user or not password:
        raise SecretError(f"{what}: {path} must hold one line user:password")
    return Credentials("basic", password, user=user, source=str(path))


def credentials_from_env(
    token_file: str | os.PathLike | None = None,
    basic_auth_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> Credentials | None:
    """The credentials to use (see the module docstring), or ``None`` when none are configured."""
    env = os.environ if environ is None else environ
    if token_file and basic_auth_file:
        raise SecretError("give one of token_file= and basic_auth_file=")
    if token_file:
        return Credentials("bearer", read_secret_file(token_file, "token_file"), source=str(token_file))
    if basic_auth_file:
        return _basic_from_file(basic_auth_file, "basic_auth_file")
    if env.get("MEDHDM_PACS_TOKEN_FILE"):
        path = env["MEDHDM_PACS_TOKEN_FILE"]
        return Credentials("bearer", read_secret_file(path, "MEDHDM_PACS_TOKEN_FILE"), source=path)
    if env.get("MEDHDM_PACS_BASIC_AUTH_FILE"):
        return _basic_from_file(env["MEDHDM_PACS_BASIC_AUTH_FILE"], "MEDHDM_PACS_BASIC_AUTH_FILE")
    if env.get("MEDHDM_PACS_TOKEN"):
        return Credentials("bearer", env["MEDHDM_PACS_TOKEN"].strip(), source="MEDHDM_PACS_TOKEN")
    user, password = env.get("MEDHDM_PACS_USER", ""), env.get("MEDHDM_PACS_PASSWORD", "")
    if user or password:
        if not (user and password):
            raise SecretError("set both MEDHDM_PACS_USER and MEDHDM_PACS_PASSWORD (or neither)")
        return Credentials("basic", password, user=user, source="MEDHDM_PACS_USER/MEDHDM_PACS_PASSWORD")
    return None
