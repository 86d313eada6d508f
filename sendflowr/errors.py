"""Errors a user can act on. The CLI prints their message alone, without a stack trace."""


class SendflowrError(RuntimeError):
    pass
