"""Errors that mean "the user asked for something we cannot do": the scripts print them and exit 2."""


class UsageError(Exception):
    """Bad input from the user (flag values, paths, files). Printed without a traceback; exit code 2."""


class DataNotFound(UsageError):
    """A data set is not where we looked; the message names the folder and how to get the files."""
