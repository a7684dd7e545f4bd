"""The command the tests wrap with katalon-license run: it reports what it saw and exits as told.

child.py --report FILE   write {"env": the KATALON_LICENSE_* variables, "pid": ...} as JSON at start
--wait-for FILE          keep running until FILE exists (60 s at most)
--sleep SECONDS          keep running this long
--on-signal CODE         on SIGINT or SIGTERM, append the signal's name to FILE.signals and exit CODE
--ignore-sigterm         carry on through SIGTERM (only SIGKILL stops it)
--exit CODE              exit with CODE at the end (default 0)
"""

import argparse
import json
import os
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--report", required=True)
parser.add_argument("--wait-for")
parser.add_argument("--sleep", type=float, default=0)
parser.add_argument("--on-signal", type=int)
parser.add_argument("--ignore-sigterm", action="store_true")
parser.add_argument("--exit", type=int, default=0)
args = parser.parse_args()


def on_signal(number, frame):
    with open(args.report + ".signals", "a") as log:
        log.write(signal.Signals(number).name + "\n")
    sys.exit(args.on_signal)


if args.on_signal is not None:
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
if args.ignore_sigterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

report = {"pid": os.getpid(), "env": {k: v for k, v in os.environ.items() if k.startswith("KATALON_LICENSE_")}}
with open(args.report + ".tmp", "w") as file:
    json.dump(report, file)
os.replace(args.report + ".tmp", args.report)  # appears whole

deadline = time.monotonic() + (60 if args.wait_for else args.sleep)
while time.monotonic() < deadline:
    if args.wait_for and os.path.exists(args.wait_for):
        break
    time.sleep(0.05)
if args.wait_for and not os.path.exists(args.wait_for):
    sys.exit(99)  # the test never let it finish
sys.exit(args.exit)
