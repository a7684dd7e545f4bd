"""A short command for katalon-license run to wrap: notes when it held its license.

stint.py LOG SECONDS   appends "start <unix time> <session id>" to LOG, runs SECONDS, then appends
                       "end <unix time> <session id>" (each a single short write with O_APPEND, so
                       fifty of these can share one LOG).
"""

import os
import sys
import time

log, seconds = sys.argv[1], float(sys.argv[2])
session = os.environ["KATALON_LICENSE_SESSION_ID"]


def note(what):
    line = f"{what} {time.time():.6f} {session}\n".encode()
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


note("start")
time.sleep(seconds)
note("end")
