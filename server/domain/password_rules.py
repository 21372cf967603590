"""What a new password must not be, besides 8 to 128 characters (the contract's
"Passwords", after NIST SP 800-63B 5.1.1.2): entirely whitespace, or one of the
commonly used passwords of `common_passwords.txt` (its header names its origin and
licence). Registration, profile changes and reset confirmations all validate new
passwords with `handlers/schemas.Password`, which asks `refusal` here.

The list is compared without regard to case: it is lower case, and "Password1" or
"PASSWORD1" is among the first guesses of any guessing tool, so refusing the case
variants of a listed password costs an honest user nothing and an attacker a lot.
The check is one lookup in a frozenset (constant time, not a scan of the list).
"""

from __future__ import annotations

from pathlib import Path

_LIST = Path(__file__).with_name("common_passwords.txt")


def _load(path: Path) -> frozenset[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


COMMON_PASSWORDS = _load(_LIST)
COMMON_MESSAGE = "is one of the most commonly used passwords: choose another"


def refusal(password: str) -> str | None:
    """Why `password` may not be used, or None when it may."""
    if password.isspace():
        return "must not be only whitespace"
    if password.lower() in COMMON_PASSWORDS:
        return COMMON_MESSAGE
    return None
