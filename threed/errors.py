"""Errors caused by the user's input: reported as one line with the fix, without a traceback."""


class UserError(Exception):
    """Something the user can fix: the message says what was wrong and how to fix it."""


class ConfigError(UserError):
    pass


class OutputDirError(UserError):
    pass


class RunDirError(UserError):
    pass


class NonFiniteLossError(UserError):
    pass
