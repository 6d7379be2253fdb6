#!/usr/bin/env python
"""Submit a job script to the local queue (localq.py) and print its job id.

    submit.py [--name RULE] [--runtime MINUTES] [--mem MB] [--cpus N] JOBSCRIPT
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localq  # noqa: E402

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--name", default="job")
p.add_argument("--runtime", type=float, default=0, help="wall-time limit in minutes (0: none)")
p.add_argument("--mem", type=int, default=0, help="requested memory in MB (recorded)")
p.add_argument("--cpus", type=int, default=1, help="requested CPUs (recorded)")
p.add_argument("jobscript")
a = p.parse_args()
print(localq.submit(a.jobscript, a.name, a.runtime, a.mem, a.cpus))
