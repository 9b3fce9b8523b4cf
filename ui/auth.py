"""Sign-in for the pages that reach the PACS, with streamlit-authenticator (no password handling of our own).

The users live in a YAML file (``auth_config`` / ``MRI_AUTH_CONFIG``) in streamlit-authenticator's format::

    credentials:
      usernames:
        jdoe:
          name: Dr J. Doe
          password: $2b$12$...   # bcrypt hash: python -m ui.auth hash
    cookie:                      # optional: stay signed in across browser reloads
      name: mri_pacs_auth
      key: <a long random secret>
      expiry_days: 0             # 0 (default): no cookie, sign in once per browser session

Plain-text passwords are refused (the library would hash them in memory, but the file would still hold them).
The file is only read: logins are not written back into it.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

USER_KEY = "username"  # where streamlit-authenticator keeps the signed-in user's login name
STATUS_KEY = "authentication_status"
SETUP_HINT = ("Set `MRI_AUTH_CONFIG` (or `auth_config` in `mri_app.toml`) to a YAML file of users with "
              "bcrypt-hashed passwords; see *Connecting to a PACS* in the README. Make a hash with "
              "`python -m ui.auth hash`.")


class AuthConfigError(ValueError):
    """The sign-in file is missing or invalid. ``str(err)`` is user-facing (never holds a password or hash)."""


@dataclass(frozen=True)
class AuthSettings:
    credentials: dict
    cookie_name: str
    cookie_key: str
    cookie_expiry_days: float


def load_settings(path: str | Path) -> AuthSettings:
    """Read and check the YAML file: every user has a bcrypt-hashed password; a cookie needs its own secret."""
    import yaml
    from streamlit_authenticator.utilities import Hasher

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise AuthConfigError(f"the sign-in file {path} cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError:
        raise AuthConfigError(f"the sign-in file {path} is not valid YAML") from None
    users = ((data or {}).get("credentials") or {}).get("usernames") if isinstance(data, dict) else None
    if not isinstance(users, dict) or not users:
        raise AuthConfigError(f"the sign-in file {path} lists no users under credentials: usernames:")
    for name, user in users.items():
        password = user.get("password") if isinstance(user, dict) else None
        if not isinstance(password, str) or not Hasher.is_hash(password):
            raise AuthConfigError(f"user '{name}' in {path} has no bcrypt-hashed password; plain-text passwords "
                                  "are refused (make a hash with `python -m ui.auth hash`)")
    cookie = data.get("cookie") or {}
    try:
        days = float(cookie.get("expiry_days", 0) or 0)
    except (TypeError, ValueError):
        raise AuthConfigError(f"cookie: expiry_days in {path} must be a number of days") from None
    key = str(cookie.get("key") or "")
    if days > 0 and len(key) < 32:
        raise AuthConfigError(f"cookie: key in {path} must be a random secret of at least 32 characters when "
                              "expiry_days is above 0")
    return AuthSettings({"usernames": copy.deepcopy(users)}, str(cookie.get("name") or "mri_pacs_auth"),
                        key or "unused-no-cookie", days)


def _authenticator(settings: AuthSettings):
    import streamlit_authenticator as stauth

    # A fresh copy each run: the library edits the credentials it is given (failed attempts, logged_in).
    return stauth.Authenticate(copy.deepcopy(settings.credentials), settings.cookie_name, settings.cookie_key,
                               settings.cookie_expiry_days, auto_hash=False,
                               login_sleep_time=0)  # its pause waits for a cookie component we do not read


def signed_in_user() -> str | None:
    """The login name of this session's signed-in user, or None."""
    return st.session_state.get(USER_KEY) if st.session_state.get(STATUS_KEY) else None


def oidc_configured() -> bool:
    """Whether ``.streamlit/secrets.toml`` has an ``[auth]`` section (Streamlit's own OIDC sign-in)."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def _oidc_user(what: str) -> str | None:
    """Sign-in through the hospital's identity provider with ``st.login`` (OIDC; needs the Authlib package)."""
    if not st.user.is_logged_in:
        st.info(f"Sign in with your hospital account to use {what}.", icon=":material/login:")
        try:
            st.button("Sign in", icon=":material/login:", key="pacs_oidc_login", on_click=st.login)
        except Exception as exc:  # noqa: BLE001 - e.g. Authlib missing or a bad [auth] section
            st.error(f"Sign-in is not available ({type(exc).__name__}: {exc}).", icon=":material/lock:")
        return None
    user = str(st.user.get("email") or st.user.get("preferred_username") or st.user.get("sub") or "")
    with st.sidebar:
        st.caption(f":material/person: Signed in as **{st.user.get('name') or user}**")
        st.button("Sign out", key="pacs_oidc_logout", on_click=st.logout)
    return user or None


def require_user(auth_config: Path | None, what: str = "the PACS") -> str | None:
    """Draw the sign-in form (or how to set sign-in up) and return the signed-in user's login name, or None.

    With a YAML users file (``auth_config``): streamlit-authenticator. Without one, but with an ``[auth]`` section in
    ``.streamlit/secrets.toml``: the hospital's identity provider through ``st.login`` (OIDC). Signed in: the
    sidebar shows who, with a *Sign out* button."""
    if auth_config is None and oidc_configured():
        return _oidc_user(what)
    if auth_config is None:
        st.warning(f"**Sign-in is not set up, so {what} is not available.** {SETUP_HINT}", icon=":material/lock:")
        return None
    try:
        settings = load_settings(auth_config)
        authenticator = _authenticator(settings)
    except AuthConfigError as exc:
        st.error(f"**Sign-in is not available:** {exc}. {what[0].upper() + what[1:]} stays closed.",
                 icon=":material/lock:")
        return None
    except Exception as exc:  # noqa: BLE001 - a broken library setup must not take the page down
        st.error(f"**Sign-in is not available** ({type(exc).__name__}). {what[0].upper() + what[1:]} stays closed.",
                 icon=":material/lock:")
        return None
    if not signed_in_user():
        try:
            authenticator.login(location="main", key="pacs_login",
                                fields={"Form name": "Sign in", "Username": "Username", "Password": "Password",
                                        "Login": "Sign in"})
        except Exception as exc:  # noqa: BLE001 - e.g. too many attempts: a message, not a traceback
            st.error(f"Sign-in failed: {exc}", icon=":material/lock:")
            return None
        if signed_in_user():  # just signed in: draw the page again without the form
            st.rerun()
        if st.session_state.get(STATUS_KEY) is False:
            st.error("Username or password is incorrect.", icon=":material/lock:")
    user = signed_in_user()
    if user is None:
        st.info(f"Sign in to use {what}.", icon=":material/login:")
        return None
    with st.sidebar:
        st.caption(f":material/person: Signed in as **{st.session_state.get('name') or user}**")
        authenticator.logout("Sign out", location="sidebar", key="pacs_logout")
    if signed_in_user() is None:  # just signed out: draw the page again, signed out
        st.rerun()
    return signed_in_user()


def main(argv: list[str] | None = None) -> int:
    """``python -m ui.auth hash``: read a password (not echoed) and print its bcrypt hash for the YAML file."""
    import getpass

    from streamlit_authenticator.utilities import Hasher

    args = sys.argv[1:] if argv is None else argv
    if args != ["hash"]:
        print("usage: python -m ui.auth hash", file=sys.stderr)
        return 2
    password = getpass.getpass("Password: ")
    if not password or password != getpass.getpass("Again: "):
        print("the passwords differ (or are empty)", file=sys.stderr)
        return 1
    print(Hasher.hash(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
