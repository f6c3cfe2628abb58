"""`python -m kr.cli`: the same command as `kr`."""

from kr.cli import app

app()
