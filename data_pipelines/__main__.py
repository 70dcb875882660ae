"""`python -m data_pipelines curate PIPELINE.yaml --input GLOB --output DIR`."""

import sys

from data_pipelines.curate.cli import main

sys.exit(main(sys.argv[1:]))
