"""The one exception type whose message a user sees as a single line."""

import sys
from collections.abc import Callable


class DigitlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); a DigitlabError becomes one line on stderr and exit status 1."""
    try:
        main()
    except DigitlabError as exc:
        print(f"digitlab: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
