"""The exit codes of every `fer-automl` command (docs/errors.md), in one module that imports
nothing, so that commands and runners use them without importing the CLI that loads them."""

EXIT_OK = 0
EXIT_BUG = 1               # anything but a UserError: the traceback is printed
EXIT_USAGE = 2             # a UserError: bad input, one message, nothing written
EXIT_REFUSED = 3           # promote: registered, but the alias did not move
EXIT_SOME_FAILED = 4       # done, but some items failed (a search's trials, predict's images)
EXIT_TRACKING_PAUSED = 5   # a search finished, but the MLflow store took no writes: records incomplete
EXIT_NOT_ALLOWED = 6       # an MLflow server with basic auth refused the request (HTTP 401 / 403)
EXIT_TRACKING_LOST = 7     # a search stopped: the tracking server stayed unreachable past --outage-timeout
EXIT_INTERRUPTED = 130     # Ctrl-C or SIGTERM
EXIT_BROKEN_PIPE = 141     # 128 + SIGPIPE: what a shell reports for a writer whose reader went away
