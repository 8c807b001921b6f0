"""What a `folders` setting may hold (connections and users; design.md 4.10): folder names
or RFC 6154 special-use flags, which the engine resolves per account (engine/folders.py)."""

from __future__ import annotations

from django.core.exceptions import ValidationError

# The special-use flags (and \Inbox, which every account has) an entry may name.
FOLDER_FLAGS = (
    "\\Inbox",
    "\\All",
    "\\Archive",
    "\\Drafts",
    "\\Flagged",
    "\\Junk",
    "\\Sent",
    "\\Trash",
)
MAX_FOLDERS = 10
MAX_NAME = 1000


def checked_folders(value: list[str]) -> list[str]:
    """``value`` with flags spelt as in FOLDER_FLAGS; ValueError for an entry that is
    empty, too long, holds NUL/CR/LF, is an unknown flag or a repeat."""
    if not isinstance(value, list) or len(value) > MAX_FOLDERS:
        raise ValueError(f"folders must be a list of at most {MAX_FOLDERS} names or flags")
    flags = {flag.upper(): flag for flag in FOLDER_FLAGS}
    result: list[str] = []
    for entry in value:
        if not isinstance(entry, str):
            raise ValueError("folders entries must be strings")
        entry = entry.strip()
        if not entry or len(entry) > MAX_NAME or any(char in entry for char in "\x00\r\n"):
            raise ValueError(
                "folders entries must be names of 1-1000 characters without NUL, CR, LF"
            )
        if entry.startswith("\\"):
            if entry.upper() not in flags:
                raise ValueError(
                    f"unknown special-use flag {entry!r}; one of {', '.join(FOLDER_FLAGS)}"
                )
            entry = flags[entry.upper()]
        if entry in result:
            raise ValueError(f"folders names {entry!r} twice")
        result.append(entry)
    return result


def validate_folders(value) -> None:
    """Model field validator (the dashboard's forms)."""
    try:
        checked_folders(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
