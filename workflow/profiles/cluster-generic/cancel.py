#!/usr/bin/env python
"""Cancel local-queue jobs (SIGTERM to each job's process group).    cancel.py JOBID..."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localq  # noqa: E402

for jobid in sys.argv[1:]:
    localq.cancel(jobid)
