"""`python -m nmtkit` runs the command line."""

from nmtkit.cli import main

if __name__ == "__main__":  # not again in a worker process that imports the main module (spawn, forkserver)
    main()
