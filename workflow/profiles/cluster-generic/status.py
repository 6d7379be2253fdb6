#!/usr/bin/env python
"""Print the state of a local-queue job: running, success or failed.    status.py JOBID"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localq  # noqa: E402

print(localq.status(sys.argv[1]))
