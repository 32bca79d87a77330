"""``python -m ntga.data``: inspect a dataset spec and the split the flags describe."""

from ntga.data.cli import main
from ntga.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
