"""``python -m pipeline`` and the installed ``pipeline`` command.

The command line is imported inside ``main``: extraction workers start from a forkserver, and
a worker of a command started as a script (the installed ``pipeline`` is one) imports that
script again before it works. Importing this module costs nothing; importing the command
line would cost each worker half a second of CPU (SQLAlchemy, httpx, every stage).
"""

from __future__ import annotations


def main() -> None:
    from pipeline.cli import main as command_line

    command_line(process_exit=True)


# The guard matters too: without it every worker would run the command line again.
if __name__ == "__main__":
    main()
