"""`python -m egressguard` runs the command line."""
from egressguard.cli import main

main()
