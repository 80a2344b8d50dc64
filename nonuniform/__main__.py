"""``python -m nonuniform``: the command line."""

from nonuniform_cli.main import main

main()
