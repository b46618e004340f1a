"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class HarnessError(Exception):
    """A problem with the user's input or environment (bad flag, missing file, malformed log).

    The CLI prints `error: <message>` and exits with `exit_code`; it never shows a traceback for these.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
