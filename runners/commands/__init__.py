"""One module per `fer-automl` command group; each exposes `register(subparsers)`.

Modules import their heavy dependencies (torch, ray, mlflow) inside the handlers, so that
`fer-automl --help` and the light commands start fast.
"""
